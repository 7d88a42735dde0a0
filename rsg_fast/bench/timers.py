"""How the bench times a case, and the device copy bandwidth it compares with.

- CPU: ``time_interleaved``: warm-up calls, then rounds in which every case runs in turn (the order
  rotating each round), each call timed on its own. This is the one timer written here, for a
  reason ``torch.utils.benchmark`` cannot serve: on a shared, noisy machine (the project's 2-core
  VM) the load drifts over minutes, and cases timed one after the other would each see a
  different load; interleaved round by round, every case sees the same drift. (``Timer.timeit``
  also runs two extra warm-up calls per measurement, which would triple the cost of a round of the
  slow reference.) The samples become a ``torch.utils.benchmark.Measurement``, whose median, IQR
  and thread count are what the report shows.
- CUDA: ``time_cuda``: warm-up calls (they include torch.compile and Triton compiles), then
  ``triton.testing.do_bench`` (CUDA events around each call, L2 flushed before each, the repeat
  count set from its own estimate), or ``do_bench_cudagraph`` for ``mode="cuda-graph"`` cases
  (the calls captured once in a CUDA graph and replayed, which removes launch overhead: each
  sample is the mean call time of one replay).
- ``copy_bandwidth``: a large tensor copy through ``torch.utils.benchmark.Timer.blocked_autorange``
  (CPU) or ``triton.testing.do_bench`` (CUDA); bytes read + written over the median time.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import torch

# torch.utils.benchmark imports torch.utils.cpp_extension, which logs "No CUDA runtime is found" on a
# machine without CUDA: these timers compile nothing, so on the CPU the warning only misleads
_cpp_extension_log = logging.getLogger("torch.utils.cpp_extension")
_level = _cpp_extension_log.level
_cpp_extension_log.setLevel(logging.ERROR)
try:
    from torch.utils.benchmark import Measurement, TaskSpec, Timer
finally:
    _cpp_extension_log.setLevel(_level)

from rsg_fast.bench.cases import Case

CPU_METHOD = ("wall clock per call (time.perf_counter), cases interleaved round by round; "
              "statistics from torch.utils.benchmark.Measurement")
CUDA_METHOD = ("triton.testing.do_bench (CUDA events per call, L2 flushed before each); cuda-graph rows: "
               "triton.testing.do_bench_cudagraph (mean call time per graph replay)")
GRAPH_REP_MS = 50      # calls captured in one graph: about this many ms of eager calls (keeps capture short)


def error_text(exc: BaseException) -> str:
    """A row's status for a case that raised: ``error: Type: first line of the message``."""
    text = f"{type(exc).__name__}: {exc}".strip().splitlines()[0]
    return "error: " + (text[:300] + "..." if len(text) > 300 else text)


def _measurement(case: Case, seconds: Sequence[float], number_per_run: int = 1) -> Measurement:
    spec = TaskSpec(stmt=f"{case.variant} {case.phase}", setup="pass", global_setup="", label="rsg-fast bench",
                    sub_label=f"{case.dtype} {case.mode}", description=case.group, env=None,
                    num_threads=torch.get_num_threads())
    return Measurement(number_per_run=number_per_run, raw_times=list(seconds), task_spec=spec)


def summarise(m: Measurement) -> dict:
    """A row's timing fields (milliseconds) from a measurement of per-call times."""
    times = torch.tensor(m.times, dtype=torch.float64)
    # Measurement keeps its quartiles private; the same rule (linear interpolation) gives them here.
    p25, p75 = times.quantile(torch.tensor([0.25, 0.75], dtype=torch.float64)).tolist()
    return {"median_ms": m.median * 1e3, "p25_ms": p25 * 1e3, "p75_ms": p75 * 1e3, "iqr_ms": m.iqr * 1e3,
            "min_ms": times.min().item() * 1e3, "max_ms": times.max().item() * 1e3, "reps": len(times),
            "threads": m.task_spec.num_threads, "noisy": not m.meets_confidence(0.1)}


# ----------------------------------------------------------------------------- CPU

def _call_ms(fn: Callable[[], None]) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def time_interleaved(cases: Sequence[Case], *, warmup: int, budget_s: float, min_rounds: int, max_rounds: int,
                     advance: Callable[[float], None] = lambda units: None):
    """Warm each case up, then time them round-robin; cheap cases run several calls per round so
    every case gets a similar share of the budget. ``advance`` is told of progress: 1 unit per
    warmed-up case, then ``len(cases)`` units spread over the rounds.
    Returns ({case.key: Measurement}, {case.key: error text})."""
    errors, estimate, live = {}, {}, []
    for case in cases:
        try:
            for _ in range(warmup):
                estimate[case.key] = _call_ms(case.fn)
            live.append(case)
        except Exception as exc:  # noqa: BLE001 (one variant failing must not stop the others)
            errors[case.key] = error_text(exc)
        advance(1)
    if not live:
        advance(len(cases))
        return {}, errors
    slot = max(estimate[c.key] for c in live)
    per_round = {c.key: max(1, min(10, int(slot / max(estimate[c.key], 1e-3)))) for c in live}
    round_ms = sum(per_round[c.key] * estimate[c.key] for c in live)
    rounds = int(min(max_rounds, max(min_rounds, budget_s * 1e3 // max(round_ms, 1e-3))))
    samples = {c.key: [] for c in live}
    advance(len(cases) - len(live))          # the failed cases' share of the timing
    for r in range(rounds):
        order = live[r % len(live):] + live[:r % len(live)]
        for case in order:
            if case.key in errors:
                continue
            try:
                samples[case.key].extend(_call_ms(case.fn) * 1e-3 for _ in range(per_round[case.key]))
            except Exception as exc:  # noqa: BLE001
                errors[case.key] = error_text(exc)
        advance(len(live) / rounds)
    return {c.key: _measurement(c, samples[c.key]) for c in live if c.key not in errors}, errors


# ----------------------------------------------------------------------------- CUDA

def time_cuda(case: Case, *, warmup: int, budget_ms: float, min_reps: int, max_reps: int) -> Measurement:
    """Warm ``case`` up, then time it with triton's do_bench (or do_bench_cudagraph). Raises what the
    case raises (the caller records it as the row's error)."""
    import triton.testing

    device = torch.cuda.current_device()
    for _ in range(max(1, warmup)):
        case.fn()
    torch.cuda.synchronize(device)
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    begin.record()
    case.fn()
    end.record()
    torch.cuda.synchronize(device)
    estimate_ms = max(begin.elapsed_time(end), 1e-3)
    rep_ms = min(max(budget_ms, min_reps * estimate_ms), max_reps * estimate_ms)
    try:
        if case.mode == "cuda-graph":
            ms = triton.testing.do_bench_cudagraph(case.fn, rep=min(rep_ms, GRAPH_REP_MS), return_mode="all")
        else:
            ms = triton.testing.do_bench(case.fn, warmup=1, rep=rep_ms, return_mode="all")
    except AssertionError as exc:
        raise RuntimeError(f"triton {triton.__version__}'s do_bench does not offer return_mode='all'") from exc
    return _measurement(case, [t * 1e-3 for t in ms])


# ----------------------------------------------------------------------------- copy bandwidth

def copy_bandwidth(device: torch.device) -> float:
    """Device copy bandwidth in GB/s (bytes read + written) of a 256 MiB (CPU) / 1 GiB (CUDA) copy."""
    n = (1 << 30 if device.type == "cuda" else 256 << 20) // 4
    src = torch.ones(n, device=device)
    dst = torch.empty_like(src)
    if device.type == "cuda":
        import triton.testing
        seconds = triton.testing.do_bench(lambda: dst.copy_(src), return_mode="median") * 1e-3
    else:
        timer = Timer("dst.copy_(src)", globals={"dst": dst, "src": src}, num_threads=torch.get_num_threads())
        seconds = timer.blocked_autorange(min_run_time=0.3).median
    return 2 * n * 4 / seconds / 1e9
