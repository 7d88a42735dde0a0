"""Test set-up only (shared helpers live in tests/helpers.py).

TRITON_INTERPRET=1 must be set before triton is first imported, so that the Triton kernels run on
the CPU (one Python call per program instance) when no GPU is present. On a GPU machine the real
compiler is used unless the caller set the variable.
"""
import os

if not os.environ.get("RSG_FAST_TEST_ON_GPU"):
    try:
        import torch as _torch  # noqa: E402

        _has_cuda = _torch.cuda.is_available()
    except Exception:  # pragma: no cover
        _has_cuda = False
    if not _has_cuda:
        os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

# fp32 convolutions in full precision: the CUDA tests compare with float64 references and compiled
# with eager code, and cuDNN's default TF32 (Ampere and later) would put about 3e-4 between them
torch.backends.cudnn.allow_tf32 = False


@pytest.fixture(autouse=True)
def _sanitized_interpreter():
    """Under the Triton interpreter every launch is checked for out-of-bounds accesses and races
    between programs, which a GPU shows and the interpreter does not (tests/interpreter_sanitizer.py)."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        yield
        return
    from interpreter_sanitizer import sanitize

    with sanitize():
        yield


@pytest.fixture(autouse=True)
def _seed_everything():
    """Every test starts from a fixed seed so a failure reproduces; tests draw fresh inputs from it."""
    torch.manual_seed(0)
    yield


def pytest_collection_modifyitems(config, items):
    """Every test skipped for want of a GPU also carries the `cuda` marker, so `pytest -m cuda`
    (benchmarks/gpu_check.sh) selects all of them."""
    for item in items:
        for mark in item.iter_markers("skipif"):
            if "CUDA" in str(mark.kwargs.get("reason", "")):
                item.add_marker(pytest.mark.cuda)
                break
