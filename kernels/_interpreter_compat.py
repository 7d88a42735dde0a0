"""Keep the Triton interpreter (``TRITON_INTERPRET=1``, the CPU path of the kernels) working with NumPy >= 2.4.

The interpreter holds a kernel's runtime scalar arguments as one-element NumPy arrays, and up to
Triton 3.6 (torch 2.9 to 2.11) turns one into a Python int with ``int(array)``. NumPy 2.4 made that
an error ("only 0-dimensional arrays can be converted to Python scalars"; a DeprecationWarning since
1.25), so every kernel whose loop bound is a runtime value (``range(0, n, CHUNK)``) fails there:
the backward of every fused op, through the CSR kernel. Triton 3.8 converts ``array.squeeze()``.

``install()`` checks the interpreter's own conversion on a one-element array and, only where that
fails or warns, makes it convert the array's single element. The kernels call it only when they
are defined under ``TRITON_INTERPRET=1`` (on a GPU the interpreter is not even imported), and it
leaves a Triton that converts correctly as it is.
"""
from __future__ import annotations

import inspect
import types
import warnings

import numpy as np


def _as_int(self) -> int:
    return int(self.handle.data.item())     # like int(array) was: an error unless one element


def _index_is_broken(patch_lang_tensor, scope_class) -> bool:
    """Whether the interpreter's ``tensor.__index__`` fails (or warns) on a one-element array."""
    probe = type("Probe", (), {})
    scope = scope_class() if scope_class is not None else None
    try:
        patch_lang_tensor(probe, scope) if scope is not None else patch_lang_tensor(probe)
        value = probe.__new__(probe)
        value.handle = types.SimpleNamespace(data=np.array([3], dtype=np.int32))
        with warnings.catch_warnings():
            warnings.simplefilter("error", DeprecationWarning)
            return probe.__index__(value) != 3
    except (TypeError, DeprecationWarning):
        return True
    finally:
        if scope is not None:
            scope.restore()


def install() -> bool:
    """Fix the interpreter's int conversion where it is broken; True when it was patched (or already was)."""
    try:
        from triton.runtime import interpreter
        original = interpreter._patch_lang_tensor
    except (ImportError, AttributeError):   # another interpreter layout: nothing this knows to fix
        return False
    if getattr(original, "rsg_fast_fixed", False):
        return True
    # Triton 3.6+ patches through a scope that restores everything after each launch; 3.5 sets the
    # attributes for good
    params = list(inspect.signature(original).parameters)
    scope_class = getattr(interpreter, "_LangPatchScope", None)
    if params != (["tensor", "scope"] if scope_class is not None else ["tensor"]):
        return False
    try:
        if not _index_is_broken(original, scope_class):
            return False
    except Exception:  # noqa: BLE001  a layout this probe does not understand: leave it alone
        return False

    if scope_class is not None:
        def patch_lang_tensor(tensor, scope):
            original(tensor, scope)
            scope.set_attr(tensor, "__index__", _as_int)   # restored with the rest when the launch ends
    else:
        def patch_lang_tensor(tensor):
            original(tensor)
            tensor.__index__ = _as_int

    patch_lang_tensor.rsg_fast_fixed = True
    interpreter._patch_lang_tensor = patch_lang_tensor
    return True
