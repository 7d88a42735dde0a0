"""How the launchers launch, beyond the values the op tests check: on which GPU, with which block for
a symbolic size, and what torch.compile's caches learn of the kernels.

None of this shows in a value: a kernel launched on the wrong GPU fails or races only on a machine with
two; ``int()`` of a symbolic size costs a compile per batch size, not a wrong number; a cache key
without the kernels serves a stale kernel only after a kernel changed. So each is checked directly.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from rsg_fast.kernels import _common


class _RecordedDevice:
    """Stands in for ``torch.cuda.device``: records the switch instead of making it."""
    log: list = []

    def __init__(self, index):
        self.index = index

    def __enter__(self):
        self.log.append(("enter", self.index))

    def __exit__(self, *exc):
        self.log.append(("exit", self.index))


class _Kernel:
    """Stands in for a kernel: ``kernel[grid](*args)`` records the device switches made so far."""

    def __init__(self):
        self.calls = []

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.calls.append(list(_RecordedDevice.log))


def test_a_launch_runs_on_the_gpu_of_its_first_tensor(monkeypatch):
    # Triton launches on the current device; tensors on cuda:1 while cuda:0 is current must switch
    from torch._subclasses.fake_tensor import FakeTensorMode

    monkeypatch.setattr(_RecordedDevice, "log", [])
    monkeypatch.setattr(torch.cuda, "device", _RecordedDevice)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    with FakeTensorMode():
        on_1, on_0 = torch.empty(3, device="cuda:1"), torch.empty(3, device="cuda:0")
    kernel = _Kernel()
    _common.launch(kernel, (1,))(on_1, on_0, 5, BLOCK=16)
    assert kernel.calls == [[("enter", 1)]] and _RecordedDevice.log == [("enter", 1), ("exit", 1)]
    _RecordedDevice.log.clear()
    _common.launch(kernel, (1,))(5, on_0, on_1)          # the first tensor decides, not the first argument
    assert kernel.calls[-1] == [] and _RecordedDevice.log == []


def test_a_cpu_launch_asks_nothing_of_cuda(monkeypatch):
    def no_cuda():
        raise AssertionError("a CPU launch asked for the current CUDA device")
    monkeypatch.setattr(torch.cuda, "current_device", no_cuda)
    kernel = _Kernel()
    _common.launch(kernel, (1,))(torch.zeros(2), 3)
    assert len(kernel.calls) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without a GPU")
def test_fake_cuda_tensors_launch_without_starting_cuda():
    # torch.compile / torch.export trace with fake CUDA tensors on machines without a GPU: asking for
    # the current device there would try to start CUDA ("Found no NVIDIA driver")
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        on_1 = torch.empty(3, device="cuda:1")
    kernel = _Kernel()
    _common.launch(kernel, (1,))(on_1, 3)
    assert len(kernel.calls) == 1 and not torch.cuda.is_initialized()


class _Symbolic:
    """A size known only by comparisons, as a SymInt is to the code that must not specialise on it."""

    def __init__(self, value):
        self.value = value

    def __gt__(self, other):
        return self.value > other

    def __int__(self):
        raise AssertionError("int() of a symbolic size specialises the graph on it")

    __index__ = __int__


@pytest.mark.parametrize("lo, hi", [(1, None), (16, None), (1, 32), (16, 128), (4, 4)])
def test_pow2_of_a_symbolic_size_matches_pow2_of_the_int_without_int(lo, hi):
    for n in range(0, 300):
        assert _common.pow2(_Symbolic(n), lo, hi) == _common.pow2(n, lo, hi), (n, lo, hi)


def test_compile_caches_are_keyed_on_every_kernel_and_the_source_of_every_op():
    # what AOT autograd's cache hashes for a graph holding an rsg_fast op: every kernel and a digest of
    # the op bodies and launchers (by hand, 2026-12-08: a process after an edit of the PyTorch path's
    # tap_window_means missed the cache and ran the edit; before, it hit and ran the old code). In a
    # subprocess without TRITON_INTERPRET: under the interpreter the kernels are no JITFunctions
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["registry"], "this torch has no triton_ops_to_kernels (update the test to its cache)"
    launched = set(report["launched"])
    assert {"_center_assign_fwd_kernel", "_csr_kernel", "_mv_terms_bwd_kernel", "_pair_indices_kernel",
            "_relu_tap_window_means_bwd_kernel", "_index_add_kernel"} <= launched, sorted(launched)
    assert set(report["ops"]) == set(report["namespace"]), (sorted(report["ops"]), report["namespace"])
    for op, names in report["ops"].items():
        assert launched <= set(names), (op, sorted(launched - set(names)))
    # what AOT autograd's cache hashes for a graph node of the op: each kernel's source, and the
    # digest of the op bodies and launchers, which changes with any of their files
    assert len(report["digest"]) == 64
    for op, (found, has_digest) in report["aot_cache_sources"].items():
        assert found == sorted(launched), (op, sorted(set(launched) - set(found)))
        assert has_digest, op


def _main():
    assert "TRITON_INTERPRET" not in os.environ
    import importlib

    import triton

    import hashlib

    import rsg_fast.kernels
    import rsg_fast.ops
    registry = getattr(getattr(torch._library, "triton", None), "triton_ops_to_kernels", None)
    launched = set()
    folder = rsg_fast.kernels.__path__[0]  # every kernel file, listed here, not by the code under test
    for file_name in sorted(f for f in os.listdir(folder) if f.endswith(".py") and not f.startswith("_")):
        module = importlib.import_module(f"rsg_fast.kernels.{file_name[:-3]}")
        launched |= {k for k, v in vars(module).items()
                     if isinstance(v, triton.runtime.jit.JITFunction) and k.endswith("_kernel")}
    namespace = sorted(name for name in dir(torch.ops.rsg_fast)
                       if isinstance(getattr(torch.ops.rsg_fast, name), torch._ops.OpOverloadPacket))
    digest = hashlib.sha256()      # of the op bodies and launchers, as the registry's digest should be
    for package in (rsg_fast.ops, rsg_fast.kernels):
        folder = package.__path__[0]
        for file_name in sorted(f for f in os.listdir(folder) if f.endswith(".py")):
            with open(os.path.join(folder, file_name), "rb") as f:
                digest.update(file_name.encode() + b"\0" + f.read())
    digest = digest.hexdigest()
    ops, sources = {}, {}
    for name in namespace:
        overload = getattr(torch.ops.rsg_fast, name).default
        kernels = torch._library.triton.get_triton_kernels_for_op(overload._name)   # the cache's lookup
        ops[name] = sorted(k.__name__ for k in kernels)
        try:
            from torch._inductor.codegen.wrapper import user_defined_triton_kernel_transitive_closure_source_code
        except ImportError:
            continue
        text = "\n".join(user_defined_triton_kernel_transitive_closure_source_code(k) for k in kernels)
        sources[name] = (sorted(k for k in launched if f"def {k}(" in text), digest in text)
    print(json.dumps({"registry": registry is not None, "launched": sorted(launched), "ops": ops,
                      "namespace": namespace, "digest": digest, "aot_cache_sources": sources}))


if __name__ == "__main__":
    _main()
