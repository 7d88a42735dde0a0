"""The contrastive module's pooled 3x3 convolution (Eq. 2), reduced to nine window means.

Average pooling after a 3x3, padding-1 convolution is linear, so
    mean_{h,w} conv3x3(a)[p, e] = sum_{d,i,j} W3[e, d, i, j] S[p, d, i, j] + b3[e],
    S[p, d, i, j] = (1/HW) sum_{h in R_i, w in C_j} a[p, h, w, d],
where tap row i reads input rows R_0 = [0, H-2], R_1 = [0, H-1], R_2 = [1, H-1] (likewise C_j for
columns) and a = relu(pre) is the 1x1 convolution's activation, channels-last (P, H, W, D). S has
the convolution weight's (D, 3, 3) layout per sample, so the pooled output is one matrix product
with the weight as it is stored. These kernels compute S straight from ``pre`` (the ReLU on the
fly: a is never stored) and, backward,
    grad_pre[p, h, w, d] = [not pre <= 0] * (1/HW) sum_{i: h in R_i} sum_{j: w in C_j} grad_S[p, d, i, j].

Each R_i is a union of three row classes, the first row (0), the middle rows (1 .. H-2) and the
last row (H-1), and likewise each C_j: every window is a union of the nine (row class, column
class) regions (H = 1: the one row is read by tap row 1 only; likewise W = 1). The forward sums
relu(pre) over each region (a row walk that only adds) and adds the regions of each window; the
backward's sum over taps takes one of nine values per channel, formed once, so its row walk only
selects.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import check_extent, grid, launch, new_empty, new_empty_like, pow2


@triton.jit
def _i64(x):
    """x (a compile-time int or a tensor) as int64, so that a product with a runtime stride is 64-bit."""
    return tl.cast(x, tl.int64)


@triton.jit
def _load(ptrs, mask, MASKED: tl.constexpr):
    """tl.load, masked (dead lanes read 0) only where a channel block runs past D."""
    if MASKED:
        x = tl.load(ptrs, mask=mask, other=0.0)
    else:
        x = tl.load(ptrs)
    return x


@triton.jit
def _clamp(w, W: tl.constexpr, CLAMP: tl.constexpr):
    """Column indices to load: a slot past the map (w >= W) reads column W-1 again instead of being
    masked (a masked load zero-fills its registers first, every iteration, and at 14 x 14 ptxas then
    issued the loop's loads one at a time); those slots stay out of every result."""
    if CLAMP:
        w = tl.minimum(w, W - 1)
    return w


@triton.jit
def _relu(x, acc_ty: tl.constexpr):
    return tl.maximum(x.to(acc_ty), 0.0, propagate_nan=tl.PropagateNan.ALL)   # keeps NaN, as torch.relu


@triton.jit
def _column_sums(t, w, W: tl.constexpr, HAS_FIRST: tl.constexpr, HAS_LAST: tl.constexpr):
    """(first, middle, last) column-class sums over axis 0 of a [BLOCK_W, BLOCK_D] tile whose slot k
    holds column w[k]; slots past the map (w >= W) fall in no class. W == 1: (all, 0, 0). A class
    the caller knows the chunk lacks (HAS_FIRST, HAS_LAST false) gives zeros without a reduction."""
    if HAS_FIRST:
        first = tl.sum(tl.where((w == 0)[:, None], t, 0.0), axis=0)
    else:
        first = tl.zeros([t.shape[1]], t.dtype)
    if W == 1:
        mid = tl.zeros_like(first)
        last = tl.zeros_like(first)
    else:
        mid = tl.sum(tl.where(((w >= 1) & (w <= W - 2))[:, None], t, 0.0), axis=0)
        if HAS_LAST:
            last = tl.sum(tl.where((w == W - 1)[:, None], t, 0.0), axis=0)
        else:
            last = tl.zeros_like(first)
    return first, mid, last


@triton.jit
def _tap_sums(first, mid, last, N: tl.constexpr):
    """(tap 0, tap 1, tap 2) from the sums over the first, middle and last positions of an axis of
    length N: tap 0 reads [0, N-2], tap 1 all, tap 2 [1, N-1] (N == 1: tap 1 only). Sums of
    non-negative parts, nothing subtracted."""
    if N == 1:
        t0 = tl.zeros_like(first)
        t1 = first
        t2 = tl.zeros_like(first)
    else:
        t0 = first + mid
        t1 = first + mid + last
        t2 = mid + last
    return t0, t1, t2


@triton.jit
def _chunk_rows(base, w_ld, sphw, d_off, dmask, acc, H: tl.constexpr, W: tl.constexpr,
                BLOCK_R: tl.constexpr, MASK_D: tl.constexpr, AHEAD: tl.constexpr):
    """relu(pre) over the rows of one column chunk (columns w_ld, [BLOCK_W]; channels d_off):
    (row 0, acc + the sum over the middle rows 1 .. H-2, row H-1), [BLOCK_W, BLOCK_D] tiles in
    acc's dtype (rows that do not exist give zeros). Per element of the row walk: one load, one max
    and one add. AHEAD: the edge rows' loads and each next group's are issued before the adds they
    wait for (more bytes in flight, twice the registers for loaded data)."""
    acc_ty: tl.constexpr = acc.dtype
    r = tl.arange(0, BLOCK_R)
    off = w_ld.to(tl.int64)[:, None] * sphw + d_off[None, :]
    off3 = (r[:, None] * W + w_ld[None, :]).to(tl.int64)[:, :, None] * sphw + d_off[None, None, :]
    mask = dmask[None, :]
    last_row = _i64((H - 1) * W) * sphw
    if AHEAD:
        x_first = _load(base + off, mask, MASK_D)
        if H > 1:
            x_last = _load(base + last_row + off, mask, MASK_D)
    if H > 2:
        # whole groups of BLOCK_R middle rows, no row mask. The columns and channels of a chunk take
        # all 32 lanes (from 4 columns in fp32, 8 in 2-byte types), so a group's rows lie in each
        # thread's own registers and its sum is BLOCK_R adds per element, as an elementwise one,
        # into a BLOCK_R times smaller accumulator
        if AHEAD:
            if (H - 2) // BLOCK_R > 0:
                x = _load(base + _i64(W) * sphw + off3, mask[None, :, :], MASK_D)
                for g in range(1, (H - 2) // BLOCK_R):
                    x_next = _load(base + _i64((1 + g * BLOCK_R) * W) * sphw + off3, mask[None, :, :], MASK_D)
                    acc += tl.sum(_relu(x, acc_ty), axis=0)
                    x = x_next
                acc += tl.sum(_relu(x, acc_ty), axis=0)
        else:
            for g in range((H - 2) // BLOCK_R):
                x = _load(base + _i64((1 + g * BLOCK_R) * W) * sphw + off3, mask[None, :, :], MASK_D)
                acc += tl.sum(_relu(x, acc_ty), axis=0)
        if (H - 2) % BLOCK_R != 0:
            x = tl.load(base + _i64((1 + (H - 2) // BLOCK_R * BLOCK_R) * W) * sphw + off3,
                        mask=mask[None, :, :] & (r < (H - 2) % BLOCK_R)[:, None, None], other=0.0)
            acc += tl.sum(_relu(x, acc_ty), axis=0)
    if not AHEAD:
        x_first = _load(base + off, mask, MASK_D)
        if H > 1:
            x_last = _load(base + last_row + off, mask, MASK_D)
    t_first = _relu(x_first, acc_ty)
    if H > 1:
        t_last = _relu(x_last, acc_ty)
    else:
        t_last = tl.zeros_like(acc)
    return t_first, acc, t_last


@triton.jit
def _relu_tap_window_means_fwd_kernel(
    pre_ptr, out_ptr, spp, sphw, spd,
    H: tl.constexpr, W: tl.constexpr, D: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Program (p, db): S[p, d, :, :] for the channels d of its block.

    The rows of the map fall in three classes, first (h = 0), middle (1 .. H-2) and last (H-1),
    and so do its columns; each tap window is a union of the nine (row class, column class)
    regions. The program walks the map in column chunks of BLOCK_W (one chunk when W <= BLOCK_W),
    adding relu(pre) elementwise into one tile per row class (``_chunk_rows``), splits the tiles by
    column class into the nine region sums, and forms each S[i, j] as a sum of the regions its
    window covers: no masks or selects per element, and nothing subtracted.

    Shapes: pre (P, H, W, D) with (H, W) one flat axis (stride sphw), any other strides
    (channels-last contiguous gives vector loads along d); S (P, D, 3, 3) contiguous in the acc
    dtype (that of the output buffer). Bytes: reads P*HW*D, writes 9*P*D.
    """
    HW: tl.constexpr = H * W
    N_CHUNKS: tl.constexpr = (W + BLOCK_W - 1) // BLOCK_W
    CLAMP: tl.constexpr = W % BLOCK_W != 0
    MASK_D: tl.constexpr = D % BLOCK_D != 0
    acc_ty: tl.constexpr = out_ptr.dtype.element_ty
    p = tl.program_id(0).to(tl.int64)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = offs_d < D
    base = pre_ptr + p * spp
    d_off = offs_d.to(tl.int64) * spd     # int64: a channel stride can span the whole tensor
    zero = tl.zeros([BLOCK_W, BLOCK_D], acc_ty)
    w = tl.arange(0, BLOCK_W)
    # region sums, {first, middle, last} row class x {first (a), middle (m), last (z)} column class;
    # the chunks in the order that keeps the fewest of them live across a row walk
    fm = tl.zeros([BLOCK_D], acc_ty)
    mm = tl.zeros([BLOCK_D], acc_ty)
    zm = tl.zeros([BLOCK_D], acc_ty)
    if N_CHUNKS > 2:
        # chunks 1 .. N_CHUNKS-2 hold middle columns only: added elementwise, reduced once after
        # the loop (no reduction into a loop-carried value: LLVM's SLP vectorizer crashed on
        # per-chunk sums, in triton 3.8)
        c_first = zero
        c_mid = zero
        c_last = zero
        for c0 in range(BLOCK_W, (N_CHUNKS - 1) * BLOCK_W, BLOCK_W):
            t_first, c_mid, t_last = _chunk_rows(base, c0 + w, sphw, d_off, dmask, c_mid, H, W, BLOCK_R, MASK_D, False)
            c_first += t_first
            c_last += t_last
        fm += tl.sum(c_first, axis=0)
        mm += tl.sum(c_mid, axis=0)
        zm += tl.sum(c_last, axis=0)
    if N_CHUNKS > 1:   # the last chunk: middle columns and the last one
        w_last = (N_CHUNKS - 1) * BLOCK_W + w
        t_first, t_mid, t_last = _chunk_rows(base, _clamp(w_last, W, CLAMP), sphw, d_off, dmask, zero,
                                             H, W, BLOCK_R, MASK_D, False)
        _, m, fz = _column_sums(t_first, w_last, W, False, True)
        fm += m
        _, m, mz = _column_sums(t_mid, w_last, W, False, True)
        mm += m
        _, m, zz = _column_sums(t_last, w_last, W, False, True)
        zm += m
    # chunk 0: the first column and middle ones (and the last one, when it is the only chunk)
    t_first, t_mid, t_last = _chunk_rows(base, _clamp(w, W, CLAMP and N_CHUNKS == 1), sphw, d_off, dmask, zero,
                                         H, W, BLOCK_R, MASK_D, N_CHUNKS == 1)
    fa, m, z = _column_sums(t_first, w, W, True, N_CHUNKS == 1)
    fm += m
    if N_CHUNKS == 1:
        fz = z
    ma, m, z = _column_sums(t_mid, w, W, True, N_CHUNKS == 1)
    mm += m
    if N_CHUNKS == 1:
        mz = z
    za, m, z = _column_sums(t_last, w, W, True, N_CHUNKS == 1)
    zm += m
    if N_CHUNKS == 1:
        zz = z
    # the tap rows' sums per column class (H == 1: row 0 is the "first" row, read by tap row 1 only)
    r0a, r1a, r2a = _tap_sums(fa, ma, za, H)
    r0m, r1m, r2m = _tap_sums(fm, mm, zm, H)
    r0z, r1z, r2z = _tap_sums(fz, mz, zz, H)
    s00, s01, s02 = _tap_sums(r0a, r0m, r0z, W)
    s10, s11, s12 = _tap_sums(r1a, r1m, r1z, W)
    s20, s21, s22 = _tap_sums(r2a, r2m, r2z, W)
    o = out_ptr + p * (9 * D) + offs_d * 9          # S[p, d, i, j]
    tl.store(o + 0, s00 / HW, mask=dmask)
    tl.store(o + 1, s01 / HW, mask=dmask)
    tl.store(o + 2, s02 / HW, mask=dmask)
    tl.store(o + 3, s10 / HW, mask=dmask)
    tl.store(o + 4, s11 / HW, mask=dmask)
    tl.store(o + 5, s12 / HW, mask=dmask)
    tl.store(o + 6, s20 / HW, mask=dmask)
    tl.store(o + 7, s21 / HW, mask=dmask)
    tl.store(o + 8, s22 / HW, mask=dmask)


@triton.jit
def _position_class_sums(g0, g1, g2, N: tl.constexpr):
    """_tap_sums' adjoint: for the (first, middle, last) positions of an axis of length N (columns,
    then rows), the sum of g_i over the taps i that read them, in the order the window sums add up
    (first: g0 + g1, middle: (g0 + g1) + g2, last: g1 + g2; N == 1: the only position, g1)."""
    if N == 1:
        first, mid, last = g1, g1, g1
    else:
        first, mid, last = g0 + g1, g0 + g1 + g2, g1 + g2
    return first, mid, last


@triton.jit
def _class_tile(first, mid, last, w, W: tl.constexpr, out_ty: tl.constexpr):
    """[BLOCK_W, BLOCK_D] tile whose slot k holds the value of column w[k]'s class, in out_ty."""
    if W == 1:
        t = tl.broadcast_to(first[None, :], (w.shape[0], first.shape[0]))
    else:
        t = tl.where((w == 0)[:, None], first[None, :], tl.where((w == W - 1)[:, None], last[None, :], mid[None, :]))
    return t.to(out_ty)


@triton.jit
def _relu_grad(x, g):
    """ReLU's backward as torch.relu's: [x <= 0] ? 0 : g, so the gradient passes where x is NaN."""
    return tl.where(x <= 0, 0.0, g)


@triton.jit
def _store(ptrs, value, mask, MASKED: tl.constexpr):
    if MASKED:
        tl.store(ptrs, value, mask=mask)
    else:
        tl.store(ptrs, value)


@triton.jit
def _relu_tap_window_means_bwd_kernel(
    pre_ptr, gs_ptr, gpre_ptr, spp, sphw, spd, sgp, sgd, sgi, sgj, sop, sohw, sod,
    H: tl.constexpr, W: tl.constexpr, D: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Program (p, db): grad_pre[p, :, :, d] for the channels d of its block (module docstring).

    A position's gradient sum depends only on its (row, column) class (first, middle, last), so the
    program forms the nine sums once, lays them out per column chunk as one [BLOCK_W, BLOCK_D] tile
    per row class, and the row walk (the forward's tiles) only selects: [pre <= 0] ? 0 : tile.

    Shapes: pre and grad_pre (P, H, W, D) with (H, W) one flat axis, any other strides; grad_S
    (P, D, 3, 3) any strides. Bytes: reads P*HW*D of pre and 9*P*D of grad_S, writes P*HW*D.
    """
    HW: tl.constexpr = H * W
    MASK_D: tl.constexpr = D % BLOCK_D != 0
    MASKED: tl.constexpr = MASK_D or (W % BLOCK_W != 0)     # stores
    out_ty: tl.constexpr = gpre_ptr.dtype.element_ty
    p = tl.program_id(0).to(tl.int64)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = offs_d < D
    acc_ty: tl.constexpr = gs_ptr.dtype.element_ty         # grad_S comes in S's (acc) dtype
    # int64 offsets: a stride here may span the whole tensor (e.g. channels outermost)
    d64 = offs_d.to(tl.int64)
    pre_d, out_d = d64 * spd, d64 * sod
    g0 = gs_ptr + p * sgp + d64 * sgd        # grad_S[p, d, 0, 0]; the other taps add one stride at a time
    g1 = g0 + sgi                            # (no 2 * sgi: a 32-bit product)
    g2 = g1 + sgi
    g00 = tl.load(g0, mask=dmask, other=0.0).to(acc_ty)
    g01 = tl.load(g0 + sgj, mask=dmask, other=0.0).to(acc_ty)
    g02 = tl.load(g0 + sgj + sgj, mask=dmask, other=0.0).to(acc_ty)
    g10 = tl.load(g1, mask=dmask, other=0.0).to(acc_ty)
    g11 = tl.load(g1 + sgj, mask=dmask, other=0.0).to(acc_ty)
    g12 = tl.load(g1 + sgj + sgj, mask=dmask, other=0.0).to(acc_ty)
    g20 = tl.load(g2, mask=dmask, other=0.0).to(acc_ty)
    g21 = tl.load(g2 + sgj, mask=dmask, other=0.0).to(acc_ty)
    g22 = tl.load(g2 + sgj + sgj, mask=dmask, other=0.0).to(acc_ty)
    # per tap row, the sum over the tap columns that read each column class; then per row class the
    # sum over the tap rows that read it: the nine distinct values of the gradient sum
    t0a, t0m, t0z = _position_class_sums(g00, g01, g02, W)
    t1a, t1m, t1z = _position_class_sums(g10, g11, g12, W)
    t2a, t2m, t2z = _position_class_sums(g20, g21, g22, W)
    fa, ma, za = _position_class_sums(t0a, t1a, t2a, H)
    fm, mm, zm = _position_class_sums(t0m, t1m, t2m, H)
    fz, mz, zz = _position_class_sums(t0z, t1z, t2z, H)
    fa, fm, fz, ma, mm, mz, za, zm, zz = fa / HW, fm / HW, fz / HW, ma / HW, mm / HW, mz / HW, za / HW, zm / HW, zz / HW
    r = tl.arange(0, BLOCK_R)
    pre_base = pre_ptr + p * spp
    out_base = gpre_ptr + p * sop
    for c0 in range(0, W, BLOCK_W):
        w = c0 + tl.arange(0, BLOCK_W)
        w_ld = _clamp(w, W, W % BLOCK_W != 0)
        w64 = w_ld.to(tl.int64)[:, None]
        rw64 = (r[:, None] * W + w_ld[None, :]).to(tl.int64)[:, :, None]
        pre_off, out_off = w64 * sphw + pre_d[None, :], w64 * sohw + out_d[None, :]
        pre_off3, out_off3 = rw64 * sphw + pre_d[None, None, :], rw64 * sohw + out_d[None, None, :]
        mask = (w < W)[:, None] & dmask[None, :]
        last_row = _i64((H - 1) * W)
        x_first = _load(pre_base + pre_off, dmask[None, :], MASK_D)
        if H > 1:
            x_last = _load(pre_base + last_row * sphw + pre_off, dmask[None, :], MASK_D)
        g_first = _class_tile(fa, fm, fz, w, W, out_ty)
        _store(out_base + out_off, _relu_grad(x_first, g_first), mask, MASKED)
        if H > 1:
            g_last = _class_tile(za, zm, zz, w, W, out_ty)
            _store(out_base + last_row * sohw + out_off, _relu_grad(x_last, g_last), mask, MASKED)
        if H > 2:
            g_mid = _class_tile(ma, mm, mz, w, W, out_ty)[None, :, :]
            for g in range((H - 2) // BLOCK_R):     # whole groups of middle rows: no row mask
                row = _i64((1 + g * BLOCK_R) * W)
                x = _load(pre_base + row * sphw + pre_off3, dmask[None, None, :], MASK_D)
                _store(out_base + row * sohw + out_off3, _relu_grad(x, g_mid), mask[None, :, :], MASKED)
            if (H - 2) % BLOCK_R != 0:
                row = _i64((1 + (H - 2) // BLOCK_R * BLOCK_R) * W)
                tail = mask[None, :, :] & (r < (H - 2) % BLOCK_R)[:, None, None]
                x = tl.load(pre_base + row * sphw + pre_off3, mask=tail)
                tl.store(out_base + row * sohw + out_off3, _relu_grad(x, g_mid), mask=tail)


def _blocks(H: int, W: int, D: int, itemsize: int):
    """(BLOCK_R, BLOCK_W, BLOCK_D): a program's tile is BLOCK_R rows x BLOCK_W columns x BLOCK_D
    channels, at most 4 KB (1024 fp32 slots, 2048 of 2 bytes). 32 channels (a 128-byte line of fp32,
    two 32-byte sectors of bf16) give P * D / 32 one-warp programs: 1536 at ImageNet-LT's 192 pairs
    and D = 256, all resident at once (at most 127 registers there: 16 per SM fit). What all of them
    have in flight together, P * D * BLOCK_R * BLOCK_W * itemsize, does not depend on BLOCK_D, so
    2-byte inputs take twice the rows rather than 64 channels (which would halve the warps that hide
    the latency). ImageNet-LT's 14 x 14 maps: 2 rows (fp32; 4 of bf16) x 16 columns (14 live) x 32
    channels, 3.5 KB a group, the edge rows with the first. A row fills at most half the tile, else
    the columns come in chunks of a quarter tile (8 fp32 columns, 16 of 2 bytes) in half tiles: a
    program walking several chunks holds more (the middle chunks' sums). A channel block past D
    takes a quarter tile: its mask can make the accesses scalar (at D = 20 or 40, one load and one
    address per element). Past 65535 blocks of 32 channels (CUDA's grid limit) the blocks take 128,
    so the size limit stays the documented one (docs/ops-contract.md)."""
    bd = pow2(D, hi=32)
    if (D + bd - 1) // bd > 65535:
        bd = pow2(D, hi=128)
    slots = 4096 // itemsize
    if D % bd:
        slots //= 4
    bw = pow2(W)
    if bw > slots // (2 * bd):
        slots //= 2
        bw = max(1, slots // (2 * bd))
    br = max(1, min(slots // (bw * bd), pow2(max(H - 2, 1))))
    return br, bw, bd


def flat_hw_stride(t: torch.Tensor) -> int | None:
    """The stride of position hw = h*W + w of a (P, H, W, D) tensor when (H, W) is one flat axis, else None."""
    _, H, W, _ = t.shape
    if W == 1:
        return t.stride(1)
    if H == 1 or t.stride(1) == W * t.stride(2):
        return t.stride(2)
    return None


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t if flat_hw_stride(t) is not None else t.contiguous()


def relu_tap_window_means_forward(pre: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
    """S (P, D, 3, 3) contiguous in ``acc`` from pre (P, H, W, D), any strides."""
    pre = _flat(pre)
    P, H, W, D = pre.shape
    br, bw, bd = _blocks(H, W, D, pre.element_size())
    g = grid("relu_tap_window_means", ("pre.shape[0] (P)", P, 1), ("pre.shape[3] (D)", D, bd))
    check_extent("relu_tap_window_means", "H * W of pre", H * W)
    out = new_empty((P, D, 3, 3), acc, pre.device)
    launch(_relu_tap_window_means_fwd_kernel, g)(
        pre, out, pre.stride(0), flat_hw_stride(pre), pre.stride(3), H=H, W=W, D=D, BLOCK_R=br, BLOCK_W=bw, BLOCK_D=bd,
        num_warps=1)
    return out


def relu_tap_window_means_backward(pre: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """grad_pre (P, H, W, D) in pre's dtype (and layout, when its (H, W) is one flat axis)."""
    pre = _flat(pre)
    P, H, W, D = pre.shape
    br, bw, bd = _blocks(H, W, D, pre.element_size())
    g = grid("relu_tap_window_means's backward", ("pre.shape[0] (P)", P, 1), ("pre.shape[3] (D)", D, bd))
    check_extent("relu_tap_window_means's backward", "H * W of pre", H * W)
    out = new_empty_like(pre)
    launch(_relu_tap_window_means_bwd_kernel, g)(
        pre, grad, out, pre.stride(0), flat_hw_stride(pre), pre.stride(3), *grad.stride(),
        out.stride(0), flat_hw_stride(out), out.stride(3), H=H, W=W, D=D, BLOCK_R=br, BLOCK_W=bw, BLOCK_D=bd,
        num_warps=1)
    return out


__all__ = ["relu_tap_window_means_forward", "relu_tap_window_means_backward"]
