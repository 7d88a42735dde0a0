"""Eq. 3: displacement of gathered samples from their closest centre, and the deterministic
index-add that both displacement and mv_terms use in their backward.

    out[m, c, h, w] = x[index[m], c, h, w] - centre_rows[m, c]              (M, C, H, W)
    grad_x[n]       = sum_{m : index[m] = n} grad_out[m]                    (N, C, H, W)
    grad_centre_rows[m, c] = -sum_{h,w} grad_out[m, c, h, w]                (M, C)

grad_x is a gather, not a scatter: the m's are grouped by index (stable sort + searchsorted, on the
device, no host sync) and program (n, channel block) sums its own m's in increasing order. No atomics,
bit-for-bit reproducible, and every element of grad_x is written (rows with no m get zeros).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import acc_dtype, csr_by_index, flat_hw, hw_offset, new_empty, pow2, strides4, tl_acc, warps_for


@triton.jit
def _displacement_fwd_kernel(
    x_ptr, idx_ptr, cr_ptr, out_ptr,
    C, HW, W,
    sxn, sxc, sxh, sxw, scm, scc,
    FLAT_X: tl.constexpr, ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr,
):
    """Program (m, cb): out[m, c, :, :] = x[index[m], c, :, :] - centre_rows[m, c] for its channels.

    Shapes: x (N, C, H, W) any strides; index (M,) int64; centre_rows (M, C) any strides;
    out (M, C, H, W) contiguous, x's dtype. Bytes: reads M*C*HW of x (+ M*C centres, M indices),
    writes M*C*HW. Saves nothing (the backward needs only index).
    """
    m = tl.program_id(0).to(tl.int64)
    cb = tl.program_id(1)
    offs_c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = offs_c < C
    offs_c64 = offs_c.to(tl.int64)
    src = tl.load(idx_ptr + m).to(tl.int64)
    cr = tl.load(cr_ptr + m * scm + offs_c64 * scc, mask=cmask, other=0.0).to(ACC)
    x_row = x_ptr + src * sxn + offs_c64[:, None] * sxc
    o_row = out_ptr + (m * C + offs_c64[:, None]) * HW
    for start in range(0, HW, BLOCK_HW):
        hw = start + tl.arange(0, BLOCK_HW)
        hmask = hw < HW
        msk = cmask[:, None] & hmask[None, :]
        xv = tl.load(x_row + hw_offset(hw, W, sxh, sxw, FLAT_X)[None, :], mask=msk, other=0.0)
        val = xv.to(ACC) - cr[:, None]
        tl.store(o_row + hw.to(tl.int64)[None, :], val.to(out_ptr.dtype.element_ty), mask=msk)


@triton.jit
def _index_add_kernel(
    g_ptr, perm_ptr, off_ptr, out_ptr,
    C, HW, W,
    sgm, sgc, sgh, sgw, son, soc, soh, sow,
    FLAT_G: tl.constexpr, FLAT_O: tl.constexpr, ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr,
):
    """Program (n, cb): out[n, c] = sum_{j in [off[n], off[n+1])} g[perm[j], c] for its channels.

    Shapes: g (M, C, H, W) any strides; perm (M,), off (N+1,) int64 (CSR of index); out (N, C, H, W)
    any strides. Bytes: reads M*C*HW of g once, writes N*C*HW once. Sums in the acc dtype, in
    increasing m: deterministic.
    """
    n = tl.program_id(0).to(tl.int64)
    cb = tl.program_id(1)
    offs_c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = offs_c < C
    offs_c64 = offs_c.to(tl.int64)
    lo = tl.load(off_ptr + n)
    hi = tl.load(off_ptr + n + 1)
    for start in range(0, HW, BLOCK_HW):
        hw = start + tl.arange(0, BLOCK_HW)
        hmask = hw < HW
        msk = cmask[:, None] & hmask[None, :]
        g_off = offs_c64[:, None] * sgc + hw_offset(hw, W, sgh, sgw, FLAT_G)[None, :]
        acc = tl.zeros([BLOCK_C, BLOCK_HW], ACC)
        for j in range(lo, hi):
            src = tl.load(perm_ptr + j).to(tl.int64)
            acc += tl.load(g_ptr + src * sgm + g_off, mask=msk, other=0.0).to(ACC)
        o_off = n * son + offs_c64[:, None] * soc + hw_offset(hw, W, soh, sow, FLAT_O)[None, :]
        tl.store(out_ptr + o_off, acc.to(out_ptr.dtype.element_ty), mask=msk)


@triton.jit
def _neg_spatial_sum_kernel(
    g_ptr, out_ptr,
    C, HW, W,
    sgm, sgc, sgh, sgw, som, soc,
    FLAT_G: tl.constexpr, ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr,
):
    """Program (m, cb): out[m, c] = -sum_{h,w} g[m, c, h, w] (grad of centre_rows).

    Shapes: g (M, C, H, W) any strides; out (M, C) any strides, centre_rows' dtype.
    Bytes: reads M*C*HW, writes M*C.
    """
    m = tl.program_id(0).to(tl.int64)
    cb = tl.program_id(1)
    offs_c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = offs_c < C
    offs_c64 = offs_c.to(tl.int64)
    g_row = g_ptr + m * sgm + offs_c64[:, None] * sgc
    acc = tl.zeros([BLOCK_C], ACC)
    for start in range(0, HW, BLOCK_HW):
        hw = start + tl.arange(0, BLOCK_HW)
        hmask = hw < HW
        msk = cmask[:, None] & hmask[None, :]
        gv = tl.load(g_row + hw_offset(hw, W, sgh, sgw, FLAT_G)[None, :], mask=msk, other=0.0)
        acc += tl.sum(gv.to(ACC), axis=1)
    tl.store(out_ptr + m * som + offs_c64 * soc, (-acc).to(out_ptr.dtype.element_ty), mask=cmask)


def _blocks(C: int, HW: int, block_c: int | None, block_hw: int | None):
    bhw = block_hw or pow2(HW, lo=16, hi=512)
    bc = block_c or pow2(C, hi=max(1, 2048 // bhw))
    return bc, bhw


def displacement_forward(x: torch.Tensor, index: torch.Tensor, centre_rows: torch.Tensor, *,
                         block_c: int | None = None, block_hw: int | None = None) -> torch.Tensor:
    """out (M, C, H, W) contiguous in x's dtype. index: (M,) int64 in [0, N) (checked by the caller)."""
    N, C, H, W = x.shape
    M = index.shape[0]
    HW = H * W
    bc, bhw = _blocks(C, HW, block_c, block_hw)
    out = new_empty((M, C, H, W), x.dtype, x.device)
    _displacement_fwd_kernel[(M, triton.cdiv(C, bc))](
        x, index, centre_rows, out, C, HW, W, *strides4(x), *centre_rows.stride(),
        FLAT_X=flat_hw(x), ACC=tl_acc(acc_dtype(x.dtype, centre_rows.dtype)), BLOCK_C=bc, BLOCK_HW=bhw,
        num_warps=warps_for(bc * bhw))
    return out


def index_add_gather(grad: torch.Tensor, index: torch.Tensor, shape, dtype: torch.dtype, stride=None, *,
                     block_c: int | None = None, block_hw: int | None = None) -> torch.Tensor:
    """grad_x[n] = sum over m with index[m] == n of grad[m], as an (N, C, H, W) tensor of ``dtype``
    with ``stride`` (contiguous if None). Deterministic, no atomics, every element written."""
    N, C, H, W = shape
    HW = H * W
    bc, bhw = _blocks(C, HW, block_c, block_hw)
    out = new_empty(shape, dtype, grad.device, stride)
    perm, offsets = csr_by_index(index, N)
    _index_add_kernel[(N, triton.cdiv(C, bc))](
        grad, perm, offsets, out, C, HW, W, *strides4(grad), *strides4(out),
        FLAT_G=flat_hw(grad), FLAT_O=flat_hw(out), ACC=tl_acc(acc_dtype(grad.dtype, dtype)), BLOCK_C=bc, BLOCK_HW=bhw,
        num_warps=warps_for(bc * bhw))
    return out


def displacement_backward(grad_out: torch.Tensor, index: torch.Tensor, x_meta, cr_dtype: torch.dtype,
                          need_x: bool, need_centre_rows: bool, *,
                          block_c: int | None = None, block_hw: int | None = None):
    """Returns ``(grad_x or None, grad_centre_rows or None)``. ``x_meta`` = (shape, dtype, stride or
    None) of x: grad_x gets x's layout; grad_centre_rows is (M, C) contiguous in ``cr_dtype``."""
    gx = None
    if need_x:
        gx = index_add_gather(grad_out, index, *x_meta, block_c=block_c, block_hw=block_hw)
    gcr = None
    if need_centre_rows:
        M, C, H, W = grad_out.shape
        HW = H * W
        bc, bhw = _blocks(C, HW, block_c, block_hw)
        gcr = new_empty((M, C), cr_dtype, grad_out.device)
        _neg_spatial_sum_kernel[(M, triton.cdiv(C, bc))](
            grad_out, gcr, C, HW, W, *strides4(grad_out), *gcr.stride(),
            FLAT_G=flat_hw(grad_out), ACC=tl_acc(acc_dtype(grad_out.dtype, cr_dtype)), BLOCK_C=bc, BLOCK_HW=bhw,
            num_warps=warps_for(bc * bhw))
    return gx, gcr
