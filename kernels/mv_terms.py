"""Eq. 4 (new samples) and Eq. 6 (the MV loss's norm and cosine terms), fused.

    new[m] = x[tail_index[m]] + tv[m]                                     (M, C, H, W), dtype of x + tv
    terms[0] = sum_vectors | ||a|| - ||w|| |
    terms[1] = "location": sum_vectors | a_hat . b_hat - 1 |
               "rows":     sum_vectors sum_i | a_hat_i b_hat_i - 1 |
with a, b, w the vectors of tv, u, v and a_hat = a / max(||a||, 1e-12) (F.normalize).

Both groupings give each sample HW vectors of length C: vector q, component j lives at
    "location": c = j, hw = q;      "rows": p = q*C + j, c = p // HW, hw = p % HW
(rows of C consecutive elements of the logical NCHW buffer never straddle two samples).
A program owns (m, block of BLOCK_Q vectors), loops over C in BLOCK_J chunks, writes its part of
``new``, and a partial (norm_sum, cos_sum) that the host adds up (deterministic, no atomics).

Saved for backward, per vector (M, HW, 5), acc dtype: ||a||, ||b||, ||w||, q and t, where
t = sign(a_hat.b_hat - 1) ("location"; 0 for "rows") and q = a_hat . (d cos_term / d a_hat) / g1
(= t * cos for "location", sum_i sign(z_i) a_hat_i b_hat_i for "rows", z_i = a_hat_i b_hat_i - 1).
With them the backward is one elementwise pass:
    grad_a = g_new + g0 s a/||a|| + (g1 t b_hat - [||a|| >= eps] g1 q a_hat) / max(||a||, eps)
    grad_b =                         (g1 t a_hat - [||b|| >= eps] g1 q b_hat) / max(||b||, eps)
    grad_w = -g0 s w/||w||,   s = sign(||a|| - ||w||),  a/||a|| := 0 at a = 0  (torch's conventions)
("rows" uses t_i = sign(z_i) per element, recomputed from a and b exactly as in the forward).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from rsg_fast.ops import EPS  # F.normalize's eps: one definition for both backends

from ._common import acc_dtype, chw_offset, layout_code, new_empty, new_empty_like, pow2, strides4, tl_acc, warps_for
from .displacement import index_add_gather

N_STATS = 5


@triton.jit
def _sign(z):
    return tl.where(z > 0, 1.0, 0.0) - tl.where(z < 0, 1.0, 0.0)


@triton.jit
def _coords(q, j, C, HW, ROWS: tl.constexpr):
    """(c, hw, p = c*HW + hw) of component j of vector q, int64, broadcastable to [BLOCK_Q, BLOCK_J]."""
    if ROWS:
        p = q.to(tl.int64)[:, None] * C + j.to(tl.int64)[None, :]
        c = p // HW
        hw = p - c * HW
    else:
        c = j.to(tl.int64)[None, :]
        hw = q.to(tl.int64)[:, None]
        p = c * HW + hw
    return c, hw, p


@triton.jit
def _mv_terms_fwd_kernel(
    tv_ptr, u_ptr, v_ptr, x_ptr, ti_ptr, new_ptr, stats_ptr, part_ptr,
    C, HW, W, n_qblocks, eps,
    s_tn, s_tc, s_th, s_tw, s_un, s_uc, s_uh, s_uw,
    s_vn, s_vc, s_vh, s_vw, s_xn, s_xc, s_xh, s_xw,
    L_T: tl.constexpr, L_U: tl.constexpr, L_V: tl.constexpr, L_X: tl.constexpr,
    ROWS: tl.constexpr, ACC: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_J: tl.constexpr,
):
    """Program (m, qb): new[m] for its vectors, the per-vector statistics, and
    part[m, qb] = (sum |na - nw|, sum cos-term) over its vectors.

    Shapes: tv, u, v (M, C, H, W), x (N, C, H, W), any strides; tail_index (M,) int64;
    new (M, C, H, W) contiguous; stats (M, HW, 5); part (M, n_qblocks, 2), acc dtype.
    Bytes: reads 4*M*C*HW (tv, u, v, x rows; "rows" re-reads tv and u, from cache), writes M*C*HW
    + 5*M*HW + 2*M*n_qblocks.
    Saved for backward: stats (with tv, u, v and tail_index, which the caller already holds).
    """
    m = tl.program_id(0).to(tl.int64)
    qb = tl.program_id(1)
    q = qb * BLOCK_Q + tl.arange(0, BLOCK_Q)
    qmask = q < HW
    src = tl.load(ti_ptr + m).to(tl.int64)
    ssa = tl.zeros([BLOCK_Q], ACC)
    ssb = tl.zeros([BLOCK_Q], ACC)
    ssw = tl.zeros([BLOCK_Q], ACC)
    dot = tl.zeros([BLOCK_Q], ACC)
    for j0 in range(0, C, BLOCK_J):
        j = j0 + tl.arange(0, BLOCK_J)
        msk = qmask[:, None] & (j < C)[None, :]
        c, hw, p = _coords(q, j, C, HW, ROWS)
        a = tl.load(tv_ptr + m * s_tn + chw_offset(c, hw, p, W, s_tc, s_th, s_tw, L_T), mask=msk, other=0.0).to(ACC)
        b = tl.load(u_ptr + m * s_un + chw_offset(c, hw, p, W, s_uc, s_uh, s_uw, L_U), mask=msk, other=0.0).to(ACC)
        wv = tl.load(v_ptr + m * s_vn + chw_offset(c, hw, p, W, s_vc, s_vh, s_vw, L_V), mask=msk, other=0.0).to(ACC)
        xv = tl.load(x_ptr + src * s_xn + chw_offset(c, hw, p, W, s_xc, s_xh, s_xw, L_X), mask=msk, other=0.0).to(ACC)
        tl.store(new_ptr + m * C * HW + p, (xv + a).to(new_ptr.dtype.element_ty), mask=msk)
        ssa += tl.sum(a * a, axis=1)
        ssb += tl.sum(b * b, axis=1)
        ssw += tl.sum(wv * wv, axis=1)
        if not ROWS:  # "rows" needs the elementwise products, recomputed in its second loop
            dot += tl.sum(a * b, axis=1)
    na = tl.sqrt(ssa)
    nb = tl.sqrt(ssb)
    nw = tl.sqrt(ssw)
    da = tl.maximum(na, eps)
    db = tl.maximum(nb, eps)
    nterm = tl.abs(na - nw)
    if ROWS:
        csum = tl.zeros([BLOCK_Q], ACC)
        qsum = tl.zeros([BLOCK_Q], ACC)
        for j0 in range(0, C, BLOCK_J):
            j = j0 + tl.arange(0, BLOCK_J)
            msk = qmask[:, None] & (j < C)[None, :]
            c, hw, p = _coords(q, j, C, HW, ROWS)
            a = tl.load(tv_ptr + m * s_tn + chw_offset(c, hw, p, W, s_tc, s_th, s_tw, L_T), mask=msk, other=0.0).to(ACC)
            b = tl.load(u_ptr + m * s_un + chw_offset(c, hw, p, W, s_uc, s_uh, s_uw, L_U), mask=msk, other=0.0).to(ACC)
            ab = (a / da[:, None]) * (b / db[:, None])
            z = ab - 1.0
            csum += tl.sum(tl.where(msk, tl.abs(z), 0.0), axis=1)
            qsum += tl.sum(tl.where(msk, _sign(z) * ab, 0.0), axis=1)
        tsg = tl.zeros([BLOCK_Q], ACC)
    else:
        cosv = dot / (da * db)
        z = cosv - 1.0
        csum = tl.abs(z)
        tsg = _sign(z).to(ACC)
        qsum = tsg * cosv
    st = stats_ptr + (m * HW + q) * 5
    tl.store(st + 0, na, mask=qmask)
    tl.store(st + 1, nb, mask=qmask)
    tl.store(st + 2, nw, mask=qmask)
    tl.store(st + 3, qsum, mask=qmask)
    tl.store(st + 4, tsg, mask=qmask)
    pp = part_ptr + (m * n_qblocks + qb) * 2
    tl.store(pp, tl.sum(tl.where(qmask, nterm, 0.0), axis=0))
    tl.store(pp + 1, tl.sum(tl.where(qmask, csum, 0.0), axis=0))


@triton.jit
def _mv_terms_bwd_kernel(
    tv_ptr, u_ptr, v_ptr, gnew_ptr, stats_ptr, gterms_ptr, gtv_ptr, gu_ptr, gv_ptr,
    C, HW, W, eps,
    s_tn, s_tc, s_th, s_tw, s_un, s_uc, s_uh, s_uw, s_vn, s_vc, s_vh, s_vw,
    s_gn, s_gc, s_gh, s_gw,
    s_an, s_ac, s_ah, s_aw, s_bn, s_bc, s_bh, s_bw, s_wn, s_wc, s_wh, s_ww,
    L_T: tl.constexpr, L_U: tl.constexpr, L_V: tl.constexpr, L_G: tl.constexpr,
    L_A: tl.constexpr, L_B: tl.constexpr, L_W: tl.constexpr,
    HAS_GNEW: tl.constexpr, NEED_TV: tl.constexpr, NEED_U: tl.constexpr, NEED_V: tl.constexpr,
    ROWS: tl.constexpr, ACC: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_J: tl.constexpr,
):
    """Program (m, qb): grad_tv, grad_u, grad_v for its vectors (formulas in the module docstring).

    Shapes: tv, u, v, grad_new and the three gradients (M, C, H, W), any strides; stats (M, HW, 5);
    grad_terms (2,). Bytes: reads tv, u (+ v, grad_new when needed) once, writes each needed
    gradient once; 5*M*HW statistics.
    """
    m = tl.program_id(0).to(tl.int64)
    qb = tl.program_id(1)
    q = qb * BLOCK_Q + tl.arange(0, BLOCK_Q)
    qmask = q < HW
    st = stats_ptr + (m * HW + q) * 5
    na = tl.load(st + 0, mask=qmask, other=1.0).to(ACC)
    nb = tl.load(st + 1, mask=qmask, other=1.0).to(ACC)
    nw = tl.load(st + 2, mask=qmask, other=1.0).to(ACC)
    qs = tl.load(st + 3, mask=qmask, other=0.0).to(ACC)
    tsg = tl.load(st + 4, mask=qmask, other=0.0).to(ACC)
    g0 = tl.load(gterms_ptr).to(ACC)
    g1 = tl.load(gterms_ptr + 1).to(ACC)
    s0 = _sign(na - nw) * g0
    ca = tl.where(na > 0, s0 / tl.where(na > 0, na, 1.0), 0.0)
    cw = tl.where(nw > 0, -s0 / tl.where(nw > 0, nw, 1.0), 0.0)
    da = tl.maximum(na, eps)
    db = tl.maximum(nb, eps)
    pa = tl.where(na >= eps, g1 * qs, 0.0)
    pb = tl.where(nb >= eps, g1 * qs, 0.0)
    for j0 in range(0, C, BLOCK_J):
        j = j0 + tl.arange(0, BLOCK_J)
        msk = qmask[:, None] & (j < C)[None, :]
        c, hw, p = _coords(q, j, C, HW, ROWS)
        if NEED_TV or NEED_U:
            a = tl.load(tv_ptr + m * s_tn + chw_offset(c, hw, p, W, s_tc, s_th, s_tw, L_T), mask=msk, other=0.0).to(ACC)
            b = tl.load(u_ptr + m * s_un + chw_offset(c, hw, p, W, s_uc, s_uh, s_uw, L_U), mask=msk, other=0.0).to(ACC)
            ah = a / da[:, None]
            bh = b / db[:, None]
            if ROWS:
                t = _sign(ah * bh - 1.0)
            else:
                t = tsg[:, None]
            if NEED_TV:
                ga = ca[:, None] * a + (g1 * t * bh - pa[:, None] * ah) / da[:, None]
                if HAS_GNEW:
                    ga += tl.load(gnew_ptr + m * s_gn + chw_offset(c, hw, p, W, s_gc, s_gh, s_gw, L_G),
                                  mask=msk, other=0.0).to(ACC)
                tl.store(gtv_ptr + m * s_an + chw_offset(c, hw, p, W, s_ac, s_ah, s_aw, L_A),
                         ga.to(gtv_ptr.dtype.element_ty), mask=msk)
            if NEED_U:
                gb = (g1 * t * ah - pb[:, None] * bh) / db[:, None]
                tl.store(gu_ptr + m * s_bn + chw_offset(c, hw, p, W, s_bc, s_bh, s_bw, L_B),
                         gb.to(gu_ptr.dtype.element_ty), mask=msk)
        if NEED_V:
            wv = tl.load(v_ptr + m * s_vn + chw_offset(c, hw, p, W, s_vc, s_vh, s_vw, L_V), mask=msk, other=0.0).to(ACC)
            tl.store(gv_ptr + m * s_wn + chw_offset(c, hw, p, W, s_wc, s_wh, s_ww, L_W),
                     (cw[:, None] * wv).to(gv_ptr.dtype.element_ty), mask=msk)


def _blocks(C: int, HW: int, block_q: int | None, block_j: int | None):
    bj = block_j or pow2(C, hi=128)
    bq = block_q or pow2(HW, hi=max(1, 2048 // bj))
    return bq, bj


def mv_terms_forward(tv, v, u, x, tail_index, grouping: str, *, block_q: int | None = None,
                     block_j: int | None = None):
    """Returns ``(new, terms, stats)``: new (M, C, H, W) contiguous in the dtype of x + tv, terms (2,) and
    stats (M, HW, 5) in the acc dtype (float64 if any input is float64, else float32). M >= 1."""
    M, C, H, W = tv.shape
    HW = H * W
    acc = acc_dtype(tv.dtype, v.dtype, u.dtype, x.dtype)
    bq, bj = _blocks(C, HW, block_q, block_j)
    n_qb = triton.cdiv(HW, bq)
    new = new_empty((M, C, H, W), torch.promote_types(tv.dtype, x.dtype), tv.device)   # as x + tv
    stats = new_empty((M, HW, N_STATS), acc, tv.device)
    part = new_empty((M, n_qb, 2), acc, tv.device)
    _mv_terms_fwd_kernel[(M, n_qb)](
        tv, u, v, x, tail_index, new, stats, part, C, HW, W, n_qb, EPS,
        *strides4(tv), *strides4(u), *strides4(v), *strides4(x),
        L_T=layout_code(tv), L_U=layout_code(u), L_V=layout_code(v), L_X=layout_code(x),
        ROWS=(grouping == "rows"), ACC=tl_acc(acc), BLOCK_Q=bq, BLOCK_J=bj,
        num_warps=warps_for(bq * bj))
    terms = part.view(-1, 2).sum(0)
    return new, terms, stats


def mv_terms_backward(tv, v, u, stats, grad_new, grad_terms, grouping: str,
                      need_tv: bool, need_v: bool, need_u: bool, *, block_q: int | None = None,
                      block_j: int | None = None):
    """Returns ``(grad_tv, grad_v, grad_u)`` (None where not needed), each in its input's dtype and
    memory format. ``grad_terms`` (2,) in the acc dtype; ``grad_new`` may be None. The gradient of x
    is ``index_add_gather(grad_new, tail_index, ...)`` from kernels/displacement.py."""
    if not (need_tv or need_v or need_u):
        return None, None, None
    M, C, H, W = tv.shape
    HW = H * W
    acc = stats.dtype
    bq, bj = _blocks(C, HW, block_q, block_j)
    gtv = new_empty_like(tv) if need_tv else None
    gu = new_empty_like(u) if need_u else None
    gv = new_empty_like(v) if need_v else None
    has_gnew = grad_new is not None
    gnew = grad_new if has_gnew else tv
    a_out, b_out, w_out = gtv if need_tv else tv, gu if need_u else u, gv if need_v else v
    _mv_terms_bwd_kernel[(M, triton.cdiv(HW, bq))](
        tv, u, v, gnew, stats, grad_terms.to(acc).contiguous(), a_out, b_out, w_out,
        C, HW, W, EPS,
        *strides4(tv), *strides4(u), *strides4(v), *strides4(gnew),
        *strides4(a_out), *strides4(b_out), *strides4(w_out),
        L_T=layout_code(tv), L_U=layout_code(u), L_V=layout_code(v), L_G=layout_code(gnew),
        L_A=layout_code(a_out), L_B=layout_code(b_out), L_W=layout_code(w_out),
        HAS_GNEW=has_gnew, NEED_TV=need_tv, NEED_U=need_u, NEED_V=need_v,
        ROWS=(grouping == "rows"), ACC=tl_acc(acc), BLOCK_Q=bq, BLOCK_J=bj,
        num_warps=warps_for(bq * bj))
    return gtv, gv, gu


__all__ = ["mv_terms_forward", "mv_terms_backward", "index_add_gather", "EPS"]
