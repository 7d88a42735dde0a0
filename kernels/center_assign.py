"""Eq. 1 (centre assignment) and Eq. 5's first term (squared distance to the class centres), fused.

For sample n of class l = y[n], with K centres per class:

    mean[n, c]  = (1/HW) sum_{h,w} x[n, c, h, w]
    gamma[n, :] = softmax_k(sum_c mean[n, c] linear[l, c, k] + bias[l, k])            (Eq. 1)
    dist[n, k]  = sum_{c,h,w} (x[n, c, h, w] - centers[l, k, c])^2                        (Eq. 5)
                = V[n] + HW sum_c (mean[n, c] - centers[l, k, c])^2,  V[n] = sum (x - mean)^2
    row[n]      = l*K + argmax_k gamma[n, k]   (the closest centre, a row of centers.view(L*K, C))
    cesc[n]     = sum_k gamma[n, k] dist[n, k]  (Eq. 5's first term of sample n)

One pass over x, nothing of size N x K x C x H x W. Digits are kept where the maps carry a large
common offset: each channel is shifted by its first element s[n, c] before summing, and
mean - centre is formed as (s - centre) + mean(x - s), so neither V nor the distance subtracts two
large numbers (V is also merged per spatial block, Chan's method). The kernels save s and
d = mean(x - s) for the backward.

Backward (segmented, deterministic): the incoming gradients are first folded into
g_gamma += g_cesc * mean_dist and g_dist += g_cesc * gamma, where mean_dist[n, k] = dist[n, k] - V[n]
= HW sum_c (mean - centre)^2 (saved by the forward): g_gamma only enters through the softmax, where a
constant per sample cancels, and V (thousands at large maps) would leave the rounding of dist in the
difference; then, with h = g_gamma - g_gamma[argmax gamma] (the same constant argument: where the
softmax saturates, sum_k gamma h is nearly 0 instead of nearly g_gamma_k, so nothing cancels) and
g_logit = gamma * (h - sum_k gamma h),
    grad_linear[l, c, k] = sum_{n in l} mean[n, c] g_logit[n, k]
    grad_bias[l, k]      = sum_{n in l} g_logit[n, k]
    grad_centers[l, k, c] = -2 HW sum_{n in l} g_dist[n, k] (mean[n, c] - centers[l, k, c])
one program per (class, channel block) walks its class's samples in batch order (a CSR of the
labels), so every class row is written once (zeros for classes not in the batch), with no atomics.
    grad_x[n, c, h, w] = g_mean[c]/HW + 2 Q[c] + 2 S (x - mean[n, c]),   g_mean = linear[l] g_logit,
    Q[c] = sum_k g_dist[k] (mean[c] - centers[l, k, c]),  S = sum_k g_dist[k]    (only when x needs it)
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import (acc_dtype, check_extent, grid, launch, layout_code, new_empty, new_empty_like, pow2,
                      sample_offset, strides4)
from .csr import csr_by_index


@triton.jit
def _class(y, L):
    """The label as an int64 class index, clamped to [0, L): a label outside the range (possible with
    validate=False, or under torch.compile before its asynchronous check fires) must not read memory
    outside the parameters."""
    return tl.minimum(tl.maximum(y.to(tl.int64), 0), L - 1)


@triton.jit
def _assign(n, y, logits, sq, var, gamma_ptr, dist_ptr, row_ptr, cesc_ptr, mdist_ptr,
            K: tl.constexpr, HW: tl.constexpr, BLOCK_K: tl.constexpr):
    """Softmax over the K logits, the distances (and their centre-dependent parts HW * sq, for the
    backward), their gamma-weighted sum and the closest centre of sample n; stores them."""
    offs_k = tl.arange(0, BLOCK_K)
    kmask = offs_k < K
    logits = tl.where(kmask, logits, float("-inf"))
    e = tl.exp(logits - tl.max(logits, axis=0))
    gamma = e / tl.sum(e, axis=0)
    # argmax of gamma, not of the logits: where exp rounds two logits to the same gamma, the first
    # centre wins, as in ReferenceRSG and the published code. NaN counts as the largest, as in
    # torch.argmax (Triton's comparison would let a padding lane win: a row past the class's centres)
    key = tl.where(gamma != gamma, 2.0, gamma)
    best = tl.argmax(tl.where(kmask, key, -1.0), axis=0, tie_break_left=True)
    tl.store(gamma_ptr + n * K + offs_k, gamma, mask=kmask)
    dist = var + HW * sq
    tl.store(dist_ptr + n * K + offs_k, dist, mask=kmask)
    tl.store(mdist_ptr + n * K + offs_k, HW * sq, mask=kmask)
    tl.store(cesc_ptr + n, tl.sum(tl.where(kmask, gamma * dist, 0.0), axis=0))
    tl.store(row_ptr + n, y * K + best)


@triton.jit
def _center_assign_fwd_kernel(
    x_ptr, y_ptr, cen_ptr, lin_ptr, bias_ptr,
    shift_ptr, dmean_ptr, part_ptr, gamma_ptr, dist_ptr, row_ptr, cesc_ptr, mdist_ptr,
    L, sxn, sxc, sxh, sxw, scl, sck, scc, sll, slc, slk, sbl, sbk,
    C: tl.constexpr, H: tl.constexpr, W: tl.constexpr, K: tl.constexpr, LAYOUT: tl.constexpr,
    N_CB: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Program (n, cb) over channels [cb*BLOCK_C, ...) of sample n.

    Stores shift[n, c] and dmean[n, c] (acc dtype, (N, C)). With one channel block (N_CB == 1) it
    also finishes the sample (gamma (N, K), dist (N, K), row (N,) int64, cesc (N,), mean_dist (N, K));
    otherwise it stores its partial sums part[n, cb] = (logit part [K], squared-distance part [K], V part) for
    ``_center_assign_finish_kernel``.
    Shapes: x (N, C, H, W) in any layout; y (N,) int64; centers (L, K, C), linear (L, C, K),
    bias (L, K), any strides. Bytes: reads N*C*HW of x, plus 2*N*K*C + N*K parameter values;
    writes 2*N*C + 3*N*K + 2*N (+ N*N_CB*(2K+1) partials).
    """
    HW: tl.constexpr = H * W
    n = tl.program_id(0).to(tl.int64)
    cb = tl.program_id(1)
    acc_ty = shift_ptr.dtype.element_ty
    offs_c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = offs_c < C
    x_n = x_ptr + n * sxn
    y = tl.load(y_ptr + n)

    # shift each channel by its first element, then a Chan merge of per-block (mean, M2) pairs
    shift = tl.load(x_n + sample_offset(offs_c, offs_c * 0, sxc, sxh, sxw, C, H, W, LAYOUT),
                    mask=cmask, other=0.0).to(acc_ty)
    run_mean = tl.zeros([BLOCK_C], acc_ty)
    run_m2 = tl.zeros([BLOCK_C], acc_ty)
    for start in range(0, HW, BLOCK_HW):
        hw = start + tl.arange(0, BLOCK_HW)
        m = cmask[:, None] & (hw < HW)[None, :]
        xv = tl.load(x_n + sample_offset(offs_c[:, None], hw[None, :], sxc, sxh, sxw, C, H, W, LAYOUT),
                     mask=m, other=0.0).to(acc_ty)
        xv = tl.where(m, xv - shift[:, None], 0.0)
        seen = start * 1.0                              # elements merged so far (exact)
        nb = tl.sum((hw < HW).to(acc_ty), axis=0)
        bmean = tl.sum(xv, axis=1) / nb
        dev = tl.where(m, xv - bmean[:, None], 0.0)
        delta = bmean - run_mean
        run_mean += delta * (nb / (seen + nb))
        run_m2 += tl.sum(dev * dev, axis=1) + delta * delta * (seen * nb / (seen + nb))
    tl.store(shift_ptr + n * C + offs_c, shift, mask=cmask)
    tl.store(dmean_ptr + n * C + offs_c, run_mean, mask=cmask)

    offs_k = tl.arange(0, BLOCK_K)
    kmask = offs_k < K
    km = kmask[:, None] & cmask[None, :]
    c64, k64 = offs_c.to(tl.int64), offs_k.to(tl.int64)   # int64: a parameter's strides may span the tensor
    cls = _class(y, L)
    lin = tl.load(lin_ptr + cls * sll + c64[None, :] * slc + k64[:, None] * slk, mask=km, other=0.0)
    logit_part = tl.sum(lin.to(acc_ty) * (shift + run_mean)[None, :], axis=1)
    cen = tl.load(cen_ptr + cls * scl + k64[:, None] * sck + c64[None, :] * scc, mask=km, other=0.0)
    diff = tl.where(km, (shift[None, :] - cen.to(acc_ty)) + run_mean[None, :], 0.0)
    sq_part = tl.sum(diff * diff, axis=1)
    var_part = tl.sum(tl.where(cmask, run_m2, 0.0), axis=0)
    if N_CB == 1:
        bias = tl.load(bias_ptr + cls * sbl + offs_k.to(tl.int64) * sbk, mask=kmask, other=0.0).to(acc_ty)
        _assign(n, cls, logit_part + bias, sq_part, var_part, gamma_ptr, dist_ptr, row_ptr, cesc_ptr, mdist_ptr,
                K, HW, BLOCK_K)
    else:
        p = part_ptr + (n * N_CB + cb) * (2 * K + 1)
        tl.store(p + offs_k, logit_part, mask=kmask)
        tl.store(p + K + offs_k, sq_part, mask=kmask)
        tl.store(p + 2 * K, var_part)


@triton.jit
def _center_assign_finish_kernel(
    y_ptr, bias_ptr, part_ptr, gamma_ptr, dist_ptr, row_ptr, cesc_ptr, mdist_ptr, L, sbl, sbk,
    H: tl.constexpr, W: tl.constexpr, K: tl.constexpr, N_CB: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Program n: adds the N_CB channel-block partials of sample n in order, then finishes it.
    Bytes: reads N*N_CB*(2K+1) partials, writes 3*N*K + 2*N."""
    n = tl.program_id(0).to(tl.int64)
    acc_ty = part_ptr.dtype.element_ty
    offs_k = tl.arange(0, BLOCK_K)
    kmask = offs_k < K
    logits = tl.zeros([BLOCK_K], acc_ty)
    sq = tl.zeros([BLOCK_K], acc_ty)
    var = tl.zeros([BLOCK_K], acc_ty)     # only lane 0 is used
    for cb in range(N_CB):
        p = part_ptr + (n * N_CB + cb) * (2 * K + 1)
        logits += tl.load(p + offs_k, mask=kmask, other=0.0)
        sq += tl.load(p + K + offs_k, mask=kmask, other=0.0)
        var += tl.load(p + 2 * K + offs_k, mask=offs_k < 1, other=0.0)
    cls = _class(tl.load(y_ptr + n), L)
    bias = tl.load(bias_ptr + cls * sbl + offs_k.to(tl.int64) * sbk, mask=kmask, other=0.0).to(acc_ty)
    _assign(n, cls, logits + bias, sq, tl.sum(var, axis=0), gamma_ptr, dist_ptr, row_ptr, cesc_ptr, mdist_ptr,
            K, H * W, BLOCK_K)


@triton.jit
def _incoming(n, gamma_ptr, mdist_ptr, gg_ptr, gd_ptr, gc_ptr, sggn, sggk, sgdn, sgdk, sgc, offs_k, kmask, acc_ty,
              K: tl.constexpr, HAS_GGAMMA: tl.constexpr, HAS_GDIST: tl.constexpr, HAS_GCESC: tl.constexpr):
    """(g_logit [BLOCK_K], g_dist [BLOCK_K]) of sample n: the incoming gradients of gamma, dist and
    cesc (each optional, any strides: an expanded gradient of a sum is read in place), with cesc's
    folded into the other two (through mean_dist: module docstring) and gamma's taken through the softmax."""
    gamma = tl.load(gamma_ptr + n * K + offs_k, mask=kmask, other=0.0)
    g_gamma = tl.zeros_like(gamma)
    g_dist = tl.zeros_like(gamma)
    if HAS_GGAMMA:
        g_gamma += tl.load(gg_ptr + n * sggn + offs_k.to(tl.int64) * sggk, mask=kmask, other=0.0).to(acc_ty)
    if HAS_GDIST:
        g_dist += tl.load(gd_ptr + n * sgdn + offs_k.to(tl.int64) * sgdk, mask=kmask, other=0.0).to(acc_ty)
    if HAS_GCESC:
        g_cesc = tl.load(gc_ptr + n * sgc).to(acc_ty)
        g_gamma += g_cesc * tl.load(mdist_ptr + n * K + offs_k, mask=kmask, other=0.0)
        g_dist += g_cesc * gamma
    # gamma_k (g_k - sum_j gamma_j g_j) with g first shifted by its value at the largest gamma (the
    # softmax's backward drops a constant): where the softmax saturates, the sum is nearly g_k and
    # subtracting it would cancel; after the shift it is nearly 0. NaN as the forward's key: any lane
    # is a valid shift, but an argmax over NaN alone is undefined (the interpreter raises)
    key = tl.where(gamma != gamma, 2.0, gamma)
    top = tl.argmax(tl.where(kmask, key, -1.0), axis=0, tie_break_left=True)
    h = tl.where(kmask, g_gamma - tl.sum(tl.where(offs_k == top, g_gamma, 0.0), axis=0), 0.0)
    g_logit = gamma * (h - tl.sum(gamma * h, axis=0))
    return g_logit, g_dist


@triton.jit
def _center_assign_param_grad_kernel(
    perm_ptr, off_ptr, shift_ptr, dmean_ptr, gamma_ptr, mdist_ptr, gg_ptr, gd_ptr, gc_ptr, cen_ptr,
    gcen_ptr, glin_ptr, gbias_ptr,
    sggn, sggk, sgdn, sgdk, sgc, scl, sck, scc,
    C: tl.constexpr, K: tl.constexpr, HW: tl.constexpr,
    HAS_GGAMMA: tl.constexpr, HAS_GDIST: tl.constexpr, HAS_GCESC: tl.constexpr,
    NEED_CEN: tl.constexpr, NEED_LIN: tl.constexpr, NEED_BIAS: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Program (l, cb): the gradients of class l's parameters for channels [cb*BLOCK_C, ...).

    Walks the samples of class l (perm[off[l]:off[l+1]], batch order) and writes grad_centers
    (L, K, C), grad_linear (L, C, K) and grad_bias (L, K) (contiguous, parameter dtype) for every
    class, zeros where the batch has none. Bytes: reads 2*N*C saved statistics, about 4*N*K values
    and the K*C centres of each class present in the batch (none of the others); writes the three
    gradients once (2*L*K*C + L*K).
    """
    cls = tl.program_id(0).to(tl.int64)
    cb = tl.program_id(1)
    acc_ty = shift_ptr.dtype.element_ty
    offs_c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = offs_c < C
    offs_k = tl.arange(0, BLOCK_K)
    kmask = offs_k < K
    km = kmask[:, None] & cmask[None, :]
    c64, k64 = offs_c.to(tl.int64), offs_k.to(tl.int64)   # int64: a parameter's strides may span the tensor
    lo = tl.load(off_ptr + cls)
    hi = tl.load(off_ptr + cls + 1)
    # only a class with samples reads its centres: most classes of a large label set have none in a
    # batch (about 770 of 1000 at ImageNet-LT's N = 256), and their gradient rows are zeros anyway
    cen = tl.load(cen_ptr + cls * scl + k64[:, None] * sck + c64[None, :] * scc, mask=km & (hi > lo), other=0.0)
    cen = cen.to(acc_ty)
    acc_cen = tl.zeros([BLOCK_K, BLOCK_C], acc_ty)
    acc_lin = tl.zeros([BLOCK_K, BLOCK_C], acc_ty)
    acc_bias = tl.zeros([BLOCK_K], acc_ty)
    for j in range(lo, hi):
        n = tl.load(perm_ptr + j).to(tl.int64)
        s = tl.load(shift_ptr + n * C + offs_c, mask=cmask, other=0.0)
        d = tl.load(dmean_ptr + n * C + offs_c, mask=cmask, other=0.0)
        g_logit, g_dist = _incoming(n, gamma_ptr, mdist_ptr, gg_ptr, gd_ptr, gc_ptr, sggn, sggk, sgdn, sgdk, sgc,
                                    offs_k, kmask, acc_ty, K, HAS_GGAMMA, HAS_GDIST, HAS_GCESC)
        acc_lin += g_logit[:, None] * (s + d)[None, :]
        acc_bias += g_logit
        acc_cen += g_dist[:, None] * ((s[None, :] - cen) + d[None, :])
    if NEED_CEN:
        tl.store(gcen_ptr + (cls * K + offs_k[:, None]) * C + offs_c[None, :],
                 (-2.0 * HW * acc_cen).to(gcen_ptr.dtype.element_ty), mask=km)
    if NEED_LIN:
        tl.store(glin_ptr + (cls * C + offs_c[None, :]) * K + offs_k[:, None],
                 acc_lin.to(glin_ptr.dtype.element_ty), mask=km)
    if NEED_BIAS:
        if cb == 0:
            tl.store(gbias_ptr + cls * K + offs_k, acc_bias.to(gbias_ptr.dtype.element_ty), mask=kmask)


@triton.jit
def _center_assign_x_grad_kernel(
    x_ptr, y_ptr, lin_ptr, cen_ptr, shift_ptr, dmean_ptr, gamma_ptr, mdist_ptr, gg_ptr, gd_ptr, gc_ptr, gx_ptr,
    L, sxn, sxc, sxh, sxw, sll, slc, slk, scl, sck, scc, sggn, sggk, sgdn, sgdk, sgc, son, soc, soh, sow,
    C: tl.constexpr, H: tl.constexpr, W: tl.constexpr, K: tl.constexpr,
    LAYOUT_X: tl.constexpr, LAYOUT_G: tl.constexpr,
    HAS_GGAMMA: tl.constexpr, HAS_GDIST: tl.constexpr, HAS_GCESC: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Program (n, cb): grad_x for channels [cb*BLOCK_C, ...) of sample n (module docstring).
    Bytes: reads N*C*HW of x once and writes grad_x once (its layout follows x's)."""
    HW: tl.constexpr = H * W
    n = tl.program_id(0).to(tl.int64)
    cb = tl.program_id(1)
    acc_ty = shift_ptr.dtype.element_ty
    offs_c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = offs_c < C
    offs_k = tl.arange(0, BLOCK_K)
    kmask = offs_k < K
    km = kmask[:, None] & cmask[None, :]
    c64, k64 = offs_c.to(tl.int64), offs_k.to(tl.int64)   # int64: a parameter's strides may span the tensor
    cls = _class(tl.load(y_ptr + n), L)
    s = tl.load(shift_ptr + n * C + offs_c, mask=cmask, other=0.0)
    d = tl.load(dmean_ptr + n * C + offs_c, mask=cmask, other=0.0)
    g_logit, g_dist = _incoming(n, gamma_ptr, mdist_ptr, gg_ptr, gd_ptr, gc_ptr, sggn, sggk, sgdn, sgdk, sgc, offs_k,
                                kmask, acc_ty, K, HAS_GGAMMA, HAS_GDIST, HAS_GCESC)
    lin = tl.load(lin_ptr + cls * sll + c64[None, :] * slc + k64[:, None] * slk, mask=km, other=0.0)
    cen = tl.load(cen_ptr + cls * scl + k64[:, None] * sck + c64[None, :] * scc, mask=km, other=0.0)
    diff = tl.where(km, (s[None, :] - cen.to(acc_ty)) + d[None, :], 0.0)
    base = tl.sum(lin.to(acc_ty) * g_logit[:, None], axis=0) / HW + 2.0 * tl.sum(g_dist[:, None] * diff, axis=0)
    two_s = 2.0 * tl.sum(g_dist, axis=0)
    x_n = x_ptr + n * sxn
    g_n = gx_ptr + n * son
    for start in range(0, HW, BLOCK_HW):
        hw = start + tl.arange(0, BLOCK_HW)
        m = cmask[:, None] & (hw < HW)[None, :]
        xv = tl.load(x_n + sample_offset(offs_c[:, None], hw[None, :], sxc, sxh, sxw, C, H, W, LAYOUT_X),
                     mask=m, other=0.0).to(acc_ty)
        grad = base[:, None] + two_s * ((xv - s[:, None]) - d[:, None])
        tl.store(g_n + sample_offset(offs_c[:, None], hw[None, :], soc, soh, sow, C, H, W, LAYOUT_G),
                 grad.to(gx_ptr.dtype.element_ty), mask=m)


# ----------------------------------------------------------------------------- launchers

def _blocks(C: int, HW: int):
    """Channel and spatial block of the x-walking kernels: tiles of at most 4096 elements, a whole
    32-channel CIFAR map in one program, 32-channel blocks at 1024 channels."""
    bc = pow2(C, hi=32)
    return bc, pow2(HW, lo=16, hi=max(16, 4096 // bc))


MAX_TILE = 2**20    # Triton's largest block (TRITON_MAX_TENSOR_NUMEL); past it a kernel fails to compile


def _check_centres(op: str, K: int, bc: int) -> None:
    """ValueError naming K where the (K, BLOCK_C) tile of a class's centres and classifier rows, which
    the x-walking kernels hold whole, would pass Triton's largest block."""
    if isinstance(K, int) and pow2(K) * bc > MAX_TILE:
        raise ValueError(f"{op} with backend='triton' takes centers.shape[1] (K, n_center) up to {MAX_TILE // bc} "
                         f"at {bc} or more channels (a K x {bc} tile per program), got {K}; backend='torch' has "
                         f"no such limit")


def center_assign_forward(x, target, centers, linear, bias):
    """Returns ``(gamma (N, K), dist (N, K), row (N,) int64, cesc (N,), shift (N, C), dmean (N, C),
    mean_dist (N, K))``; the statistics are in the acc dtype (float64 if any input is, else float32).
    N may be 0 (a grid of zero programs: nothing runs)."""
    N, C, H, W = x.shape
    K = centers.shape[1]
    acc = acc_dtype(x.dtype, centers.dtype, linear.dtype, bias.dtype)
    bc, bhw = _blocks(C, H * W)
    g = grid("center_assign", ("x.shape[0] (N)", N, 1), ("x.shape[1] (C)", C, bc))
    check_extent("center_assign", "H * W of x", H * W)
    _check_centres("center_assign", K, bc)
    n_cb = g[1]
    bk = pow2(K)
    shift = new_empty((N, C), acc, x.device)
    dmean = new_empty((N, C), acc, x.device)
    part = new_empty((N, n_cb, 2 * K + 1) if n_cb > 1 else (1,), acc, x.device)
    gamma = new_empty((N, K), acc, x.device)
    dist = new_empty((N, K), acc, x.device)
    row = new_empty((N,), torch.int64, x.device)
    cesc = new_empty((N,), acc, x.device)
    mean_dist = new_empty((N, K), acc, x.device)
    launch(_center_assign_fwd_kernel, g)(
        x, target, centers, linear, bias, shift, dmean, part, gamma, dist, row, cesc, mean_dist, centers.shape[0],
        *strides4(x), *centers.stride(), *linear.stride(), *bias.stride(),
        C=C, H=H, W=W, K=K, LAYOUT=layout_code(x), N_CB=n_cb, BLOCK_C=bc, BLOCK_HW=bhw, BLOCK_K=bk,
        num_warps=4)
    if n_cb > 1:
        launch(_center_assign_finish_kernel, g[:1])(
            target, bias, part, gamma, dist, row, cesc, mean_dist, centers.shape[0], *bias.stride(), H=H, W=W, K=K,
            N_CB=n_cb, BLOCK_K=bk, num_warps=1)
    return gamma, dist, row, cesc, shift, dmean, mean_dist


def _incoming_args(gamma, g_gamma, g_dist, g_cesc):
    """Pointers and strides of the optional incoming gradients (``gamma`` stands in for absent ones;
    the kernels never read it then) and their HAS_* flags."""
    present = [g is not None for g in (g_gamma, g_dist, g_cesc)]
    g_gamma, g_dist, g_cesc = (g if g is not None else gamma for g in (g_gamma, g_dist, g_cesc))
    ptrs = (g_gamma, g_dist, g_cesc)
    strides = (*g_gamma.stride(), *g_dist.stride(), g_cesc.stride(0))
    flags = dict(HAS_GGAMMA=present[0], HAS_GDIST=present[1], HAS_GCESC=present[2])
    return ptrs, strides, flags


def center_assign_param_grads(target, centers, shift, dmean, gamma, mean_dist, g_gamma, g_dist, g_cesc, HW: int,
                              need_centers: bool, need_linear: bool, need_bias: bool, linear_dtype, bias_dtype):
    """``(grad_centers (L, K, C), grad_linear (L, C, K), grad_bias (L, K))``, contiguous, each a
    0-element tensor where not needed. The incoming gradients may be None (zero)."""
    L, K, C = centers.shape
    dev = centers.device
    bk = pow2(K)
    bc = pow2(C, hi=max(1, 2048 // bk))
    gc = new_empty((L, K, C) if need_centers else (0,), centers.dtype, dev)
    gl = new_empty((L, C, K) if need_linear else (0,), linear_dtype, dev)
    gb = new_empty((L, K) if need_bias else (0,), bias_dtype, dev)
    if not (need_centers or need_linear or need_bias):     # frozen parameters: no CSR, no launch
        return gc, gl, gb
    g = grid("center_assign's backward", ("centers.shape[0] (L)", L, 1), (f"x.shape[1] (C, at K = {K})", C, bc))
    # a label outside [0, L) (check_target=False) lands in no class's range of the CSR: its sample adds
    # to no parameter's gradient (the forward clamps it instead; only memory safety is promised then)
    perm, offsets = csr_by_index(target, L)
    ptrs, strides, flags = _incoming_args(gamma, g_gamma, g_dist, g_cesc)
    launch(_center_assign_param_grad_kernel, g)(
        perm, offsets, shift, dmean, gamma, mean_dist, *ptrs, centers, gc, gl, gb, *strides, *centers.stride(),
        C=C, K=K, HW=HW, **flags, NEED_CEN=need_centers, NEED_LIN=need_linear, NEED_BIAS=need_bias,
        BLOCK_C=bc, BLOCK_K=bk, num_warps=4)
    return gc, gl, gb


def center_assign_x_grad(x, target, centers, linear, shift, dmean, gamma, mean_dist, g_gamma, g_dist, g_cesc):
    """grad_x with x's dtype and memory format."""
    N, C, H, W = x.shape
    K = centers.shape[1]
    bc, bhw = _blocks(C, H * W)
    g = grid("center_assign's backward", ("x.shape[0] (N)", N, 1), ("x.shape[1] (C)", C, bc))
    check_extent("center_assign's backward", "H * W of x", H * W)
    _check_centres("center_assign's backward", K, bc)
    gx = new_empty_like(x)
    ptrs, strides, flags = _incoming_args(gamma, g_gamma, g_dist, g_cesc)
    launch(_center_assign_x_grad_kernel, g)(
        x, target, linear, centers, shift, dmean, gamma, mean_dist, *ptrs, gx, centers.shape[0],
        *strides4(x), *linear.stride(), *centers.stride(), *strides, *strides4(gx),
        C=C, H=H, W=W, K=K, LAYOUT_X=layout_code(x), LAYOUT_G=layout_code(gx), **flags,
        BLOCK_C=bc, BLOCK_HW=bhw, BLOCK_K=pow2(K), num_warps=4)
    return gx
