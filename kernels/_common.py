"""Helpers shared by the kernel launchers: dtypes, block sizes, output allocation.

Every buffer a launcher returns (outputs, per-program partials, gradients) is allocated through
``new_empty`` / ``new_empty_like``. Inside ``poisoned_outputs()`` those buffers are NaN-filled first,
so a test that finds no NaN proves the kernels wrote every element.
"""
from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

from rsg_fast.ops import acc_dtype  # noqa: F401  one rule for both backends; the launchers import it here

_POISON = False


@contextlib.contextmanager
def poisoned_outputs():
    """Test hook: while active, every buffer a launcher allocates starts as NaN instead of garbage."""
    global _POISON
    previous, _POISON = _POISON, True
    try:
        yield
    finally:
        _POISON = previous


def new_empty(shape, dtype: torch.dtype, device, stride=None) -> torch.Tensor:
    """``torch.empty`` (contiguous, or ``torch.empty_strided`` when ``stride`` is given), NaN-filled
    inside ``poisoned_outputs()``."""
    if stride is None:
        out = torch.empty(tuple(shape), dtype=dtype, device=device)
    else:
        out = torch.empty_strided(tuple(shape), tuple(stride), dtype=dtype, device=device)
    if _POISON:
        out.fill_(float("nan"))
    return out


def new_empty_like(t: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``torch.empty_like`` keeping ``t``'s memory format (channels_last stays channels_last)."""
    out = torch.empty_like(t, dtype=dtype)
    if _POISON:
        out.fill_(float("nan"))
    return out


def tl_acc(dtype: torch.dtype):
    """The ``tl`` dtype matching an accumulation dtype."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def pow2(n: int, lo: int = 1, hi: int | None = None) -> int:
    """Next power of two of ``n``, clamped to ``[lo, hi]``."""
    b = max(lo, triton.next_power_of_2(max(int(n), 1)))
    return min(b, hi) if hi is not None else b


def warps_for(tile_elems: int) -> int:
    """num_warps from the number of elements one program holds in registers per step."""
    if tile_elems <= 256:
        return 1
    if tile_elems <= 1024:
        return 2
    if tile_elems <= 4096:
        return 4
    return 8


def strides4(t: torch.Tensor):
    """(stride_n, stride_c, stride_h, stride_w) of a 4-D tensor, in elements."""
    return tuple(int(s) for s in t.stride())


def csr_by_index(index: torch.Tensor, n_rows: int):
    """Group positions m by ``index[m]``: returns ``(perm, offsets)`` with the m's of row n in
    ``perm[offsets[n]:offsets[n+1]]``, in increasing m (stable sort), so sums are deterministic."""
    # sort + searchsorted rather than bincount + cumsum: no atomics, and allowed under
    # torch.use_deterministic_algorithms(True)
    sorted_index, perm = torch.sort(index, stable=True)
    offsets = torch.searchsorted(sorted_index, torch.arange(n_rows + 1, dtype=index.dtype, device=index.device))
    return perm, offsets


def flat_hw(t: torch.Tensor) -> bool:
    """Whether (h, w) of a 4-D tensor is one flat axis: offset(h*W + w) = (h*W + w) * stride_w.
    True for contiguous and channels_last maps; kernels then skip the // and % and, when
    stride_w == 1 (specialised by Triton), see the contiguity and vectorise."""
    return t.shape[2] == 1 or t.stride(2) == t.shape[3] * t.stride(3)


@triton.jit
def hw_offset(hw, W, sh, sw, FLAT: tl.constexpr):
    """int64 element offset of flat spatial positions ``hw`` (= h*W + w)."""
    if FLAT:
        off = hw.to(tl.int64) * sw
    else:
        h = hw // W
        w = hw - h * W
        off = h.to(tl.int64) * sh + w.to(tl.int64) * sw
    return off


def layout_code(t: torch.Tensor) -> int:
    """2: each sample is one linear run, offset(c, hw) = (c*HW + hw) * stride_w (NCHW-contiguous);
    1: (h, w) flat (channels_last); 0: general strides."""
    if not flat_hw(t):
        return 0
    C, HW = t.shape[1], t.shape[2] * t.shape[3]
    return 2 if (C == 1 or t.stride(1) == HW * t.stride(3)) else 1


@triton.jit
def chw_offset(c, hw, p, W, sc, sh, sw, LAYOUT: tl.constexpr):
    """int64 offset inside one sample of element (c, hw); ``p`` = c*HW + hw (used when LAYOUT == 2)."""
    if LAYOUT == 2:
        off = p * sw
    else:
        off = c * sc + hw_offset(hw, W, sh, sw, LAYOUT == 1)
    return off
