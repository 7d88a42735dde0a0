"""Helpers shared by the kernel launchers: layouts, block sizes, output allocation, launching.

Shapes are compile-time constants. RSG's feature maps have one fixed (C, H, W) per model, so the
kernels take C, H, W (and K) as ``tl.constexpr``: offsets such as ``c * HW + hw`` then carry their
divisibility (HW = 196 is a multiple of 4), which is what lets the compiler emit 16-byte vector
loads at sizes that are not multiples of 16 (a runtime stride of 196 would give scalar loads).
Only the batch stride and the strides of a general (non-dense) layout stay runtime arguments.

Layouts (``layout_code``): 2 = NCHW-dense sample (offset c*HW + hw), 1 = channels_last-dense
(offset hw*C + c), 0 = anything else (c*sc + h*sh + w*sw, runtime strides). The batch stride is
free in all three, so slices along N stay on the fast paths.

Every buffer a launcher returns is allocated through ``new_empty``; inside ``poisoned_outputs()``
it is NaN-filled first, so a test that finds no NaN proves the kernels wrote every element.
Launches go through ``launch`` (``torch.library.wrap_triton``), so that ``torch.compile`` traces
them when they run inside one of rsg_fast's ``triton_op``s.
"""
from __future__ import annotations

import contextlib
import functools

import torch
import triton
import triton.language as tl

from rsg_fast.backend import triton_interpret
from rsg_fast.ops._common import acc_dtype  # noqa: F401  one rule for both backends

from . import _interpreter_compat

if triton_interpret():      # the kernels below run in the interpreter: mend triton <= 3.6's under NumPy >= 2.4
    _interpreter_compat.install()

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


def new_empty(shape, dtype: torch.dtype, device) -> torch.Tensor:
    """``torch.empty`` (contiguous), NaN-filled inside ``poisoned_outputs()`` (integer buffers get -1)."""
    out = torch.empty(tuple(shape), dtype=dtype, device=device)
    if _POISON:
        out.fill_(float("nan") if dtype.is_floating_point else -1)
    return out


def new_empty_like(t: torch.Tensor) -> torch.Tensor:
    """``torch.empty_like`` (keeps channels_last and other dense layouts), NaN-filled when poisoning."""
    out = torch.empty_like(t)
    if _POISON:
        out.fill_(float("nan"))
    return out


def launch(kernel, programs):
    """``kernel[programs]`` through ``torch.library.wrap_triton`` (traceable by torch.compile), launched on
    the GPU of its first tensor argument. Under the Triton interpreter the kernel is no JITFunction
    (nothing to trace; older torch refuses to wrap it)."""
    if isinstance(kernel, triton.runtime.jit.JITFunction):
        kernel = torch.library.wrap_triton(kernel)
    return functools.partial(_on_tensors_device, kernel[programs])


def _on_tensors_device(run, *args, **kwargs):
    """``run(*args, **kwargs)`` with the first tensor argument's GPU current. Triton launches on the
    current device and its stream, and a custom op sets no device guard: tensors on cuda:1 while
    cuda:0 is current would fail ("cannot be accessed from Triton") or, with peer access, run on
    cuda:0's stream, unordered with the cuda:1 work that made them."""
    device = next((a.device for a in args if isinstance(a, torch.Tensor)), None)
    # CUDA not initialised: no real CUDA tensor exists (fake ones, while torch.compile or torch.export
    # trace on a machine without a GPU, must not start CUDA by asking for the current device)
    if (device is None or device.type != "cuda" or device.index is None or not torch.cuda.is_initialized()
            or device.index == torch.cuda.current_device()):
        return run(*args, **kwargs)
    with torch.cuda.device(device.index):
        return run(*args, **kwargs)


MAX_GRID = (2**31 - 1, 65535, 65535)    # CUDA's launch limits along grid axes x, y, z


def grid(op: str, *axes) -> tuple:
    """The launch grid for ``axes``, one ``(name, size, block)`` per axis: ``cdiv(size, block)``
    programs. Where an axis would pass CUDA's limit (a launch then fails with "invalid argument"),
    a ValueError names the argument and its largest size. Symbolic sizes (torch.compile's
    data-dependent pair count) are not checked: only the batch axis takes them, up to 2**31 - 1."""
    out = []
    for (name, size, block), most in zip(axes, MAX_GRID):
        n = size if block == 1 else (size + block - 1) // block   # not triton.cdiv: 2.5 us a call on the host
        if isinstance(size, int) and n > most:
            raise ValueError(f"{op} with backend='triton' takes {name} up to {most * block} ({most} programs of "
                             f"{block} along one CUDA grid axis), got {size}; backend='torch' has no such limit")
        out.append(n)
    return tuple(out)


MAX_EXTENT = 2**30    # what a kernel loop may walk (H * W positions, or C channels)


def check_extent(op: str, name: str, size) -> None:
    """ValueError naming the argument where a kernel would loop over ``size`` elements with its
    32-bit counter: Triton drops a loop whose constant bound passes 2**31 (nothing is computed), and
    one within a block of it steps past 2**31. 2**30 leaves room for every block size."""
    if isinstance(size, int) and size > MAX_EXTENT:
        raise ValueError(f"{op} with backend='triton' takes {name} up to {MAX_EXTENT} (its kernels loop over it "
                         f"with 32-bit counters), got {size}; backend='torch' has no such limit")


def pow2(n: int, lo: int = 1, hi: int | None = None) -> int:
    """Next power of two of ``n``, clamped to ``[lo, hi]`` (``lo`` and ``hi`` powers of two).

    A symbolic size (torch.compile's dynamic batch) is bucketed by comparisons, which guard on the
    range of sizes that share the block (e.g. 64 < N <= 128): ``int(n)`` would specialise the graph
    on N itself, one compile per batch size even with ``dynamic=True``."""
    if not isinstance(n, int):
        b = max(lo, 1)
        while (hi is None or b < hi) and n > b:
            b *= 2
        return b
    b = max(lo, 1 << (max(n, 1) - 1).bit_length())   # triton.next_power_of_2 costs 2.5 us a call
    return min(b, hi) if hi is not None else b


def spatial_blocks(C: int, HW: int, tile: int = 4096, max_hw: int = 256):
    """(BLOCK_C, BLOCK_HW) for kernels that walk (channel block, spatial block) tiles of ``tile``
    elements; BLOCK_HW covers the whole map when it is small."""
    bhw = pow2(HW, lo=16, hi=max_hw)
    return pow2(C, hi=max(1, tile // bhw)), bhw


def strides4(t: torch.Tensor):
    """(stride_n, stride_c, stride_h, stride_w) of a 4-D tensor, in elements."""
    return tuple(int(s) for s in t.stride())


def layout_code(t: torch.Tensor) -> int:
    """2: every sample is one NCHW-dense run; 1: every sample is channels_last-dense; 0: general.
    Dimensions of size 1 may carry any stride (as in ``Tensor.is_contiguous``)."""
    _, C, H, W = t.shape
    s = t.stride()

    def ok(dims):  # (size, stride, expected) for each dimension that matters
        return all(size == 1 or stride == want for size, stride, want in dims)

    if ok(((W, s[3], 1), (H, s[2], W), (C, s[1], H * W))):
        return 2
    if ok(((C, s[1], 1), (W, s[3], C), (H, s[2], W * C))):
        return 1
    return 0


@triton.jit
def sample_offset(c, hw, sc, sh, sw, C: tl.constexpr, H: tl.constexpr, W: tl.constexpr,
                  LAYOUT: tl.constexpr):
    """int64 offset of element (c, hw = h*W + w) inside one sample (see ``layout_code``).
    ``c`` and ``hw`` broadcast against each other."""
    if LAYOUT == 2:
        off = c.to(tl.int64) * (H * W) + hw
    elif LAYOUT == 1:
        off = hw.to(tl.int64) * C + c
    else:
        h = hw // W
        w = hw - h * W
        off = c.to(tl.int64) * sc + h.to(tl.int64) * sh + w.to(tl.int64) * sw
    return off

