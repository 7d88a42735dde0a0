"""What every fused op shares: dtypes, argument checks, and how an op is registered.

Registration (``define``): each op is a ``torch.library.triton_op`` in the ``rsg_fast`` namespace
taking a ``backend`` string ("torch" or "triton", resolved before the call). Its body runs either
the PyTorch path or the Triton launchers of ``rsg_fast.kernels``, which launch through
``torch.library.wrap_triton``; so in eager mode it is an ordinary op, and under ``torch.compile``
the compiler traces into it (the PyTorch path's ops, or the Triton kernels themselves) instead of
treating it as a black box. The body doubles as the op's fake (meta) implementation, so it uses
only shapes, strides and dtypes on the host: no ``.item()``, no branches on values.

Autocast: the ops pick their own accumulation dtype (below) and must see their inputs unchanged,
so ``define`` registers an autocast rule that switches autocast off and casts nothing (PyTorch's
``register_autocast`` would cast every input to one dtype: a full copy of bf16 maps to fp32).
"""
from __future__ import annotations

import functools
import hashlib
import importlib
import math
import os
import pkgutil

import torch

EPS = 1e-12      # F.normalize's eps; the kernels build it in the accumulation dtype (fp64 stays exact)
GROUPINGS = ("location", "rows")
LIB = torch.library.Library("rsg_fast", "FRAGMENT")


def acc_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """Accumulation dtype: float64 if any input is float64, else float32 (fp16/bf16/fp32)."""
    return torch.float64 if torch.float64 in dtypes else torch.float32


# Above this size a CPU zero tensor for a scatter comes from calloc (``zeros_for_scatter``).
CALLOC_BYTES = 1 << 24
_NUMPY_DTYPES = {torch.float32: "float32", torch.float64: "float64"}


def zeros_for_scatter(shape, dtype: torch.dtype, like: torch.Tensor) -> torch.Tensor:
    """A zero tensor on ``like``'s device that a scatter (``index_add_``) then writes a few rows of,
    e.g. a class-parameter gradient (L, K, C) of which a batch touches at most N classes.

    torch.zeros writes every byte: 0.1-0.2 s per 500 MB (the iNat centres) on a 2-core CPU, most of
    the gradient's cost. A large CPU tensor in eager mode is taken from numpy's calloc instead, whose
    pages the OS maps as zero on first touch: an ordinary dense, contiguous, writable tensor, with no
    pass over it. Elsewhere (CUDA, torch.compile, fake tensors, other dtypes) torch.zeros."""
    np_dtype = _NUMPY_DTYPES.get(dtype)
    if (np_dtype is not None and like.device.type == "cpu" and type(like) is torch.Tensor
            and not torch.compiler.is_compiling() and math.prod(shape) * dtype.itemsize >= CALLOC_BYTES):
        import numpy as np

        return torch.from_numpy(np.zeros(tuple(shape), dtype=np_dtype))
    return torch.zeros(shape, dtype=dtype, device=like.device)


def kernels(name: str):
    """The Triton launchers of one op (imported on first use: importing them imports triton)."""
    return importlib.import_module(f"rsg_fast.kernels.{name}")


def kernel_modules() -> list[str]:
    """The modules of ``rsg_fast.kernels`` that hold kernels (``_``-prefixed ones are helpers)."""
    from rsg_fast import kernels as kernel_package

    return sorted(m.name for m in pkgutil.iter_modules(kernel_package.__path__) if not m.name.startswith("_"))


class _SourceDigest:
    """Stands in for a kernel in torch's registry: what AOT autograd's cache reads of one (``src``, and
    ``fn`` for the kernels it calls: none) carries a digest of the op bodies and launchers."""

    def __init__(self, digest: str):
        self.src = f"# rsg_fast ops and launchers, sha256 {digest}"
        self.fn = _source_digest
        self.__name__ = "_source_digest"


def _source_digest():
    """(calls nothing: the digest's stand-in kernel has no dependencies)"""


class _WhatEveryOpRuns(list):
    """The entry of every rsg_fast op in ``torch._library.triton.triton_ops_to_kernels``, filled when
    first read, which is when torch.compile keys a graph holding one of the ops.

    A compiled graph inlines a ``triton_op``'s body (its PyTorch path, or its launchers and kernels),
    but AOT autograd's cache keys the graph only on the kernels torch found by reading the body for
    ``wrap_triton(kernel)``; ours launch through ``kernels(...)`` and ``launch``, out of its sight, so the
    key held nothing of the op, and after an edit or an upgrade a cached graph still ran the old code.
    Every op gets every kernel (a graph holding a forward op runs its backward's kernels too) and a
    digest of the files of ``rsg_fast.ops`` and ``rsg_fast.kernels``. Read only where triton imports
    (torch keys on kernels only then); under the interpreter the kernels are no JITFunctions and the
    digest stands alone."""

    def _filled(self):
        if not list.__len__(self):
            list.extend(self, _every_kernel_and_digest())
        return self

    def __iter__(self):
        return list.__iter__(self._filled())

    def __len__(self):
        return list.__len__(self._filled())

    def __getitem__(self, i):
        return list.__getitem__(self._filled(), i)


def _every_kernel_and_digest() -> list:
    import triton

    from rsg_fast import kernels as kernel_package

    found = []
    for module_name in kernel_modules():
        module = importlib.import_module(f"rsg_fast.kernels.{module_name}")
        found += [v for v in vars(module).values()
                  if isinstance(v, triton.runtime.jit.JITFunction) and v.__module__ == module.__name__]
    digest = hashlib.sha256()
    for folder in (os.path.dirname(__file__), *kernel_package.__path__):
        for file_name in sorted(f for f in os.listdir(folder) if f.endswith(".py")):
            with open(os.path.join(folder, file_name), "rb") as f:
                digest.update(file_name.encode() + b"\0" + f.read())
    return [*found, _SourceDigest(digest.hexdigest())]


_WHAT_EVERY_OP_RUNS = _WhatEveryOpRuns()


# ----------------------------------------------------------------------------- registration

def define(name: str, mutates_args=()):
    """Decorator: register ``fn`` as the ``rsg_fast::name`` triton_op with a pass-through autocast rule."""
    def wrap(fn):
        op = torch.library.triton_op(f"rsg_fast::{name}", fn, mutates_args=mutates_args)
        register_passthrough_autocast(name)
        registry = getattr(getattr(torch._library, "triton", None), "triton_ops_to_kernels", None)
        if registry is not None:      # (a torch that does not key its caches on kernels has none)
            registry[f"rsg_fast::{name}"] = _WHAT_EVERY_OP_RUNS
        return op
    return wrap


def register_passthrough_autocast(name: str) -> None:
    """Under autocast, run ``rsg_fast::name`` on its inputs as given, with autocast off inside."""
    for device_type in ("cpu", "cuda"):
        key = "Autocast" + torch._C._dispatch_key_for_device(device_type)
        LIB.impl(name, functools.partial(_without_autocast, name, key), key, with_keyset=True)


def _without_autocast(name, key, _keyset, *args):
    with torch._C._ExcludeDispatchKeyGuard(torch._C.DispatchKeySet(getattr(torch._C.DispatchKey, key))):
        return getattr(torch.ops.rsg_fast, name).default(*args)


def interpreter_guard(*tensors: torch.Tensor) -> None:
    """The Triton interpreter runs kernels on real CPU memory; it cannot run on fake tensors (the
    op's meta implementation under torch.compile or opcheck). Say so instead of crashing in it."""
    from torch._subclasses.fake_tensor import is_fake

    if any(is_fake(t) for t in tensors if isinstance(t, torch.Tensor)) and tensors[0].device.type != "cuda":
        raise NotImplementedError(
            "backend='triton' on CPU tensors runs the Triton interpreter, which torch.compile and fake "
            "tensors cannot trace; use backend='torch' on the CPU (or CUDA tensors)")


def double_backward(forward, inputs, needs, grads):
    """Backward when the graph of the backward is recorded (``create_graph=True``, e.g. a gradient
    penalty): recompute ``forward(*inputs)`` (plain differentiable PyTorch) and let autograd take
    the vector-Jacobian product, so gradients of any order are exact. The fast backward kernels are
    used whenever no graph is recorded (ordinary training and torch.compile)."""
    with torch.enable_grad():
        outputs = forward(*inputs)
        if not isinstance(outputs, (tuple, list)):
            outputs = (outputs,)
        pairs = [(o, g) for o, g in zip(outputs, grads) if g is not None and o.is_floating_point()]
        wanted = [t for t, need in zip(inputs, needs) if need]
        if not wanted or not pairs:
            return [None] * len(inputs)
        got = iter(torch.autograd.grad([o for o, _ in pairs], wanted, [g for _, g in pairs],
                                       create_graph=True, allow_unused=True))
    return [next(got) if need else None for need in needs]


# ----------------------------------------------------------------------------- argument checks

def check_tensor(name: str, t, ndim: int, *, floating: bool = True) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if floating and not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")


def check_device(ref_name: str, ref: torch.Tensor, name: str, t: torch.Tensor) -> None:
    if t.device != ref.device:
        raise ValueError(f"{name} must be on the same device as {ref_name} ({ref.device}), got {t.device}")


def check_index(name: str, index, length, bound, ref_name: str, ref: torch.Tensor,
                check_values: bool = True) -> torch.Tensor:
    """A 1-D integer index of ``length`` values in [0, bound); returned as contiguous int64.

    ``length=None`` accepts any length (and ``bound`` is unused when ``check_values`` is False).
    The range check costs a pass (a host sync on the CPU, an asynchronous device assert on CUDA);
    callers that built the index in range skip it."""
    if not isinstance(index, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of integers, got {type(index).__name__}")
    if index.dtype.is_floating_point or index.dtype.is_complex or index.dtype == torch.bool:
        # any integer dtype is taken (converted to int64 below): "(int64)" alone read as the only one
        raise TypeError(f"{name} must be an integer tensor (any integer dtype), got dtype {index.dtype}")
    if index.dim() != 1 or (length is not None and index.shape[0] != length):
        want = f"shape ({length},)" if length is not None else "one dimension"
        raise ValueError(f"{name} must have {want}, got shape {tuple(index.shape)}")
    check_device(ref_name, ref, name, index)
    index = index.to(torch.int64).contiguous()  # the kernels index it as a flat array
    if check_values and index.numel():
        if index.device.type == "cuda" or torch.compiler.is_compiling():
            torch._assert_async(((index >= 0) & (index < bound)).all(), f"{name} out of range [0, {bound})")
        elif bool(((index < 0) | (index >= bound)).any()):
            raise ValueError(f"{name} must hold values in [0, {bound}), got min {int(index.min())} "
                             f"and max {int(index.max())}")
    return index
