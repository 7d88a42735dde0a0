"""Eq. 1 (pooled mean) and Eq. 5 (squared distance to the K class centres), fused.

    mean[n, c] = (1/HW) sum_{h,w} x[n, c, h, w]
    dist[n, k] = sum_{c,h,w} (x[n, c, h, w] - centers[n, k, c])^2
               = V[n] + HW * sum_c (mean[n, c] - centers[n, k, c])^2,
    V[n]       = sum_{c,h,w} (x[n, c, h, w] - mean[n, c])^2.

The N x K x C x H x W difference is never formed. V is centred per channel with a Chan merge of
per-block (mean, M2) pairs, so x = 100 + noise keeps its digits (no E[x^2] - E[x]^2 cancellation).
Reductions are deterministic: program (n, channel block) writes its own partial, the host sums the
channel-block partials with one tiny ``torch.sum`` (skipped when C fits one block).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import acc_dtype, flat_hw, hw_offset, new_empty, new_empty_like, pow2, strides4, tl_acc, warps_for


@triton.jit
def _center_distance_fwd_kernel(
    x_ptr, cen_ptr, mean_ptr, part_ptr,
    C, HW, W, K, n_cblocks,
    sxn, sxc, sxh, sxw,
    scn, sck, scc,
    FLAT_X: tl.constexpr,
    ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Program (n, cb) over channels [cb*BLOCK_C, ...) of sample n.

    Computes mean[n, c] for its channels (stored, acc dtype, (N, C) contiguous) and
    part[n, cb, k] = sum_{c in block} (M2[c] + HW * (mean[n, c] - centers[n, k, c])^2),
    with M2[c] = sum_{h,w} (x - mean[n, c])^2 from a Chan merge over HW blocks.
    Shapes: x (N, C, H, W) any strides; centers (N, K, C) any strides; part (N, n_cblocks, K).
    Bytes: reads N*C*HW x + N*K*C centres once; writes N*C + N*n_cblocks*K acc values.
    Saved for backward: mean (N, C) (with x and centers, which the caller already holds).
    """
    n = tl.program_id(0).to(tl.int64)
    cb = tl.program_id(1)
    offs_c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = offs_c < C
    offs_c64 = offs_c.to(tl.int64)
    x_row = x_ptr + n * sxn + offs_c64[:, None] * sxc

    run_mean = tl.zeros([BLOCK_C], ACC)
    run_m2 = tl.zeros([BLOCK_C], ACC)
    count = tl.zeros([BLOCK_C], ACC)
    for start in range(0, HW, BLOCK_HW):
        hw = start + tl.arange(0, BLOCK_HW)
        hmask = hw < HW
        offs = hw_offset(hw, W, sxh, sxw, FLAT_X)
        m = cmask[:, None] & hmask[None, :]
        xv = tl.load(x_row + offs[None, :], mask=m, other=0.0).to(ACC)
        nb = tl.sum(hmask.to(ACC), axis=0)
        bmean = tl.sum(xv, axis=1) / nb
        d = tl.where(m, xv - bmean[:, None], 0.0)
        bm2 = tl.sum(d * d, axis=1)
        tot = count + nb
        delta = bmean - run_mean
        run_mean = run_mean + delta * (nb / tot)
        run_m2 = run_m2 + bm2 + delta * delta * (count * nb / tot)
        count = tot

    tl.store(mean_ptr + n * C + offs_c64, run_mean, mask=cmask)
    v_part = tl.sum(tl.where(cmask, run_m2, 0.0), axis=0)
    cen_row = cen_ptr + n * scn + offs_c64[None, :] * scc
    for kb in range(0, K, BLOCK_K):
        offs_k = kb + tl.arange(0, BLOCK_K)
        kmask = offs_k < K
        km = kmask[:, None] & cmask[None, :]
        cen = tl.load(cen_row + offs_k.to(tl.int64)[:, None] * sck, mask=km, other=0.0).to(ACC)
        diff = tl.where(km, run_mean[None, :] - cen, 0.0)
        part = tl.sum(diff * diff, axis=1) * count_hw(count) + v_part
        tl.store(part_ptr + (n * n_cblocks + cb) * K + offs_k, part, mask=kmask)


@triton.jit
def count_hw(count):
    # count is the per-channel element count (= HW in every lane after the loop); take one value.
    return tl.max(count, axis=0)


@triton.jit
def _center_distance_bwd_kernel(
    x_ptr, cen_ptr, mean_ptr, gmean_ptr, gdist_ptr, gx_ptr, gcen_ptr,
    C, HW, W, K,
    sxn, sxc, sxh, sxw,
    scn, sck, scc,
    sgmn, sgmc, sgdn, sgdk,
    sgxn, sgxc, sgxh, sgxw,
    HAS_GMEAN: tl.constexpr, NEED_GX: tl.constexpr, NEED_GC: tl.constexpr,
    FLAT_X: tl.constexpr, FLAT_G: tl.constexpr,
    ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Program (n, cb): gradients for channels [cb*BLOCK_C, ...) of sample n.

    grad_centers[n,k,c] = -2 HW gdist[n,k] (mean[n,c] - centers[n,k,c])          (N, K, C) contiguous
    grad_x[n,c,h,w]     = gmean[n,c]/HW + 2 Q[n,c] + 2 S[n] (x[n,c,h,w] - mean[n,c]),
        S[n] = sum_k gdist[n,k],  Q[n,c] = sum_k gdist[n,k] (mean[n,c] - centers[n,k,c])
    (the contract's 2 sum_k gdist (x - c_k), rearranged so no large terms cancel).
    Uses the saved mean (N, C); reads x once (only if grad_x is needed), writes grad_x once.
    """
    n = tl.program_id(0).to(tl.int64)
    cb = tl.program_id(1)
    offs_c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = offs_c < C
    offs_c64 = offs_c.to(tl.int64)
    mean = tl.load(mean_ptr + n * C + offs_c64, mask=cmask, other=0.0).to(ACC)
    hw_f = tl.zeros([BLOCK_C], ACC) + HW
    s_acc = tl.zeros([BLOCK_C], ACC)
    q_acc = tl.zeros([BLOCK_C], ACC)
    for kb in range(0, K, BLOCK_K):
        offs_k = kb + tl.arange(0, BLOCK_K)
        kmask = offs_k < K
        offs_k64 = offs_k.to(tl.int64)
        km = kmask[:, None] & cmask[None, :]
        gd = tl.load(gdist_ptr + n * sgdn + offs_k64 * sgdk, mask=kmask, other=0.0).to(ACC)
        cen = tl.load(cen_ptr + n * scn + offs_k64[:, None] * sck + offs_c64[None, :] * scc,
                      mask=km, other=0.0).to(ACC)
        diff = tl.where(km, mean[None, :] - cen, 0.0)
        if NEED_GX:
            s_acc += tl.sum(gd, axis=0)
            q_acc += tl.sum(gd[:, None] * diff, axis=0)
        if NEED_GC:
            gc = -2.0 * hw_f[None, :] * gd[:, None] * diff
            tl.store(gcen_ptr + (n * K + offs_k64[:, None]) * C + offs_c64[None, :],
                     gc.to(gcen_ptr.dtype.element_ty), mask=km)
    if NEED_GX:
        base = 2.0 * q_acc
        if HAS_GMEAN:
            gm = tl.load(gmean_ptr + n * sgmn + offs_c64 * sgmc, mask=cmask, other=0.0).to(ACC)
            base += gm / hw_f
        two_s = 2.0 * s_acc
        x_row = x_ptr + n * sxn + offs_c64[:, None] * sxc
        gx_row = gx_ptr + n * sgxn + offs_c64[:, None] * sgxc
        for start in range(0, HW, BLOCK_HW):
            hw = start + tl.arange(0, BLOCK_HW)
            hmask = hw < HW
            m = cmask[:, None] & hmask[None, :]
            xv = tl.load(x_row + hw_offset(hw, W, sxh, sxw, FLAT_X)[None, :], mask=m, other=0.0).to(ACC)
            g = base[:, None] + two_s[:, None] * (xv - mean[:, None])
            tl.store(gx_row + hw_offset(hw, W, sgxh, sgxw, FLAT_G)[None, :], g.to(gx_ptr.dtype.element_ty),
                     mask=m)


def _blocks(C: int, HW: int, block_c: int | None, block_hw: int | None):
    bhw = block_hw or pow2(HW, lo=16, hi=512)
    # up to 8192 elements per tile: C = 32 at 16 x 16 is one channel block, so no partial sum launch
    bc = block_c or pow2(C, hi=max(1, 8192 // bhw))
    return bc, bhw


def _launch_config(x, centers, block_c, block_hw):
    """Sizes shared by the forward and backward launches: N, C, W, HW, K, acc dtype and block sizes."""
    N, C, H, W = x.shape
    K = centers.shape[1]
    bc, bhw = _blocks(C, H * W, block_c, block_hw)
    return N, C, W, H * W, K, acc_dtype(x.dtype, centers.dtype), bc, bhw, pow2(K, hi=max(1, 4096 // bc))


def center_distance_forward(x: torch.Tensor, centers: torch.Tensor, *, block_c: int | None = None,
                            block_hw: int | None = None):
    """Launch the forward kernel. x (N, C, H, W), centers (N, K, C), any strides, N >= 1.

    Returns ``(mean (N, C), dist (N, K))`` in the acc dtype (float64 if an input is float64, else
    float32). ``block_c`` / ``block_hw`` override the block sizes (tests use them to force several
    channel and spatial blocks). Save ``mean`` for the backward.
    """
    N, C, W, HW, K, acc, bc, bhw, bk = _launch_config(x, centers, block_c, block_hw)
    n_cb = triton.cdiv(C, bc)
    mean = new_empty((N, C), acc, x.device)
    part = new_empty((N, n_cb, K), acc, x.device)
    _center_distance_fwd_kernel[(N, n_cb)](
        x, centers, mean, part, C, HW, W, K, n_cb, *strides4(x), *centers.stride(),
        FLAT_X=flat_hw(x), ACC=tl_acc(acc), BLOCK_C=bc, BLOCK_HW=bhw, BLOCK_K=bk,
        num_warps=warps_for(bc * bhw))
    dist = part.view(N, K) if n_cb == 1 else part.sum(1)
    return mean, dist


def center_distance_backward(x: torch.Tensor, centers: torch.Tensor, mean: torch.Tensor,
                             grad_mean: torch.Tensor | None, grad_dist: torch.Tensor,
                             need_x: bool, need_centers: bool, *, block_c: int | None = None,
                             block_hw: int | None = None):
    """Launch the backward kernel; returns ``(grad_x or None, grad_centers or None)``.

    grad_x has x's dtype and memory format; grad_centers is (N, K, C) contiguous in centers' dtype.
    """
    if not (need_x or need_centers):
        return None, None
    N, C, W, HW, K, acc, bc, bhw, bk = _launch_config(x, centers, block_c, block_hw)
    gx = new_empty_like(x) if need_x else None
    gc = new_empty((N, K, C), centers.dtype, x.device) if need_centers else None
    has_gm = grad_mean is not None
    gm = grad_mean if has_gm else mean  # placeholder pointer, never read
    gx_arg = gx if need_x else x
    gc_arg = gc if need_centers else centers
    _center_distance_bwd_kernel[(N, triton.cdiv(C, bc))](
        x, centers, mean, gm, grad_dist, gx_arg, gc_arg, C, HW, W, K,
        *strides4(x), *centers.stride(), *gm.stride(), *grad_dist.stride(), *strides4(gx_arg),
        HAS_GMEAN=has_gm, NEED_GX=need_x, NEED_GC=need_centers, FLAT_X=flat_hw(x), FLAT_G=flat_hw(gx_arg),
        ACC=tl_acc(acc), BLOCK_C=bc, BLOCK_HW=bhw, BLOCK_K=bk, num_warps=warps_for(bc * bhw))
    return gx, gc
