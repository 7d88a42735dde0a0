"""Backend selection for the fused ops: ``"auto"``, ``"torch"`` or ``"triton"``.

Rules (``resolve_backend``), in order:

1. ``backend=None`` means ``"auto"``. Any other value outside ``BACKEND_CHOICES`` is a ``ValueError``
   naming the ``backend`` argument and the allowed values.
2. An explicit ``"torch"`` or ``"triton"`` always wins. Only ``"auto"`` looks at the environment
   variable ``RSG_FAST_BACKEND`` (``torch`` or ``triton``; empty or ``auto`` = unset); a bad value
   there is a ``ValueError`` naming the variable.
3. ``"auto"`` (with no override) picks ``"triton"`` for CUDA tensors when Triton imports, else ``"torch"``.
4. ``"triton"`` (asked for, or from the environment) needs Triton to import, and on a non-CUDA device
   it needs the Triton interpreter (``TRITON_INTERPRET=1`` set before Triton was first imported);
   otherwise a ``ValueError`` says what to change.
"""
from __future__ import annotations

import os

import torch

BACKEND_CHOICES = ("auto", "torch", "triton")
ENV_VAR = "RSG_FAST_BACKEND"

__all__ = ["BACKEND_CHOICES", "ENV_VAR", "check_backend", "resolve_backend", "triton_available", "triton_interpret"]


_TRITON_AVAILABLE: list[bool] = []     # the answer, once known


# A constant to torch.compile: dynamo calls it while tracing instead of tracing into it (it would warn
# about a functools cache, and trace the imports, on every compile of RSG on CUDA)
@torch.compiler.assume_constant_result
def triton_available() -> bool:
    """Whether ``triton`` and ``triton.language`` import (checked once per process)."""
    if not _TRITON_AVAILABLE:
        try:
            import triton  # noqa: F401
            import triton.language  # noqa: F401
        except Exception:  # ImportError, or a broken install raising something else
            _TRITON_AVAILABLE.append(False)
        else:
            _TRITON_AVAILABLE.append(True)
    return _TRITON_AVAILABLE[0]


def triton_interpret() -> bool:
    """Whether the Triton interpreter is on (``TRITON_INTERPRET`` set to a value Triton reads as true)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "y", "on")


def _env_override() -> str | None:
    value = os.environ.get(ENV_VAR, "").strip().lower()
    if value in ("", "auto"):
        return None
    if value not in ("torch", "triton"):
        raise ValueError(f"environment variable {ENV_VAR} must be 'torch', 'triton', 'auto' or unset, "
                         f"got {os.environ[ENV_VAR]!r}")
    return value


def check_backend(backend: str | None) -> str:
    """The ``backend`` argument as one of ``BACKEND_CHOICES`` (None means ``"auto"``), else a ``ValueError``."""
    if backend is None:
        return "auto"
    if not isinstance(backend, str) or backend not in BACKEND_CHOICES:
        raise ValueError(f"backend must be one of {BACKEND_CHOICES} (or None for 'auto'), got {backend!r}")
    return backend


def resolve_backend(backend: str | None, device: torch.device | str) -> str:
    """Return ``"torch"`` or ``"triton"`` for tensors on ``device`` (see the module docstring)."""
    backend = check_backend(backend)
    device = torch.device(device)
    source = "backend argument"
    if backend == "auto":
        override = _env_override()
        if override is None:
            return "triton" if device.type == "cuda" and triton_available() else "torch"
        backend, source = override, f"environment variable {ENV_VAR}"
    if backend == "torch":
        return "torch"
    if not triton_available():
        raise ValueError(f"backend='triton' (from the {source}) but triton cannot be imported; "
                         f"install triton or use backend='torch'")
    if device.type != "cuda" and not triton_interpret():
        raise ValueError(f"backend='triton' (from the {source}) needs CUDA tensors, got tensors on "
                         f"{device}; use backend='torch' or 'auto', or set TRITON_INTERPRET=1 before "
                         f"triton is imported to run the kernels in the (slow) Triton interpreter")
    return "triton"
