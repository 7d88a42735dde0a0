"""Backend resolution: "auto" / "torch" / "triton", the RSG_FAST_BACKEND override, clear errors."""
from __future__ import annotations

import pytest
import torch

from rsg_fast import backend as B

CPU = torch.device("cpu")
CUDA = torch.device("cuda")


@pytest.fixture
def no_env(monkeypatch):
    monkeypatch.delenv(B.ENV_VAR, raising=False)
    return monkeypatch


def test_choices_exported():
    assert B.BACKEND_CHOICES == ("auto", "torch", "triton")


def test_triton_available_cached():
    assert B.triton_available() is True  # triton is a dependency on Linux
    assert B._TRITON_AVAILABLE == [True]    # checked once


@pytest.mark.parametrize("backend", ["auto", "triton"])
def test_resolution_under_torch_compile_is_a_constant_without_warnings(no_env, backend):
    """RSG resolves its backend inside the compiled region: on CUDA dynamo reaches triton_available(),
    which it must take as a constant, not trace (a functools cache there made dynamo warn of 'silent
    incorrectness' on every compile of RSG on a GPU). The device is only a type: no GPU needed."""
    import warnings

    import torch._dynamo

    def f(x):
        return x + (1 if B.resolve_backend(backend, CUDA) == "triton" else 0)

    torch._dynamo.reset()
    torch._dynamo.utils.warn_once_cache.clear()    # dynamo warns once per process: not only in the first test
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = torch.compile(f, backend="eager", fullgraph=True)(torch.zeros(2))
    assert out.tolist() == [1.0, 1.0]
    assert [str(w.message) for w in caught if "dynamo" in str(w.message).lower()
            or "lru_cache" in str(w.message)] == []


def test_auto_cpu_is_torch(no_env):
    assert B.resolve_backend("auto", CPU) == "torch"
    assert B.resolve_backend(None, "cpu") == "torch"


def test_auto_cuda_is_triton_when_importable(no_env):
    assert B.resolve_backend("auto", CUDA) == "triton"  # resolution needs no GPU, only the device type
    no_env.setattr(B, "triton_available", lambda: False)
    assert B.resolve_backend("auto", CUDA) == "torch"


def test_explicit_values(no_env):
    assert B.resolve_backend("torch", CUDA) == "torch"
    assert B.resolve_backend("triton", CUDA) == "triton"


def test_triton_on_cpu_needs_interpreter(no_env):
    no_env.setenv("TRITON_INTERPRET", "1")
    assert B.resolve_backend("triton", CPU) == "triton"
    no_env.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="backend='triton'.*TRITON_INTERPRET"):
        B.resolve_backend("triton", CPU)
    no_env.delenv("TRITON_INTERPRET")
    with pytest.raises(ValueError, match="backend argument"):
        B.resolve_backend("triton", CPU)


def test_triton_missing_is_clear(no_env):
    no_env.setattr(B, "triton_available", lambda: False)
    with pytest.raises(ValueError, match="triton cannot be imported"):
        B.resolve_backend("triton", CUDA)


@pytest.mark.parametrize("bad", ["cuda", "Torch", "", 1, ("torch",)])
def test_bad_values(no_env, bad):
    with pytest.raises(ValueError, match=r"backend must be one of \('auto', 'torch', 'triton'\)"):
        B.resolve_backend(bad, CPU)


def test_env_overrides_auto_only(no_env):
    no_env.setenv(B.ENV_VAR, "torch")
    assert B.resolve_backend("auto", CUDA) == "torch"
    assert B.resolve_backend("triton", CUDA) == "triton"       # explicit argument wins
    no_env.setenv(B.ENV_VAR, "triton")
    no_env.setenv("TRITON_INTERPRET", "1")
    assert B.resolve_backend("auto", CPU) == "triton"
    assert B.resolve_backend("torch", CPU) == "torch"
    no_env.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match=B.ENV_VAR):
        B.resolve_backend("auto", CPU)
    for unset in ("", "auto", " AUTO "):
        no_env.setenv(B.ENV_VAR, unset)
        assert B.resolve_backend("auto", CPU) == "torch"
    no_env.setenv(B.ENV_VAR, " Triton ")
    assert B.resolve_backend("auto", CUDA) == "triton"


def test_bad_env_value(no_env):
    no_env.setenv(B.ENV_VAR, "gpu")
    with pytest.raises(ValueError, match=f"{B.ENV_VAR}.*'gpu'"):
        B.resolve_backend("auto", CPU)
    assert B.resolve_backend("torch", CPU) == "torch"  # not consulted when the argument is explicit


def test_ops_follow_env(no_env):
    """The ops resolve "auto" through the same rules: RSG_FAST_BACKEND=triton reaches the kernels."""
    from rsg_fast import ops
    from rsg_fast.kernels import displacement as kdp
    x, index, row, table = torch.randn(2, 3, 2, 2), torch.tensor([1, 0]), torch.tensor([0, 1]), torch.randn(2, 3)
    calls = []
    real = kdp.displacement_forward
    no_env.setattr(kdp, "displacement_forward", lambda *a: calls.append(1) or real(*a))
    ops.displacement(x, index, row, table)
    assert not calls  # auto on CPU: torch path
    if B.triton_interpret():
        no_env.setenv(B.ENV_VAR, "triton")
        ops.displacement(x, index, row, table)
        assert calls  # the Triton launcher ran


@pytest.mark.parametrize("value", ["1", "true", "TRUE", "yes", "y", "on", "On", "0", "false", "no", "off", ""])
def test_triton_interpret_reads_the_variable_as_triton_does(monkeypatch, value):
    """The kernels run interpreted exactly when Triton's own reading of TRITON_INTERPRET says so."""
    from triton._C.libtriton import getenv_bool

    monkeypatch.setenv("TRITON_INTERPRET", value)
    assert B.triton_interpret() is getenv_bool("TRITON_INTERPRET", False)
