"""Eq. 3: displacement of gathered samples from their closest centre, and the deterministic
index-add that displacement and mv_terms use in their backward.

    out[m, c, h, w] = x[index[m], c, h, w] - table[row[index[m]], c]          (M, C, H, W)
    grad_x[n]       = sum_{m : index[m] = n} grad_out[m]                      (N, C, H, W)

``table`` is the (R, C) view of RSG's centres (R = L*K) and ``row`` (N,) each sample's closest
centre (``center_assign``'s output): the kernel follows the two indices itself, so neither the
(N, C) closest-centre rows nor their gather for the pairs is ever written.
grad_x is a gather, not a scatter: the m's are grouped by index (``csr.csr_by_index``: one launch, on
the device, no host sync) and program (n, channel block) sums its own m's in increasing order. No
atomics, bit-for-bit reproducible, and every element of grad_x is written (zeros where no m).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import (
    acc_dtype, check_extent, grid, launch, layout_code, new_empty, new_empty_like, sample_offset, spatial_blocks,
    strides4,
)
from .csr import csr_by_index


@triton.jit
def _displacement_fwd_kernel(
    x_ptr, idx_ptr, row_ptr, tab_ptr, out_ptr,
    sxn, sxc, sxh, sxw, str_, stc,
    C: tl.constexpr, H: tl.constexpr, W: tl.constexpr, LAYOUT_X: tl.constexpr, FP64: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr,
):
    """Program (m, cb): out[m, c, :, :] = x[index[m], c] - table[row[index[m]], c] for its channels.

    Shapes: x (N, C, H, W) any layout; index (M,), row (N,) int64; table (R, C) any strides;
    out (M, C, H, W) NCHW-contiguous in x's dtype. Bytes: reads M*C*HW of x (+ M*C table values),
    writes M*C*HW. Saves nothing (the backward needs only index).
    """
    HW: tl.constexpr = H * W
    m = tl.program_id(0).to(tl.int64)
    cb = tl.program_id(1)
    acc_ty = tl.float64 if FP64 else tl.float32
    offs_c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = offs_c < C
    src = tl.load(idx_ptr + m).to(tl.int64)
    r = tl.load(row_ptr + src).to(tl.int64)
    # int64: the channel stride of a table laid out otherwise (e.g. transposed) may span it
    centre = tl.load(tab_ptr + r * str_ + offs_c.to(tl.int64) * stc, mask=cmask, other=0.0).to(acc_ty)
    x_n = x_ptr + src * sxn
    o_m = out_ptr + m * (C * HW)
    for start in range(0, HW, BLOCK_HW):
        hw = start + tl.arange(0, BLOCK_HW)
        msk = cmask[:, None] & (hw < HW)[None, :]
        xv = tl.load(x_n + sample_offset(offs_c[:, None], hw[None, :], sxc, sxh, sxw, C, H, W, LAYOUT_X),
                     mask=msk, other=0.0)
        val = xv.to(acc_ty) - centre[:, None]
        tl.store(o_m + offs_c[:, None].to(tl.int64) * HW + hw[None, :], val.to(out_ptr.dtype.element_ty), mask=msk)


@triton.jit
def _index_add_kernel(
    g_ptr, perm_ptr, off_ptr, out_ptr,
    sgm, sgc, sgh, sgw, son, soc, soh, sow,
    C: tl.constexpr, H: tl.constexpr, W: tl.constexpr, LAYOUT_G: tl.constexpr, LAYOUT_O: tl.constexpr,
    FP64: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr,
):
    """Program (n, cb): out[n, c] = sum_{j in [off[n], off[n+1])} g[perm[j], c] for its channels.

    Shapes: g (M, C, H, W) any layout; perm (M,), off (N+1,) int64 (CSR of the index); out
    (N, C, H, W) any layout. Bytes: reads M*C*HW of g once, writes N*C*HW once. Sums in the acc
    dtype in increasing m: deterministic.
    """
    HW: tl.constexpr = H * W
    n = tl.program_id(0).to(tl.int64)
    cb = tl.program_id(1)
    acc_ty = tl.float64 if FP64 else tl.float32
    offs_c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = offs_c < C
    lo = tl.load(off_ptr + n)
    hi = tl.load(off_ptr + n + 1)
    for start in range(0, HW, BLOCK_HW):
        hw = start + tl.arange(0, BLOCK_HW)
        msk = cmask[:, None] & (hw < HW)[None, :]
        g_off = sample_offset(offs_c[:, None], hw[None, :], sgc, sgh, sgw, C, H, W, LAYOUT_G)
        acc = tl.zeros([BLOCK_C, BLOCK_HW], acc_ty)
        for j in range(lo, hi):
            src = tl.load(perm_ptr + j).to(tl.int64)
            acc += tl.load(g_ptr + src * sgm + g_off, mask=msk, other=0.0).to(acc_ty)
        o_off = n * son + sample_offset(offs_c[:, None], hw[None, :], soc, soh, sow, C, H, W, LAYOUT_O)
        tl.store(out_ptr + o_off, acc.to(out_ptr.dtype.element_ty), mask=msk)


def displacement_forward(x: torch.Tensor, index: torch.Tensor, row: torch.Tensor, table: torch.Tensor):
    """out (M, C, H, W) NCHW-contiguous in x's dtype; index (M,) and row (N,) int64 in range."""
    N, C, H, W = x.shape
    M = index.shape[0]
    bc, bhw = spatial_blocks(C, H * W, tile=2048)
    g = grid("displacement", ("index.shape[0] (M)", M, 1), ("x.shape[1] (C)", C, bc))
    check_extent("displacement", "H * W of x", H * W)
    out = new_empty((M, C, H, W), x.dtype, x.device)
    launch(_displacement_fwd_kernel, g)(
        x, index, row, table, out, *strides4(x), *table.stride(),
        C=C, H=H, W=W, LAYOUT_X=layout_code(x),
        FP64=acc_dtype(x.dtype, table.dtype) == torch.float64, BLOCK_C=bc, BLOCK_HW=bhw, num_warps=4)
    return out


def index_add_gather(grad: torch.Tensor, index: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """grad_x[n] = sum over m with index[m] == n of grad[m], shaped, typed and laid out like ``like``
    (x). Deterministic, no atomics, every element written."""
    N, C, H, W = like.shape
    bc, bhw = spatial_blocks(C, H * W, tile=2048)
    g = grid("the backward of displacement and mv_terms", ("x.shape[0] (N)", N, 1), ("x.shape[1] (C)", C, bc))
    check_extent("the backward of displacement and mv_terms", "H * W of x", H * W)
    out = new_empty_like(like)
    perm, offsets = csr_by_index(index, N)
    launch(_index_add_kernel, g)(
        grad, perm, offsets, out, *strides4(grad), *strides4(out),
        C=C, H=H, W=W, LAYOUT_G=layout_code(grad), LAYOUT_O=layout_code(out),
        FP64=acc_dtype(grad.dtype, like.dtype) == torch.float64, BLOCK_C=bc, BLOCK_HW=bhw,
        num_warps=4)
    return out


__all__ = ["displacement_forward", "index_add_gather"]
