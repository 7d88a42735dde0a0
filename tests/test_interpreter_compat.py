"""kernels/_interpreter_compat.py: the Triton interpreter's int conversion of runtime scalars.

Triton <= 3.6's interpreter converts a scalar kernel argument (a one-element NumPy array) with
``int(array)``: a DeprecationWarning up to NumPy 2.4, a TypeError from 2.5, which failed the
backward of every fused op on the CPU (torch 2.11, triton 3.6, numpy 2.5.5; 2026-12-07). Whatever
Triton and NumPy this runs with, these tests give the interpreter that old conversion and check the
fix, in a probe and in a real kernel launch under the interpreter.
"""
from __future__ import annotations

import operator
import types
import warnings

import numpy as np
import pytest
import torch
import triton.runtime.interpreter as interpreter

from rsg_fast.kernels import _interpreter_compat as compat
from rsg_fast.kernels import csr


def _with_old_conversion(patch_lang_tensor):
    """The installed interpreter's tensor patch with Triton 3.6's conversion, which NumPy 2.5 breaks."""
    def old_patch_lang_tensor(tensor, scope):
        patch_lang_tensor(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data))
    return old_patch_lang_tensor


def _index_of(patch_lang_tensor, data):
    """``operator.index`` of an interpreter tensor holding ``data``, as a kernel's ``range(n)`` takes it."""
    probe = type("Probe", (), {})
    scope = interpreter._LangPatchScope()
    patch_lang_tensor(probe, scope)
    try:
        value = probe.__new__(probe)
        value.handle = types.SimpleNamespace(data=data)
        return probe.__index__(value)
    finally:
        scope.restore()


@pytest.fixture
def old_interpreter(monkeypatch):
    old = _with_old_conversion(interpreter._patch_lang_tensor)
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


def test_the_old_conversion_fails_a_kernel_launch_and_install_fixes_it(old_interpreter):
    with pytest.raises(Exception, match="0-dimensional|scalar"):     # the positive control
        _csr_strictly()
    assert compat.install() is True
    assert interpreter._patch_lang_tensor is not old_interpreter
    _csr_strictly()
    fixed = interpreter._patch_lang_tensor
    assert compat.install() is True and interpreter._patch_lang_tensor is fixed     # not wrapped twice


def test_the_fix_is_undone_with_the_rest_of_the_launchs_patches(old_interpreter):
    compat.install()
    probe, scope = type("Probe", (), {}), interpreter._LangPatchScope()
    interpreter._patch_lang_tensor(probe, scope)
    assert hasattr(probe, "__index__")
    scope.restore()
    assert not hasattr(probe, "__index__")


def test_a_correct_conversion_is_left_alone(monkeypatch):
    real = interpreter._patch_lang_tensor

    def squeezing(tensor, scope):       # Triton 3.8's
        real(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.squeeze()))

    monkeypatch.setattr(interpreter, "_patch_lang_tensor", squeezing)
    assert compat.install() is False
    assert interpreter._patch_lang_tensor is squeezing


def test_triton_3_5s_layout_without_a_scope_is_fixed_too(monkeypatch):
    """Triton 3.5 (torch 2.9) sets the tensor's attributes for good, with no restoring scope."""
    def old_3_5(tensor):
        tensor.__index__ = lambda self: int(self.handle.data)

    monkeypatch.setattr(interpreter, "_patch_lang_tensor", old_3_5)
    monkeypatch.delattr(interpreter, "_LangPatchScope")
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
