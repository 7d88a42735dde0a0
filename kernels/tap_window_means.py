"""The contrastive module's pooled 3x3 convolution (Eq. 2), reduced to nine window means.

Average pooling after a 3x3, padding-1 convolution is linear, so
    mean_{h,w} conv3x3(a)[p, e] = sum_{d,i,j} W3[e, d, i, j] S[p, d, i, j] + b3[e],
    S[p, d, i, j] = (1/HW) sum_{h in R_i, w in C_j} a[p, h, w, d],
where tap row i reads input rows R_0 = [0, H-2], R_1 = [0, H-1], R_2 = [1, H-1] (likewise C_j for
columns) and a = relu(pre) is the 1x1 convolution's activation, channels-last (P, H, W, D). S has
the convolution weight's (D, 3, 3) layout per sample, so the pooled output is one matrix product
with the weight as it is stored. These kernels compute S straight from ``pre`` (the ReLU on the
fly: a is never stored) and, backward,
    grad_pre[p, h, w, d] = [pre > 0] * (1/HW) sum_{i: h in R_i} sum_{j: w in C_j} grad_S[p, d, i, j].
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import check_extent, grid, launch, new_empty, new_empty_like, pow2


@triton.jit
def _taps(hw, H: tl.constexpr, W: tl.constexpr):
    """Masks of the tap rows 0 and 2 and tap columns 0 and 2 that read flat position hw (tap row
    and column 1 read every position)."""
    h = hw // W
    w = hw - h * W
    return h <= H - 2, h >= 1, w <= W - 2, w >= 1


@triton.jit
def _relu_tap_window_means_fwd_kernel(
    pre_ptr, out_ptr, spp, sphw, spd,
    H: tl.constexpr, W: tl.constexpr, D: tl.constexpr, BLOCK_HW: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Program (p, db): S[p, d, :, :] for the channels d of its block.

    Shapes: pre (P, H, W, D) with (H, W) one flat axis (stride sphw), any other strides
    (channels-last contiguous gives vector loads along d); S (P, D, 3, 3) contiguous in the acc
    dtype (that of the output buffer). Bytes: reads P*HW*D, writes 9*P*D.
    """
    HW: tl.constexpr = H * W
    p = tl.program_id(0).to(tl.int64)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = offs_d < D
    acc_ty = out_ptr.dtype.element_ty
    s00 = tl.zeros([BLOCK_D], acc_ty)
    s01 = tl.zeros([BLOCK_D], acc_ty)
    s02 = tl.zeros([BLOCK_D], acc_ty)
    s10 = tl.zeros([BLOCK_D], acc_ty)
    s11 = tl.zeros([BLOCK_D], acc_ty)
    s12 = tl.zeros([BLOCK_D], acc_ty)
    s20 = tl.zeros([BLOCK_D], acc_ty)
    s21 = tl.zeros([BLOCK_D], acc_ty)
    s22 = tl.zeros([BLOCK_D], acc_ty)
    d_off = offs_d.to(tl.int64) * spd     # int64: a channel stride can span the whole tensor
    for start in range(0, HW, BLOCK_HW):
        hw = start + tl.arange(0, BLOCK_HW)
        off = p * spp + hw.to(tl.int64)[:, None] * sphw + d_off[None, :]
        a = tl.load(pre_ptr + off, mask=(hw < HW)[:, None] & dmask[None, :], other=0.0).to(acc_ty)
        a = tl.maximum(a, 0.0, propagate_nan=tl.PropagateNan.ALL)   # ReLU keeps NaN, as torch's does
        # (masked lanes load 0: they add nothing below)
        r0, r2, c0, c2 = _taps(hw, H, W)
        s00 += tl.sum(tl.where((r0 & c0)[:, None], a, 0.0), axis=0)
        s01 += tl.sum(tl.where(r0[:, None], a, 0.0), axis=0)
        s02 += tl.sum(tl.where((r0 & c2)[:, None], a, 0.0), axis=0)
        s10 += tl.sum(tl.where(c0[:, None], a, 0.0), axis=0)
        s11 += tl.sum(a, axis=0)
        s12 += tl.sum(tl.where(c2[:, None], a, 0.0), axis=0)
        s20 += tl.sum(tl.where((r2 & c0)[:, None], a, 0.0), axis=0)
        s21 += tl.sum(tl.where(r2[:, None], a, 0.0), axis=0)
        s22 += tl.sum(tl.where((r2 & c2)[:, None], a, 0.0), axis=0)
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
def _relu_tap_window_means_bwd_kernel(
    pre_ptr, gs_ptr, gpre_ptr, spp, sphw, spd, sgp, sgd, sgi, sgj, sop, sohw, sod,
    H: tl.constexpr, W: tl.constexpr, D: tl.constexpr, BLOCK_HW: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Program (p, db): grad_pre[p, :, :, d] for the channels d of its block (module docstring).

    Shapes: pre and grad_pre (P, H, W, D) with (H, W) one flat axis, any other strides; grad_S
    (P, D, 3, 3) any strides. Bytes: reads P*HW*D of pre and 9*P*D of grad_S, writes P*HW*D.
    """
    HW: tl.constexpr = H * W
    p = tl.program_id(0).to(tl.int64)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = offs_d < D
    acc_ty = gs_ptr.dtype.element_ty         # grad_S comes in S's (acc) dtype
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
    for start in range(0, HW, BLOCK_HW):
        hw = start + tl.arange(0, BLOCK_HW)
        m = (hw < HW)[:, None] & dmask[None, :]
        r0, r2, c0, c2 = _taps(hw, H, W)
        # sum over the tap rows that read h of (sum over the tap columns that read w)
        row0 = tl.where(c0[:, None], g00[None, :], 0.0) + g01[None, :] + tl.where(c2[:, None], g02[None, :], 0.0)
        row1 = tl.where(c0[:, None], g10[None, :], 0.0) + g11[None, :] + tl.where(c2[:, None], g12[None, :], 0.0)
        row2 = tl.where(c0[:, None], g20[None, :], 0.0) + g21[None, :] + tl.where(c2[:, None], g22[None, :], 0.0)
        gsum = tl.where(r0[:, None], row0, 0.0) + row1 + tl.where(r2[:, None], row2, 0.0)
        hw64 = hw.to(tl.int64)[:, None]
        a = tl.load(pre_ptr + p * spp + hw64 * sphw + pre_d[None, :], mask=m, other=0.0)
        grad = tl.where(a > 0, gsum / HW, 0.0)
        tl.store(gpre_ptr + p * sop + hw64 * sohw + out_d[None, :], grad.to(gpre_ptr.dtype.element_ty),
                 mask=m)


def _blocks(HW: int, D: int):
    """(BLOCK_HW, BLOCK_D): 32 channels (a 128-byte line of fp32 per position) by up to 32 positions.
    Narrow channel blocks give P * D / 32 programs (1536 at ImageNet-LT's 192 pairs and D = 256; 128
    channels gave 384, under three per SM), all resident at once; what one iteration of all of them
    loads together, P * D * BLOCK_HW * itemsize, does not depend on BLOCK_D: about 48 KB per SM in
    fp32 there (24 KB in bf16; 64 positions would double it, but the forward then needs 255
    registers). Each program is one warp: in the forward it holds whole columns of its tile, so its
    nine sums over positions stay inside the warp (with four warps, split along positions, each of
    them crossed warps through shared memory, two barriers each, every iteration), and one-warp
    programs of either kernel all fit on the SMs at once (four-warp ones of the backward: 4 per SM in
    bf16, at 113 registers). Past 65535 blocks of 32 (CUDA's grid limit) the blocks take 128
    channels, so the size limit stays the documented one (docs/ops-contract.md)."""
    bd = pow2(D, hi=32)
    if (D + bd - 1) // bd > 65535:
        bd = pow2(D, hi=128)
    return pow2(HW, hi=max(1, 1024 // bd)), bd


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
    bhw, bd = _blocks(H * W, D)
    g = grid("relu_tap_window_means", ("pre.shape[0] (P)", P, 1), ("pre.shape[3] (D)", D, bd))
    check_extent("relu_tap_window_means", "H * W of pre", H * W)
    out = new_empty((P, D, 3, 3), acc, pre.device)
    launch(_relu_tap_window_means_fwd_kernel, g)(
        pre, out, pre.stride(0), flat_hw_stride(pre), pre.stride(3), H=H, W=W, D=D, BLOCK_HW=bhw, BLOCK_D=bd,
        num_warps=1)
    return out


def relu_tap_window_means_backward(pre: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """grad_pre (P, H, W, D) in pre's dtype (and layout, when its (H, W) is one flat axis)."""
    pre = _flat(pre)
    P, H, W, D = pre.shape
    bhw, bd = _blocks(H * W, D)
    g = grid("relu_tap_window_means's backward", ("pre.shape[0] (P)", P, 1), ("pre.shape[3] (D)", D, bd))
    check_extent("relu_tap_window_means's backward", "H * W of pre", H * W)
    out = new_empty_like(pre)
    launch(_relu_tap_window_means_bwd_kernel, g)(
        pre, grad, out, pre.stride(0), flat_hw_stride(pre), pre.stride(3), *grad.stride(),
        out.stride(0), flat_hw_stride(out), out.stride(3), H=H, W=W, D=D, BLOCK_HW=bhw, BLOCK_D=bd, num_warps=1)
    return out


__all__ = ["relu_tap_window_means_forward", "relu_tap_window_means_backward"]
