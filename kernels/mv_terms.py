"""Eq. 4 (new samples) and Eq. 6 (the MV loss's norm and cosine terms), fused.

    u[m]     = x[t] - table[row[t]],  t = tail_index[m]   (the rare sample's displacement, never stored)
    new[m]   = x[t] + tv[m]                                  (M, C, H, W), dtype of x + tv
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
With them the backward is one elementwise pass (u is rebuilt from x and the centre again):
    grad_a = g_new + g0 s a/||a|| + (g1 t b_hat - [||a|| >= eps] g1 q a_hat) / max(||a||, eps)
    grad_b =                         (g1 t a_hat - [||b|| >= eps] g1 q b_hat) / max(||b||, eps)
    grad_w = -g0 s w/||w||,   s = sign(||a|| - ||w||),  a/||a|| := 0 at a = 0  (torch's conventions)
("rows" uses t_i = sign(z_i) per element, recomputed from a and b exactly as in the forward).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from rsg_fast.ops._common import EPS

from ._common import check_extent, grid, launch, layout_code, new_empty, new_empty_like, pow2, sample_offset, strides4

N_STATS = 5


@triton.jit
def _sign(z):
    return tl.where(z > 0, 1.0, 0.0) - tl.where(z < 0, 1.0, 0.0)


@triton.jit
def _coords(q, j, C: tl.constexpr, HW: tl.constexpr, ROWS: tl.constexpr):
    """(c, hw, p = c*HW + hw) of component j of vector q, broadcast to [BLOCK_Q, BLOCK_J]."""
    if ROWS:
        p = q.to(tl.int64)[:, None] * C + j[None, :]
        c = p // HW
        hw = p - c * HW
    else:
        c = j[None, :] + q[:, None] * 0
        hw = q[:, None] + j[None, :] * 0
        p = c.to(tl.int64) * HW + hw
    return c, hw, p


@triton.jit
def _off(c, hw, p, sc, sh, sw, C: tl.constexpr, H: tl.constexpr, W: tl.constexpr, LAYOUT: tl.constexpr):
    """Offset inside a sample. NCHW-dense uses p itself: for "rows" the compiler then sees the runs
    of C consecutive elements (from c*HW + (p - c*HW) it could not) and loads them as vectors."""
    if LAYOUT == 2:
        off = p
    else:
        off = sample_offset(c, hw, sc, sh, sw, C, H, W, LAYOUT)
    return off


@triton.jit
def _tail_u(x_n, tab_r, j, c, hw, p, msk, sxc, sxh, sxw, stc, C: tl.constexpr, H: tl.constexpr, W: tl.constexpr,
            L_X: tl.constexpr, ROWS: tl.constexpr, acc_ty):
    """b = u elements: x[t, c, hw] - table[row[t], c], in the acc dtype (with the x elements); 0 where
    ``msk`` is false."""
    xv = tl.load(x_n + _off(c, hw, p, sxc, sxh, sxw, C, H, W, L_X), mask=msk, other=0.0).to(acc_ty)
    # int64: the channel stride of a table laid out otherwise (e.g. transposed) may span it
    if ROWS:   # a row of C consecutive elements spans several channels: one centre value per element
        b = xv - tl.load(tab_r + c.to(tl.int64) * stc, mask=msk, other=0.0).to(acc_ty)
    else:
        # "location": component j is channel j in every vector, so one [BLOCK_J] load, broadcast. A
        # [BLOCK_Q, BLOCK_J] gather here took the layout the coalescing pass gives a channel-contiguous
        # pointer, and x and tv were converted to it through shared memory (with barriers) every
        # iteration, which serialised the loads of the loop body on sm_90
        cen = tl.load(tab_r + j.to(tl.int64) * stc, mask=j < C, other=0.0).to(acc_ty)
        b = tl.where(msk, xv - cen[None, :], 0.0)
    return xv, b


@triton.jit
def _mv_terms_fwd_kernel(
    tv_ptr, v_ptr, x_ptr, ti_ptr, row_ptr, tab_ptr, new_ptr, stats_ptr, part_ptr,
    s_tn, s_tc, s_th, s_tw, s_vn, s_vc, s_vh, s_vw, s_xn, s_xc, s_xh, s_xw, s_tr, s_tcc,
    C: tl.constexpr, H: tl.constexpr, W: tl.constexpr,
    L_T: tl.constexpr, L_V: tl.constexpr, L_X: tl.constexpr, N_QB: tl.constexpr,
    ROWS: tl.constexpr, EPS_: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_J: tl.constexpr,
):
    """Program (m, qb): new[m] for its vectors, the per-vector statistics, and
    part[m, qb] = (sum |na - nw|, sum cos-term) over its vectors.

    Shapes: tv, v (M, C, H, W) and x (N, C, H, W), any layout; tail_index (M,), row (N,) int64;
    table (R, C); new (M, C, H, W) NCHW-contiguous; stats (M, HW, 5); part (M, N_QB, 2), acc dtype.
    Bytes: reads 3*M*C*HW (tv, v, x rows; "rows" re-reads tv and x, from cache) + M*C centre values,
    writes M*C*HW + 5*M*HW + 2*M*N_QB. Saved for backward: stats (with tv, v, x and the indices).
    """
    HW: tl.constexpr = H * W
    m = tl.program_id(0).to(tl.int64)
    qb = tl.program_id(1)
    acc_ty = stats_ptr.dtype.element_ty
    eps = tl.full([BLOCK_Q], EPS_, acc_ty)           # built in the acc dtype: fp64 keeps 1e-12 exact
    q = qb * BLOCK_Q + tl.arange(0, BLOCK_Q)
    qmask = q < HW
    t = tl.load(ti_ptr + m).to(tl.int64)
    x_n = x_ptr + t * s_xn
    tab_r = tab_ptr + tl.load(row_ptr + t).to(tl.int64) * s_tr
    # elementwise sums, reduced over the components once after the loop: a reduction per iteration
    # crossed warps (shared memory and barriers) four times per iteration in the "location" layout
    ssa = tl.zeros([BLOCK_Q, BLOCK_J], acc_ty)
    ssb = tl.zeros([BLOCK_Q, BLOCK_J], acc_ty)
    ssw = tl.zeros([BLOCK_Q, BLOCK_J], acc_ty)
    dot = tl.zeros([BLOCK_Q, BLOCK_J], acc_ty)
    for j0 in range(0, C, BLOCK_J):
        j = j0 + tl.arange(0, BLOCK_J)
        msk = qmask[:, None] & (j < C)[None, :]
        c, hw, p = _coords(q, j, C, HW, ROWS)
        a = tl.load(tv_ptr + m * s_tn + _off(c, hw, p, s_tc, s_th, s_tw, C, H, W, L_T),
                    mask=msk, other=0.0).to(acc_ty)
        wv = tl.load(v_ptr + m * s_vn + _off(c, hw, p, s_vc, s_vh, s_vw, C, H, W, L_V),
                     mask=msk, other=0.0).to(acc_ty)
        xv, b = _tail_u(x_n, tab_r, j, c, hw, p, msk, s_xc, s_xh, s_xw, s_tcc, C, H, W, L_X, ROWS, acc_ty)
        tl.store(new_ptr + m * (C * HW) + p, (xv + a).to(new_ptr.dtype.element_ty),
                 mask=msk)
        ssa += a * a
        ssb += b * b
        ssw += wv * wv
        if not ROWS:  # "rows" needs the elementwise products, recomputed in its second loop
            dot += a * b
    na = tl.sqrt(tl.sum(ssa, axis=1))
    nb = tl.sqrt(tl.sum(ssb, axis=1))
    nw = tl.sqrt(tl.sum(ssw, axis=1))
    da = tl.maximum(na, eps)
    db = tl.maximum(nb, eps)
    nterm = tl.abs(na - nw)
    if ROWS:
        csum = tl.zeros([BLOCK_Q, BLOCK_J], acc_ty)
        qsum = tl.zeros([BLOCK_Q, BLOCK_J], acc_ty)
        for j0 in range(0, C, BLOCK_J):
            j = j0 + tl.arange(0, BLOCK_J)
            msk = qmask[:, None] & (j < C)[None, :]
            c, hw, p = _coords(q, j, C, HW, ROWS)
            a = tl.load(tv_ptr + m * s_tn + _off(c, hw, p, s_tc, s_th, s_tw, C, H, W, L_T),
                        mask=msk, other=0.0).to(acc_ty)
            _, b = _tail_u(x_n, tab_r, j, c, hw, p, msk, s_xc, s_xh, s_xw, s_tcc, C, H, W, L_X, ROWS, acc_ty)
            ab = (a / da[:, None]) * (b / db[:, None])
            z = ab - 1.0
            csum += tl.where(msk, tl.abs(z), 0.0)
            qsum += tl.where(msk, _sign(z) * ab, 0.0)
        csum = tl.sum(csum, axis=1)
        qsum = tl.sum(qsum, axis=1)
        tsg = tl.zeros([BLOCK_Q], acc_ty)
    else:
        cosv = tl.sum(dot, axis=1) / (da * db)
        z = cosv - 1.0
        csum = tl.abs(z)
        tsg = _sign(z).to(acc_ty)
        qsum = tsg * cosv
    st = stats_ptr + (m * HW + q) * 5
    tl.store(st + 0, na, mask=qmask)
    tl.store(st + 1, nb, mask=qmask)
    tl.store(st + 2, nw, mask=qmask)
    tl.store(st + 3, qsum, mask=qmask)
    tl.store(st + 4, tsg, mask=qmask)
    pp = part_ptr + (m * N_QB + qb) * 2
    tl.store(pp, tl.sum(tl.where(qmask, nterm, 0.0), axis=0))
    tl.store(pp + 1, tl.sum(tl.where(qmask, csum, 0.0), axis=0))


@triton.jit
def _mv_terms_bwd_kernel(
    tv_ptr, v_ptr, x_ptr, ti_ptr, row_ptr, tab_ptr, gnew_ptr, stats_ptr, gterms_ptr, gtv_ptr, gv_ptr, gu_ptr,
    s_tn, s_tc, s_th, s_tw, s_vn, s_vc, s_vh, s_vw, s_xn, s_xc, s_xh, s_xw, s_tr, s_tcc,
    s_gn, s_gc, s_gh, s_gw, s_an, s_ac, s_ah, s_aw, s_wn, s_wc, s_wh, s_ww,
    C: tl.constexpr, H: tl.constexpr, W: tl.constexpr,
    L_T: tl.constexpr, L_V: tl.constexpr, L_X: tl.constexpr, L_G: tl.constexpr, L_A: tl.constexpr,
    L_W: tl.constexpr, HAS_GNEW: tl.constexpr, NEED_TV: tl.constexpr, NEED_V: tl.constexpr,
    NEED_U: tl.constexpr, ROWS: tl.constexpr, EPS_: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_J: tl.constexpr,
):
    """Program (m, qb): grad_tv, grad_v and (when x or the table need it) grad_u for its vectors
    (formulas in the module docstring).

    Shapes: tv, v, grad_new and grad_tv, grad_v (M, C, H, W) any layout; grad_u (M, C, H, W)
    NCHW-contiguous; stats (M, HW, 5); grad_terms (2,). Bytes: reads tv and the x rows (+ v,
    grad_new when needed) once, writes each needed gradient once; 5*M*HW statistics.
    """
    HW: tl.constexpr = H * W
    m = tl.program_id(0).to(tl.int64)
    qb = tl.program_id(1)
    acc_ty = stats_ptr.dtype.element_ty
    eps = tl.full([BLOCK_Q], EPS_, acc_ty)
    q = qb * BLOCK_Q + tl.arange(0, BLOCK_Q)
    qmask = q < HW
    st = stats_ptr + (m * HW + q) * 5
    na = tl.load(st + 0, mask=qmask, other=1.0)
    nb = tl.load(st + 1, mask=qmask, other=1.0)
    nw = tl.load(st + 2, mask=qmask, other=1.0)
    qs = tl.load(st + 3, mask=qmask, other=0.0)
    tsg = tl.load(st + 4, mask=qmask, other=0.0)
    g0 = tl.load(gterms_ptr).to(acc_ty)
    g1 = tl.load(gterms_ptr + 1).to(acc_ty)
    s0 = _sign(na - nw) * g0
    ca = tl.where(na > 0, s0 / tl.where(na > 0, na, 1.0), 0.0)
    cw = tl.where(nw > 0, -s0 / tl.where(nw > 0, nw, 1.0), 0.0)
    da = tl.maximum(na, eps)
    db = tl.maximum(nb, eps)
    pa = tl.where(na >= eps, g1 * qs, 0.0)
    pb = tl.where(nb >= eps, g1 * qs, 0.0)
    t = tl.load(ti_ptr + m).to(tl.int64)
    x_n = x_ptr + t * s_xn
    tab_r = tab_ptr + tl.load(row_ptr + t).to(tl.int64) * s_tr
    for j0 in range(0, C, BLOCK_J):
        j = j0 + tl.arange(0, BLOCK_J)
        msk = qmask[:, None] & (j < C)[None, :]
        c, hw, p = _coords(q, j, C, HW, ROWS)
        if NEED_TV or NEED_U:
            a = tl.load(tv_ptr + m * s_tn + _off(c, hw, p, s_tc, s_th, s_tw, C, H, W, L_T),
                        mask=msk, other=0.0).to(acc_ty)
            _, b = _tail_u(x_n, tab_r, j, c, hw, p, msk, s_xc, s_xh, s_xw, s_tcc, C, H, W, L_X, ROWS, acc_ty)
            ah = a / da[:, None]
            bh = b / db[:, None]
            if ROWS:
                sgn = _sign(ah * bh - 1.0)
            else:
                sgn = tsg[:, None]
            if NEED_TV:
                ga = ca[:, None] * a + (g1 * sgn * bh - pa[:, None] * ah) / da[:, None]
                if HAS_GNEW:
                    ga += tl.load(gnew_ptr + m * s_gn + _off(c, hw, p, s_gc, s_gh, s_gw, C, H, W, L_G),
                                  mask=msk, other=0.0).to(acc_ty)
                tl.store(gtv_ptr + m * s_an + _off(c, hw, p, s_ac, s_ah, s_aw, C, H, W, L_A),
                         ga.to(gtv_ptr.dtype.element_ty), mask=msk)
            if NEED_U:
                gb = (g1 * sgn * ah - pb[:, None] * bh) / db[:, None]
                tl.store(gu_ptr + m * (C * HW) + p, gb.to(gu_ptr.dtype.element_ty),
                         mask=msk)
        if NEED_V:
            wv = tl.load(v_ptr + m * s_vn + _off(c, hw, p, s_vc, s_vh, s_vw, C, H, W, L_V),
                         mask=msk, other=0.0).to(acc_ty)
            tl.store(gv_ptr + m * s_wn + _off(c, hw, p, s_wc, s_wh, s_ww, C, H, W, L_W),
                     (cw[:, None] * wv).to(gv_ptr.dtype.element_ty), mask=msk)


def _blocks(C: int, HW: int, rows: bool):
    """(BLOCK_Q, BLOCK_J): tiles of at most 1024 elements (the forward keeps four [BLOCK_Q, BLOCK_J]
    sums across its loop besides the tiles each iteration loads; larger tiles cost registers, about
    150 at 1024 channels with 2048-element tiles).

    "rows" takes whole vectors up to 1024 channels (one vector of 1024 at ImageNet-LT's maps): its
    forward reads tv and x twice (the norms first, then the elementwise terms), and the second read
    must come from cache. With 16 vectors of 64-channel chunks a program re-read 128 KB after
    streaming 192 KB, and the few hundred resident programs together passed far more than the L2
    between the two reads; one vector re-reads 8 KB just read by the same program. Where that would
    pass CUDA's 65535 programs along the vector axis (H * W > 65535 at 1024 channels), "rows" keeps
    the 64-channel chunks, so both groupings take the same sizes (docs/ops-contract.md)."""
    for hi in ((1024, 64) if rows else (64,)):
        bj = pow2(C, hi=hi)
        bq = pow2(HW, hi=max(1, 1024 // bj))
        if (HW + bq - 1) // bq <= 65535:
            break
    return bq, bj


def mv_terms_forward(tv, v, x, tail_index, row, table, grouping: str, acc: torch.dtype):
    """Returns ``(new, terms, stats)``: new (M, C, H, W) NCHW-contiguous in the dtype of x + tv,
    terms (2,) and stats (M, HW, 5) in ``acc``. M may be 0 (nothing runs)."""
    M, C, H, W = tv.shape
    bq, bj = _blocks(C, H * W, grouping == "rows")
    g = grid("mv_terms", ("tv.shape[0] (M)", M, 1), ("H * W of tv", H * W, bq))
    check_extent("mv_terms", "tv.shape[1] (C)", C)
    n_qb = g[1]
    new = new_empty((M, C, H, W), torch.promote_types(tv.dtype, x.dtype), tv.device)   # as x + tv
    stats = new_empty((M, H * W, N_STATS), acc, tv.device)
    part = new_empty((M, n_qb, 2), acc, tv.device)
    launch(_mv_terms_fwd_kernel, g)(
        tv, v, x, tail_index, row, table, new, stats, part,
        *strides4(tv), *strides4(v), *strides4(x), *table.stride(),
        C=C, H=H, W=W, L_T=layout_code(tv), L_V=layout_code(v), L_X=layout_code(x), N_QB=n_qb,
        ROWS=(grouping == "rows"), EPS_=EPS, BLOCK_Q=bq, BLOCK_J=bj, num_warps=4)
    return new, part.sum(dim=(0, 1)), stats


def mv_terms_backward(tv, v, x, tail_index, row, table, stats, grad_new, grad_terms, grouping: str,
                      need_tv: bool, need_v: bool, need_u: bool):
    """Returns ``(grad_tv, grad_v, grad_u)``, a 0-element tensor for each one not needed: grad_tv
    and grad_v in their input's dtype and layout, grad_u NCHW-contiguous in x's dtype."""
    M, C, H, W = tv.shape
    bq, bj = _blocks(C, H * W, grouping == "rows")
    g = grid("mv_terms's backward", ("tv.shape[0] (M)", M, 1), ("H * W of tv", H * W, bq))
    check_extent("mv_terms's backward", "tv.shape[1] (C)", C)
    gtv = new_empty_like(tv) if need_tv else tv.new_empty(0)
    gv = new_empty_like(v) if need_v else tv.new_empty(0)
    gu = new_empty((M, C, H, W), x.dtype, tv.device) if need_u else tv.new_empty(0)
    has_gnew = grad_new is not None
    gnew = grad_new if has_gnew else tv
    a_out, w_out = (gtv if need_tv else tv), (gv if need_v else v)
    launch(_mv_terms_bwd_kernel, g)(
        tv, v, x, tail_index, row, table, gnew, stats, grad_terms.to(stats.dtype).contiguous(), a_out, w_out, gu,
        *strides4(tv), *strides4(v), *strides4(x), *table.stride(), *strides4(gnew), *strides4(a_out),
        *strides4(w_out),
        C=C, H=H, W=W, L_T=layout_code(tv), L_V=layout_code(v), L_X=layout_code(x), L_G=layout_code(gnew),
        L_A=layout_code(a_out), L_W=layout_code(w_out), HAS_GNEW=has_gnew, NEED_TV=need_tv, NEED_V=need_v,
        NEED_U=need_u, ROWS=(grouping == "rows"), EPS_=EPS, BLOCK_Q=bq, BLOCK_J=bj, num_warps=4)
    return gtv, gv, gu


__all__ = ["mv_terms_forward", "mv_terms_backward", "EPS"]
