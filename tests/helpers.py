"""Helpers shared by the tests (tests import this module; no test imports another test file).

Tolerances, per dtype, for fast-path results against a float64 reference computed on the same
input values: ``rsg_fast.testing`` (its docstring has the table; ``rsg-fast check`` uses it too).
"""
from __future__ import annotations

import contextlib
import os

import pytest
import torch

from rsg_fast import ops
from rsg_fast.bench.launch_probe import host_sync_messages
from rsg_fast.testing import assert_close

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
BACKENDS = ["torch", "triton"]   # "triton" runs the Triton interpreter on the CPU (conftest.py)
GROUPINGS = list(ops.GROUPINGS)

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def close(actual, expected, rtol=1e-5, scale=None):
    """``rsg_fast.testing.assert_close``: |actual - expected| <= rtol * (|expected| + scale), scale =
    max |expected| (at least 1) unless given; the same rule ``rsg-fast check`` applies."""
    assert_close(actual, expected, rtol, scale)


def layout(t: torch.Tensor, kind: str) -> torch.Tensor:
    """Same values as ``t`` (4-D) in another memory layout: contiguous, channels_last or a strided slice."""
    if kind == "contiguous":
        return t.contiguous()
    if kind == "channels_last":
        return t.contiguous(memory_format=torch.channels_last)
    if kind == "sliced":  # a view with gaps in every dimension
        big = torch.zeros(t.shape[0] * 2, t.shape[1] * 2 + 1, t.shape[2] * 3, t.shape[3] * 2,
                          dtype=t.dtype, device=t.device)
        view = big[::2, 1::2, ::3, ::2]
        view.copy_(t)
        return view
    raise ValueError(kind)


LAYOUTS = ["contiguous", "channels_last", "sliced"]


def leaf(t: torch.Tensor) -> torch.Tensor:
    """A detached copy that requires grad, with ``t``'s strides: ``clone`` makes a gapped view
    (``layout(t, "sliced")``) contiguous, and the kernels' general-stride path would go untested."""
    if all(s > 0 for s in t.stride()):      # an expanded (stride-0) view would share elements: clone it
        copy = torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=t.device).copy_(t.detach())
    else:
        copy = t.detach().clone()
    return copy.requires_grad_(True)


def grads(outputs, inputs, weights):
    """d(sum_i <outputs[i], weights[i]>)/d(inputs), None for inputs that get no gradient."""
    total = sum((o.double() * w.double()).sum() for o, w in zip(outputs, weights) if o.numel())
    if not isinstance(total, torch.Tensor):
        return [None] * len(inputs)
    return list(torch.autograd.grad(total, inputs, allow_unused=True))


@contextlib.contextmanager
def cuda_syncs():
    """Collects the messages of the CUDA synchronisations inside the block (after synchronising once
    before it): the bench's ``launch_probe.host_sync_messages``."""
    torch.cuda.synchronize()
    with host_sync_messages() as found:
        yield found


def host_waits_for_gpu(fn) -> bool:
    """Whether ``fn()`` made the host wait for the GPU. About a second of GPU sleep is queued first,
    so a call that never waits returns while the stream is still busy; unlike ``cuda_syncs`` this also
    sees waits inside the driver (a copy from pageable memory may wait for the stream)."""
    torch.cuda.synchronize()
    torch.cuda._sleep(2_000_000_000)      # clock cycles
    fn()
    waited = torch.cuda.current_stream().query()
    torch.cuda.synchronize()
    return waited


# torch.compile backends the compile tests run on the CPU (inductor from torch 2.14, the tested version)
COMPILERS = ["aot_eager", pytest.param("inductor", marks=pytest.mark.skipif(
    torch.torch_version.TorchVersion(torch.__version__) < "2.14",
    reason="inductor's C++ code generator before torch 2.14 (seen with 2.9.1, 2.10.0 and 2.11.0; 2.12-2.13 not tried) "
           "emits a tiled transpose of RSG's gathered rows that uses an index before declaring it ('tmpN was not "
           "declared'); torch 2.14.1, the version this project is tested with, compiles it (README: torch versions)"))]


@contextlib.contextmanager
def compile_setting():
    """What the README asks a user to set (on the CPU also inductor's layout optimisation off: it
    mispredicts the strides of convolutions whose batch size is data-dependent), and a clean cache."""
    import torch._dynamo
    import torch._inductor.config as inductor_config

    torch._dynamo.reset()
    with torch._dynamo.config.patch(capture_scalar_outputs=True), inductor_config.patch(layout_optimization=False):
        yield
    torch._dynamo.reset()


def fake_cifar10(root: str, monkeypatch, per_class_train: int = 100, per_class_test: int = 5) -> list[int]:
    """A tiny random CIFAR-10 in torchvision's on-disk format (pickled batches) under ``root``, never
    downloaded; torchvision's md5 checks, which such files cannot pass, are patched out for the test.
    Returns the training labels in file order."""
    import pickle

    import numpy as np
    import torchvision.datasets as tvd
    import torchvision.datasets.cifar as tvcifar

    folder = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(folder)
    rng = np.random.RandomState(0)
    labels = rng.permutation(np.repeat(np.arange(10), per_class_train)).tolist()
    data = rng.randint(0, 256, (len(labels), 3 * 32 * 32), dtype=np.uint8)
    chunks = np.array_split(np.arange(len(labels)), 5)
    for b, idx in enumerate(chunks, 1):
        with open(os.path.join(folder, f"data_batch_{b}"), "wb") as f:
            pickle.dump({"data": data[idx], "labels": [labels[i] for i in idx]}, f)
    test_labels = np.repeat(np.arange(10), per_class_test).tolist()
    with open(os.path.join(folder, "test_batch"), "wb") as f:
        pickle.dump({"data": rng.randint(0, 256, (len(test_labels), 3072), dtype=np.uint8), "labels": test_labels}, f)
    with open(os.path.join(folder, "batches.meta"), "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    monkeypatch.setattr(tvd.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(tvcifar, "check_integrity", lambda *a, **k: True)
    return labels
