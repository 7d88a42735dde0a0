"""pytest-benchmark set-up shared by the files in benchmarks/ (run: ``pytest benchmarks/ --benchmark-only``).

The settings, inputs and timed functions come from the public ``rsg_fast.bench.cases`` and
``rsg_fast.bench.op_cases``, the same ones ``rsg-fast bench`` times. Environment variables:

- RSG_BENCH_SHAPES: the setting (default cifar10; also cifar100, imagenet-lt, inat2018, tiny)
- RSG_BENCH_DEVICE: auto (default: CUDA when present), cpu or cuda
- RSG_BENCH_DTYPE: the op benchmarks' tensor dtype, fp32 (default), bf16 or fp16
- RSG_BENCH_AMP: the module and step benchmarks under autocast: off (default, fp32), bf16 or fp16
  (as `rsg-fast bench --amp`: maps in that dtype, fp16 steps with a GradScaler)
- RSG_BENCH_ROUNDS: timed rounds per benchmark (default 10 on CPU, 50 on CUDA)
- RSG_BENCH_COMPILE: 1 to time the torch.compile variants on CPU too (always on for CUDA)
- RSG_BENCH_CUDA_GRAPHS: 1 to replay the op benchmarks from CUDA graphs (one per input rotation),
  which removes launch overhead where it dominates; a capture that fails falls back to eager calls.

Each call takes the next of several rotated input sets, so no round reuses cache-hot inputs; on
CUDA every call ends with a synchronisation so the wall time covers the work.
"""
from __future__ import annotations

import os

import pytest
import torch

from rsg_fast.bench import cases as bc
from rsg_fast.bench import op_cases


def _setting() -> bc.Setting:
    name = os.environ.get("RSG_BENCH_SHAPES", "cifar10")
    if name not in bc.SETTINGS:
        raise pytest.UsageError(f"RSG_BENCH_SHAPES={name!r}: choose one of {', '.join(bc.SETTINGS)}")
    return bc.SETTINGS[name]


def _device() -> torch.device:
    name = os.environ.get("RSG_BENCH_DEVICE", "auto")
    if name not in ("auto", "cpu", "cuda"):
        raise pytest.UsageError(f"RSG_BENCH_DEVICE={name!r}: choose auto, cpu or cuda")
    if name == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError("RSG_BENCH_DEVICE=cuda but no CUDA device is available")
    return torch.device("cuda" if name == "cuda" or (name == "auto" and torch.cuda.is_available()) else "cpu")


@pytest.fixture(scope="session")
def setting() -> bc.Setting:
    return _setting()


@pytest.fixture(scope="session")
def device() -> torch.device:
    return _device()


@pytest.fixture(scope="session")
def pool(setting, device) -> bc.InputPool:
    """The module and step benchmarks' inputs: fp32, or in RSG_BENCH_AMP's dtype (the cases then run
    under autocast)."""
    name = os.environ.get("RSG_BENCH_AMP", "off")
    if name not in bc.AMP_DTYPES:
        raise pytest.UsageError(f"RSG_BENCH_AMP={name!r}: choose one of {', '.join(bc.AMP_DTYPES)}")
    if why := bc.dtype_unavailable(bc.AMP_DTYPES[name], device):     # as rsg-fast bench skips those rows
        pytest.skip(why)
    return bc.InputPool(setting, device, dtype=bc.DTYPES[bc.AMP_DTYPES[name]])


@pytest.fixture(scope="session")
def op_pool(setting, device) -> bc.InputPool:
    """Inputs in RSG_BENCH_DTYPE: the op benchmarks."""
    name = os.environ.get("RSG_BENCH_DTYPE", "fp32")
    if name not in op_cases.DTYPES:
        raise pytest.UsageError(f"RSG_BENCH_DTYPE={name!r}: choose one of {', '.join(op_cases.DTYPES)}")
    if why := bc.dtype_unavailable(name, device):
        pytest.skip(why)
    return bc.InputPool(setting, device, dtype=op_cases.DTYPES[name])


@pytest.fixture(scope="session")
def with_compile(device) -> bool:
    return device.type == "cuda" or os.environ.get("RSG_BENCH_COMPILE", "") == "1"


def _rounds(device) -> int:
    return int(os.environ.get("RSG_BENCH_ROUNDS", "50" if device.type == "cuda" else "10"))


def _graphed(fn, rotations: int, device):
    """Replay ``fn`` from CUDA graphs, one captured per input rotation (``fn`` takes the next rotation
    each call). Returns (callable, None) or (fn, reason) when capture is not possible."""
    try:
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(3):
                fn()
        torch.cuda.current_stream(device).wait_stream(side)
        graphs, mempool = [], None
        for _ in range(rotations):
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g, pool=mempool):
                fn()
            mempool = g.pool()
            graphs.append(g)
    except Exception as exc:  # noqa: BLE001 (any capture failure: time eagerly instead)
        torch.cuda.synchronize(device)
        return fn, f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
    state = {"i": 0}

    def replay():
        graphs[state["i"] % len(graphs)].replay()
        state["i"] += 1
    return replay, None


@pytest.fixture
def run_case(benchmark, setting, device, pool):
    """Time ``case.fn`` with pytest-benchmark (warm-up rounds first) and record the context."""

    def run(case: bc.Case, *, group: str, graphs: bool = False, inputs: bc.InputPool | None = None):
        inputs = inputs or pool
        fn, note = case.fn, None
        use_graphs = graphs and device.type == "cuda" and os.environ.get("RSG_BENCH_CUDA_GRAPHS", "") == "1"
        if use_graphs:
            fn, note = _graphed(case.fn, inputs.rotations, device)
        if device.type == "cuda":
            inner = fn

            def fn():
                inner()
                torch.cuda.synchronize(device)
        benchmark.group = group
        benchmark.extra_info.update(
            setting=setting.name, device=str(device), threads=torch.get_num_threads(), variant=case.variant,
            phase=case.phase, dtype=case.dtype, bytes_moved=case.bytes_moved, rotations=inputs.rotations,
            cuda_graphs=use_graphs and note is None,
            **({"cuda_graphs_fallback": note} if note else {}))
        rounds = _rounds(device)
        benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=max(2, rounds // 10))

    return run


@pytest.fixture
def require(device, with_compile, setting):
    """``require(variant)`` / ``require(impl="triton")``: skip, with the reason, what cannot run here."""

    def check(variant=None, *, impl=None):
        why = (op_cases.op_unavailable(impl, device) if variant is None
               else bc.variant_unavailable(variant, device, with_compile=with_compile, setting=setting))
        if why:
            pytest.skip(why)
    return check
