"""kernels/_interpreter_compat.py: the Triton interpreter's int conversion of runtime scalars.

Triton <= 3.6's interpreter converts a scalar kernel argument (a one-element NumPy array) with
``int(array)``: a DeprecationWarning before NumPy 2.4, a TypeError since, which failed the backward
of every fused op on the CPU (torch 2.11, triton 3.6, numpy 2.5.5; 2026-12-07). Whatever Triton
and NumPy this runs with, these tests give the interpreter that old conversion and check the fix, in
a probe and in a real kernel launch under the interpreter. Triton 3.6+ patches the interpreter's
tensor through a scope that restores it after each launch; 3.5 sets the attributes for good.
"""
from __future__ import annotations

import operator
import os
import types
import warnings

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                                reason="checks the Triton interpreter (TRITON_INTERPRET=1)")

interpreter = pytest.importorskip("triton.runtime.interpreter")

from rsg_fast.kernels import _interpreter_compat as compat  # noqa: E402
from rsg_fast.kernels import csr  # noqa: E402

SCOPED = hasattr(interpreter, "_LangPatchScope")      # triton >= 3.6


def _with_index(patch_lang_tensor, index):
    """``patch_lang_tensor`` (the installed layout) with ``index`` as the tensor's ``__index__``."""
    if SCOPED:
        def patched(tensor, scope):
            patch_lang_tensor(tensor, scope)
            scope.set_attr(tensor, "__index__", index)
    else:
        def patched(tensor):
            patch_lang_tensor(tensor)
            tensor.__index__ = index
    return patched


def _index_of(patch_lang_tensor, data):
    """``operator.index`` of an interpreter tensor holding ``data``, as a kernel's ``range(n)`` takes it."""
    probe = type("Probe", (), {})
    scope = interpreter._LangPatchScope() if SCOPED else None
    patch_lang_tensor(probe, scope) if SCOPED else patch_lang_tensor(probe)
    try:
        value = probe.__new__(probe)
        value.handle = types.SimpleNamespace(data=data)
        return operator.index(value)
    finally:
        if SCOPED:
            scope.restore()


@pytest.fixture
def old_interpreter(monkeypatch):
    """The installed interpreter with Triton 3.6's conversion."""
    old = _with_index(interpreter._patch_lang_tensor, lambda self: int(self.handle.data))
    monkeypatch.setattr(interpreter, "_patch_lang_tensor", old)
    return old


def _csr_strictly():
    """The CSR kernel (its loop bound is a runtime scalar) with NumPy's deprecations as errors."""
    index = torch.tensor([2, 0, 2, 1, 0])
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        perm, offsets = csr.csr_by_index(index, 4)
    assert perm.tolist() == [1, 4, 3, 0, 2] and offsets.tolist() == [0, 2, 3, 5, 5]


def test_the_installed_interpreter_converts_a_one_element_array():
    """Whatever Triton and NumPy are installed: once the kernels import, no error and no warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        assert _index_of(interpreter._patch_lang_tensor, np.array([7], dtype=np.int32)) == 7
    with pytest.raises((TypeError, ValueError)):       # like int(array): one element only
        _index_of(interpreter._patch_lang_tensor, np.array([7, 8], dtype=np.int32))


def test_the_old_conversion_fails_a_kernel_launch_and_install_fixes_it(old_interpreter):
    with pytest.raises(Exception, match="0-dimensional|scalar"):     # the positive control
        _csr_strictly()
    assert compat.install() is True
    assert interpreter._patch_lang_tensor is not old_interpreter
    _csr_strictly()
    fixed = interpreter._patch_lang_tensor
    assert compat.install() is True and interpreter._patch_lang_tensor is fixed     # not wrapped twice


@pytest.mark.skipif(not SCOPED, reason="triton 3.5's interpreter restores nothing after a launch")
def test_the_fix_is_undone_with_the_rest_of_the_launchs_patches(old_interpreter):
    compat.install()
    probe, scope = type("Probe", (), {}), interpreter._LangPatchScope()
    interpreter._patch_lang_tensor(probe, scope)
    assert hasattr(probe, "__index__")
    scope.restore()
    assert not hasattr(probe, "__index__")


def test_a_correct_conversion_is_left_alone(monkeypatch):
    squeezing = _with_index(interpreter._patch_lang_tensor, lambda self: int(self.handle.data.squeeze()))  # 3.8's
    monkeypatch.setattr(interpreter, "_patch_lang_tensor", squeezing)
    assert compat.install() is False
    assert interpreter._patch_lang_tensor is squeezing


def test_triton_3_5s_layout_without_a_scope_is_fixed_too(monkeypatch):
    """Triton 3.5 (torch 2.9) sets the tensor's attributes for good, with no restoring scope."""
    def old_3_5(tensor):
        tensor.__index__ = lambda self: int(self.handle.data)

    monkeypatch.setattr(interpreter, "_patch_lang_tensor", old_3_5)
    monkeypatch.delattr(interpreter, "_LangPatchScope", raising=False)
    assert compat.install() is True
    probe = type("Probe", (), {})
    interpreter._patch_lang_tensor(probe)
    value = probe.__new__(probe)
    value.handle = types.SimpleNamespace(data=np.array([7], dtype=np.int64))
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        assert operator.index(value) == 7


def test_an_unknown_layout_is_left_alone(monkeypatch):
    def other(tensor, scope, extra):
        pass

    monkeypatch.setattr(interpreter, "_patch_lang_tensor", other)
    assert compat.install() is False and interpreter._patch_lang_tensor is other
