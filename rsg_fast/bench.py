"""``rsg-fast bench``: time RSG against the reference implementation (the project's main job).

For each setting (``--shapes``) it times one forward+backward of every RSG variant in both phases
(before and after ``epoch_thresh``) and one ResNet-32 training step without RSG, with
``ReferenceRSG`` and with ``RSG``; measures the peak memory of one call; prints a table; and writes
JSON, CSV and (with matplotlib) a PNG chart to ``--out``.

How it measures (the rules are in benchmarks/results/README.md too):

- Warm-up calls first (they include allocation, cuDNN/oneDNN set-up and torch.compile).
- Inputs rotate: each call gets the next of several input sets (feature maps, images and a
  permutation of one long-tailed label multiset), together larger than the caches.
- CPU: wall time (``time.perf_counter``), variants interleaved round by round so drifting machine
  load hits all of them alike; ``torch.get_num_threads()`` is reported.
- CUDA: CUDA events around each call, the L2 cache flushed (a 256 MiB write) before each call,
  interleaved likewise; medians. RSG's forward synchronises with the host once (the head count),
  so whole-module calls cannot be captured in CUDA graphs; the op benchmarks in benchmarks/ can.
- Peak memory of one call: CUDA ``max_memory_allocated`` above what was allocated before the call;
  CPU the growth of the peak resident set (VmHWM, reset through /proc/self/clear_refs) over the
  resident set before the call, in a separate process with glibc's mmap threshold fixed so freed
  tensors go back to the OS.
- Achieved GB/s = compulsory bytes of the call (``_bench_cases.module_bytes``) / median time, and its
  share of the device copy bandwidth measured in the same run (a large tensor copy).
"""
from __future__ import annotations

import argparse
import csv
import datetime as _dt
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from rsg_fast import _bench_cases as bc

SCHEMA = "rsg-fast-bench/1"
DEFAULT_OUT = "./rsg-bench/"
CSV_COLUMNS = [
    "date", "commit", "device", "device_name", "threads", "torch", "triton", "setting", "batch", "maps",
    "centers", "dim", "classes", "head_classes", "group", "variant", "phase", "status", "median_ms", "p25_ms",
    "p75_ms", "iqr_ms", "min_ms", "reps", "speedup_vs_reference", "overhead_vs_no_rsg_pct", "peak_mem_mb",
    "mem_method", "bytes_moved", "gbps", "pct_copy_bw", "pairs",
]
TARGETS = {  # the project's targets (reported against, never asserted)
    "rsg_speedup": ">= 10x faster than ReferenceRSG, forward+backward, both phases (2-core CPU, CIFAR)",
    "step_overhead": "<= 15 % slower than ResNet-32 without RSG (2-core CPU, CIFAR)",
    "memory_ratio": ">= 4x less peak memory than ReferenceRSG (CPU, 256x14x14 maps, N=64, K=15, 100 classes)",
}


class BenchArgumentError(Exception):
    """A bad command-line argument: printed as ``rsg-fast bench: error: ...``, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse would sys.exit(2); main() returns the status instead
        raise BenchArgumentError(message)


def _positive(name, convert, what):
    """An argparse type: ``convert(text)`` must give a finite number > 0, else an error naming ``name``."""
    def parse(text):
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not value > 0 or not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{name} must be a positive {what}, got {text!r}")
        return value
    return parse


def _positive_int(name):
    return _positive(name, int, "integer")


def _positive_float(name):
    return _positive(name, float, "number")


def _maps(text):
    parts = text.lower().replace(",", "x").split("x")
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"--maps must be CxHxW with three positive integers (e.g. 256x14x14), "
                                         f"got {text!r}")
    return values


def _name_list(kind, choices, hidden=()):
    def parse(text):
        names = [n.strip() for n in text.split(",") if n.strip()]
        if not names:
            raise argparse.ArgumentTypeError(f"{kind} must name at least one of {', '.join(choices)}")
        bad = [n for n in names if n not in choices and n not in hidden]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {kind} {', '.join(map(repr, bad))}; choose from "
                                             f"{', '.join(choices)} (comma-separated)")
        return list(dict.fromkeys(names))
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="rsg-fast bench", description=(
        "Time one forward+backward of RSG (PyTorch and Triton paths) against ReferenceRSG (and its "
        "torch.compile) in both phases, and a CIFAR ResNet-32 training step without RSG, with "
        "ReferenceRSG and with RSG. Prints a table; writes JSON, CSV and a PNG chart to --out."))
    p.add_argument("--shapes", type=_name_list("shapes", bc.PUBLIC_SHAPES, hidden=("tiny",)), default=["cifar10"],
                   metavar="NAMES", help="settings, comma-separated: " + ", ".join(bc.PUBLIC_SHAPES) +
                   " (default cifar10: N=128, maps 32x16x16, K=15, D=256, 10 classes, rho=100, heads 0,1)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto (default): CUDA when present, else CPU")
    p.add_argument("--variants", type=_name_list("variants", bc.ALL_VARIANTS), default=None, metavar="NAMES",
                   help="comma-separated subset of " + ", ".join(bc.ALL_VARIANTS) + " (default: all that run here)")
    p.add_argument("--phases", type=_name_list("phases", bc.PHASES), default=list(bc.PHASES), metavar="NAMES",
                   help="contrastive (epoch <= epoch_thresh), generation (after it), or both (default)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="also time torch.compile(ReferenceRSG) (default: on for CUDA, off for CPU)")
    p.add_argument("--batch", type=_positive_int("--batch"), default=None, help="override N")
    p.add_argument("--maps", type=_maps, default=None, metavar="CxHxW", help="override the feature-map shape")
    p.add_argument("--centers", type=_positive_int("--centers"), default=None, help="override K (n_center)")
    p.add_argument("--dim", type=_positive_int("--dim"), default=None, help="override D (contrastive_module_dim)")
    p.add_argument("--classes", type=_positive_int("--classes"), default=None,
                   help="override the class count (head classes become the first 20 %%)")
    p.add_argument("--budget", type=_positive_float("--budget"), default=None, metavar="SECONDS",
                   help="timing budget per setting after warm-up (default 40 on CPU, 20 on CUDA); "
                        "every case still gets the minimum number of rounds")
    p.add_argument("--min-rounds", type=_positive_int("--min-rounds"), default=None,
                   help="fewest timed rounds per case (default 5 on CPU, 20 on CUDA)")
    p.add_argument("--warmup", type=_positive_int("--warmup"), default=None, help="warm-up calls per case (default 2)")
    p.add_argument("--threads", type=_positive_int("--threads"), default=None,
                   help="torch.set_num_threads (default: torch's choice, reported)")
    p.add_argument("--memory", action=argparse.BooleanOptionalAction, default=True,
                   help="measure the peak memory of one call (default on)")
    p.add_argument("--quick", action="store_true", help="smoke run: 1 warm-up, 2 rounds (numbers are rough)")
    p.add_argument("--seed", type=int, default=0, help="seed of inputs and parameters (default 0)")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    p.add_argument("--tag", default=None, help="output file stem (default bench-<shapes>-<device>)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.add_argument("--memory-probe", default=None, help=argparse.SUPPRESS)  # internal: child process
    return p


# ----------------------------------------------------------------------------- entry point

def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.memory_probe is not None:
            return _memory_probe_main(args.memory_probe)
        plan = _plan(args)
    except BenchArgumentError as exc:
        print(f"rsg-fast bench: error: {exc}", file=sys.stderr)
        print("run `rsg-fast bench --help` for the options", file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    result = run(plan, argv, on_setting=lambda partial: write_outputs(partial, plan["out"], plan["tag"], chart=False))
    print(format_report(result))
    paths = write_outputs(result, plan["out"], plan["tag"])
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    if result.get("chart_note"):
        print(result["chart_note"])
    return 1 if any(r["status"].startswith("error") for r in result["rows"]) else 0


def _plan(args) -> dict:
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise BenchArgumentError("--device cuda but no CUDA device is available (torch.cuda.is_available() is "
                                 "False); use --device cpu or auto")
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    settings = [bc.SETTINGS[name].override(batch=args.batch, maps=args.maps, centers=args.centers, dim=args.dim,
                                           num_classes=args.classes) for name in args.shapes]
    for s in settings:
        if s.batch < 2:
            raise BenchArgumentError(f"--batch must be at least 2 (RSG pairs samples), got {s.batch}")
        if s.num_classes < 2:
            raise BenchArgumentError(f"--classes must be at least 2 (heads and tails), got {s.num_classes}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise BenchArgumentError(f"--out {str(out)!r} exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BenchArgumentError(f"--out {str(out)!r} cannot be created: {exc.strerror or exc}") from None
    cuda = device.type == "cuda"
    compile_reference = cuda if args.compile is None else args.compile
    variants = args.variants or list(bc.ALL_VARIANTS)
    quick = args.quick
    tag = args.tag or f"bench-{'+'.join(s.name for s in settings)}-{device.type}"
    if not tag or any(c in tag for c in "/\\") or tag.startswith("."):
        raise BenchArgumentError(f"--tag must be a plain file stem, got {tag!r}")
    if args.threads:
        torch.set_num_threads(args.threads)
    return {
        "device": device, "settings": settings, "variants": variants, "phases": args.phases,
        "compile": compile_reference, "out": out, "tag": tag, "seed": args.seed, "memory": args.memory,
        "progress": args.progress, "quick": quick,
        "warmup": args.warmup or (1 if quick else 2),
        "budget_s": args.budget or (1.0 if quick else (20.0 if cuda else 40.0)),
        "min_rounds": args.min_rounds or (2 if quick else (20 if cuda else 5)),
        "max_rounds": 3 if quick else (200 if cuda else 40),
    }


# ----------------------------------------------------------------------------- timing

class _CpuTimer:
    kind = "wall clock (time.perf_counter), interleaved"

    def __init__(self, device):
        self.device = device

    def start(self, fn):
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3

    def resolve(self, pending):
        return pending


class _CudaTimer:
    kind = "CUDA events, L2 flushed before each call, interleaved"

    def __init__(self, device):
        import torch
        self.torch = torch
        self.device = device
        self.flush = torch.empty(256 << 20, dtype=torch.int8, device=device)

    def start(self, fn):
        torch = self.torch
        self.flush.zero_()
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        fn()
        end.record()
        return (begin, end)

    def resolve(self, pending):
        self.torch.cuda.synchronize(self.device)
        begin, end = pending
        return begin.elapsed_time(end)


def _error_text(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip().splitlines()[0]
    return "error: " + (text[:200] + "..." if len(text) > 200 else text)


def time_cases(cases, timer, *, warmup, budget_s, min_rounds, max_rounds, bar=None):
    """Warm each case up, then time them round-robin (the order rotates every round); cheap cases
    run several times per round so every case gets a similar share of the budget.
    Returns {case.key: list of ms} and {case.key: error text} for cases that raised."""
    samples, errors, estimate = {}, {}, {}
    live = []
    for case in cases:
        try:
            for _ in range(warmup):
                estimate[case.key] = timer.resolve(timer.start(case.fn))
            live.append(case)
        except Exception as exc:  # noqa: BLE001 (one variant failing must not stop the others)
            errors[case.key] = _error_text(exc)
        if bar is not None:
            bar.update(1)
    if not live:
        return samples, errors
    slot = max(estimate[c.key] for c in live)
    per_round = {c.key: max(1, min(10, int(slot / max(estimate[c.key], 1e-3)))) for c in live}
    round_ms = sum(per_round[c.key] * estimate[c.key] for c in live)
    rounds = int(min(max_rounds, max(min_rounds, budget_s * 1e3 // max(round_ms, 1e-3))))
    if bar is not None:
        bar.total += rounds * len(live)
        bar.refresh()
    for c in live:
        samples[c.key] = []
    for r in range(rounds):
        order = live[r % len(live):] + live[:r % len(live)]
        for case in order:
            if case.key in errors:
                continue
            try:
                pending = [timer.start(case.fn) for _ in range(per_round[case.key])]
                samples[case.key].extend(timer.resolve(p) for p in pending)
            except Exception as exc:  # noqa: BLE001
                errors[case.key] = _error_text(exc)
            if bar is not None:
                bar.update(1)
    return samples, errors


def _quantile(sorted_values, q):
    if len(sorted_values) == 1:
        return sorted_values[0]
    pos = q * (len(sorted_values) - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summarise(ms):
    v = sorted(ms)
    return {"median_ms": statistics.median(v), "p25_ms": _quantile(v, 0.25), "p75_ms": _quantile(v, 0.75),
            "iqr_ms": _quantile(v, 0.75) - _quantile(v, 0.25), "min_ms": v[0], "max_ms": v[-1], "reps": len(v)}


def copy_bandwidth(device, reps: int = 5) -> float:
    """Device copy bandwidth in GB/s (read + write) of a 256 MiB (CPU) / 1 GiB (CUDA) tensor copy."""
    import torch

    n = (1 << 30 if device.type == "cuda" else 256 << 20) // 4
    src = torch.ones(n, device=device)
    dst = torch.empty_like(src)
    times = []
    for i in range(reps + 1):
        if device.type == "cuda":
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            dst.copy_(src)
            end.record()
            torch.cuda.synchronize(device)
            ms = begin.elapsed_time(end)
        else:
            t0 = time.perf_counter()
            dst.copy_(src)
            ms = (time.perf_counter() - t0) * 1e3
        if i:
            times.append(ms)
    return 2 * n * 4 / (statistics.median(times) * 1e-3) / 1e9


# ----------------------------------------------------------------------------- memory

def _cuda_peak(case, device) -> int:
    import torch

    case.reset()
    gc.collect()
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    case.fn()
    torch.cuda.synchronize(device)
    return int(torch.cuda.max_memory_allocated(device) - base)


def _proc_status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _memory_probe_main(spec_text: str) -> int:
    """Child process: peak RSS growth of one call of each case; prints one JSON line per case."""
    import torch

    spec = json.loads(spec_text)
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    d = spec["setting"]
    d["head_classes"] = tuple(d["head_classes"])
    setting = bc.Setting(**d)
    pool = bc.InputPool(setting, "cpu", rotations=1, seed=spec["seed"])
    for group, variant, phase in spec["cases"]:
        line = {"variant": variant, "phase": phase}
        try:
            case = _make_case(group, variant, phase, setting, pool, spec["seed"])
            for _ in range(spec.get("warmup", 1)):
                case.fn()
            case.reset()
            gc.collect()
            if _reset_peak_rss():
                base = _proc_status_kib("VmRSS")
                case.fn()
                peak = _proc_status_kib("VmHWM")
                line.update(peak_bytes=max(0, peak - base) * 1024, method="peak RSS growth (VmHWM), child process")
            else:  # no clear_refs: ru_maxrss only grows, so this is a lower bound
                import resource
                base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                case.fn()
                peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                line.update(peak_bytes=max(0, peak - base) * 1024, method="ru_maxrss growth (lower bound)")
            del case
        except Exception as exc:  # noqa: BLE001
            line["error"] = _error_text(exc)
        gc.collect()
        print(json.dumps(line), flush=True)
    return 0


def cpu_memory(setting, cases, *, seed, compile_reference, timeout_s=900) -> dict:
    """Run the memory probe in a child process; returns {(variant, phase): (bytes or None, method/error)}."""
    import torch

    spec = {"setting": setting.__dict__ | {"head_classes": list(setting.head_classes)},
            "cases": [[c.group, c.variant, c.phase] for c in cases], "seed": seed,
            "threads": torch.get_num_threads(), "warmup": 3 if compile_reference else 1}
    env = dict(os.environ)
    # A fixed mmap threshold: glibc then returns every freed tensor to the OS at once, so the resident
    # set follows live memory (the dynamic threshold would keep freed warm-up buffers resident).
    env.setdefault("MALLOC_MMAP_THRESHOLD_", "65536")
    env.setdefault("MALLOC_TRIM_THRESHOLD_", "0")
    cmd = [sys.executable, "-m", "rsg_fast.bench", "--memory-probe", json.dumps(spec)]
    result = {}
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        for ln in lines:
            d = json.loads(ln)
            key = (d["variant"], d["phase"])
            result[key] = (d.get("peak_bytes"), d.get("method") or d.get("error"))
        if proc.returncode != 0 and not lines:
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            for c in cases:
                result[c.key] = (None, f"memory probe failed: {tail[:200]}")
    except subprocess.TimeoutExpired:
        for c in cases:
            result.setdefault(c.key, (None, f"memory probe timed out after {timeout_s} s"))
    return result


# ----------------------------------------------------------------------------- the run

def _make_case(group, variant, phase, setting, pool, seed):
    if group == "module":
        return bc.module_case(variant, setting, phase, pool, seed)
    return bc.step_case(variant, setting, phase, pool, seed)


def _environment(device) -> dict:
    import numpy
    import torch

    import rsg_fast
    try:
        import triton
        triton_version = triton.__version__
    except Exception:  # noqa: BLE001
        triton_version = None
    dev = {"type": device.type, "threads": torch.get_num_threads(),
           "interop_threads": torch.get_num_interop_threads(), "cpu_count": os.cpu_count(),
           "cpu": _cpu_name(), "platform": platform.platform()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        dev.update(name=props.name, capability=f"{props.major}.{props.minor}",
                   memory_gib=round(props.total_memory / (1 << 30), 1))
    else:
        dev["name"] = dev["cpu"]
    versions = {"python": platform.python_version(), "torch": torch.__version__, "triton": triton_version,
                "numpy": numpy.__version__, "rsg_fast": getattr(rsg_fast, "__version__", None),
                "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None}
    return {"device": dev, "versions": versions, "commit": _git_commit()}


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _git_commit() -> dict:
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)
        if head.returncode != 0:
            return {"sha": None, "dirty": None}
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
        changed = [ln[3:] for ln in dirty.stdout.splitlines() if ln.strip()]
        return {"sha": head.stdout.strip(), "dirty": bool(changed), "changed_files": changed[:50]}
    except (OSError, subprocess.SubprocessError):
        return {"sha": None, "dirty": None}


def _loadavg():
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def run(plan: dict, argv: list[str], on_setting=None) -> dict:
    """Time and measure every case of every setting; returns the result document (see SCHEMA)."""
    import torch
    from tqdm.auto import tqdm

    device = plan["device"]
    started = time.time()
    env = _environment(device)
    load_start = _loadavg()
    timer = _CudaTimer(device) if device.type == "cuda" else _CpuTimer(device)
    copy_gbps = copy_bandwidth(device)
    rows = []
    bar = tqdm(total=0, desc="rsg-fast bench", unit="call", disable=not plan["progress"], file=sys.stderr,
               dynamic_ncols=True)
    date = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")

    def document(complete: bool, pending=()) -> dict:
        result = {
            "schema": SCHEMA, "tool": "rsg-fast bench", "command": "rsg-fast bench " + " ".join(argv),
            "date": date,
            **env,
            "load_average": {"start": load_start, "end": _loadavg()},
            "settings": [s.describe() | {"pairs_generation": bc.pair_count(s),
                                         "label_counts": bc.label_counts(s) if s.num_classes <= 100 else None}
                         for s in plan["settings"]],
            "timing": {"method": timer.kind, "warmup_calls": plan["warmup"], "budget_s": plan["budget_s"],
                       "min_rounds": plan["min_rounds"], "max_rounds": plan["max_rounds"],
                       "rotations": {s.name: bc.default_rotations(s, device) for s in plan["settings"]},
                       "spread": "p25..p75 (IQR) of the per-call times", "cuda_graphs": False,
                       "compile_reference": plan["compile"], "quick": plan["quick"]},
            "copy_bandwidth_gbps": copy_gbps,
            "rows": rows + list(pending),
            "wall_s": round(time.time() - started, 1),
        }
        result["complete"] = complete
        result["targets"] = targets(result)
        return result

    for setting in plan["settings"]:
        pool = bc.InputPool(setting, device, seed=plan["seed"])
        planned = []   # (group, variant, phase, reason-or-None)
        for variant in plan["variants"]:
            group = "module" if variant in bc.MODULE_VARIANTS else "step"
            phases = ["-"] if variant == "resnet32" else plan["phases"]
            why = bc.variant_unavailable(variant, device, compile_reference=plan["compile"], setting=setting)
            for phase in phases:
                planned.append((group, variant, phase, why))
        bar.total += sum(1 for p in planned if p[3] is None)
        setting_rows = {}
        for group in ("module", "step"):
            cases, build_errors = [], {}
            for g, variant, phase, why in planned:
                if g != group:
                    continue
                row = {"setting": setting.name, "group": group, "variant": variant, "phase": phase,
                       "status": f"skipped: {why}" if why else "ok"}
                setting_rows[(variant, phase)] = row
                if why:
                    continue
                bar.set_description(f"{setting.name}: building {variant} {phase}")
                try:
                    cases.append(_make_case(group, variant, phase, setting, pool, plan["seed"]))
                except Exception as exc:  # noqa: BLE001
                    build_errors[(variant, phase)] = _error_text(exc)
                    bar.update(1)
            if not cases and not build_errors:
                continue
            bar.set_description(f"{setting.name}: timing {group}")
            share = 0.4 if group == "module" and any(p[0] == "step" and p[3] is None for p in planned) else 1.0
            if group == "step":
                share = 0.6 if any(p[0] == "module" and p[3] is None for p in planned) else 1.0
            # torch.compile compiles during its first calls: give every case of that group more warm-up.
            extra = 2 if any(c.variant == "reference-compiled" for c in cases) else 0
            samples, errors = time_cases(cases, timer, warmup=plan["warmup"] + extra, budget_s=plan["budget_s"] * share,
                                         min_rounds=plan["min_rounds"], max_rounds=plan["max_rounds"], bar=bar)
            errors.update(build_errors)
            for case in cases:
                row = setting_rows[case.key]
                row["pairs"] = case.meta.get("pairs")
                if case.key in errors:
                    row["status"] = errors[case.key]
                    continue
                row.update(summarise(samples[case.key]))
                if case.bytes_moved:
                    row["bytes_moved"] = case.bytes_moved
                    row["gbps"] = case.bytes_moved / (row["median_ms"] * 1e-3) / 1e9
                    row["pct_copy_bw"] = 100.0 * row["gbps"] / copy_gbps
            for key, err in build_errors.items():
                setting_rows[key]["status"] = err
            if plan["memory"]:
                bar.set_description(f"{setting.name}: memory {group}")
                ok = [c for c in cases if setting_rows[c.key]["status"] == "ok"]
                if device.type == "cuda":
                    for case in ok:
                        try:
                            setting_rows[case.key].update(peak_mem_bytes=_cuda_peak(case, device),
                                                          mem_method="torch.cuda.max_memory_allocated growth")
                        except Exception as exc:  # noqa: BLE001
                            setting_rows[case.key]["mem_method"] = _error_text(exc)
                elif ok:
                    measured = cpu_memory(setting, ok, seed=plan["seed"], compile_reference=plan["compile"])
                    for case in ok:
                        peak, method = measured.get(case.key, (None, "not measured"))
                        setting_rows[case.key].update(peak_mem_bytes=peak, mem_method=method)
            del cases
            if on_setting is not None:   # partial results survive a run killed later on
                done = [r for r in setting_rows.values() if r.get("median_ms") is not None or r["status"] != "ok"]
                on_setting(document(False, done))
            gc.collect()
        _relative(setting_rows)
        for row in setting_rows.values():
            row.update(setting=setting.name)
            if row.get("peak_mem_bytes") is not None:
                row["peak_mem_mb"] = row["peak_mem_bytes"] / 2**20
        rows.extend(setting_rows.values())
        del pool
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    bar.close()
    return document(True)


def _relative(rows: dict) -> None:
    """Speed-up over the reference (same phase; step rows: over ResNet-32 + ReferenceRSG) and, for
    step rows with RSG, the overhead over the plain ResNet-32 step."""
    plain = rows.get(("resnet32", "-"), {}).get("median_ms")
    for (variant, phase), row in rows.items():
        if row.get("median_ms") is None:
            continue
        base_variant = "reference" if variant in bc.MODULE_VARIANTS else "resnet32+reference"
        base = rows.get((base_variant, phase), {}).get("median_ms")
        if base is not None and variant != "resnet32":
            row["speedup_vs_reference"] = base / row["median_ms"]
        if plain is not None and variant in ("resnet32+reference", "resnet32+rsg"):
            row["overhead_vs_no_rsg_pct"] = 100.0 * (row["median_ms"] / plain - 1.0)


def targets(result: dict) -> list[dict]:
    """The project's targets, with what this run measured for them (None where not measured here)."""
    out = []
    for row in result["rows"]:
        if row.get("median_ms") is None:
            continue
        if row["variant"] == "rsg-torch" or row["variant"] == "rsg-triton":
            out.append({"target": "rsg_speedup", "setting": row["setting"], "variant": row["variant"],
                        "phase": row["phase"], "measured": row.get("speedup_vs_reference"), "unit": "x",
                        "goal": TARGETS["rsg_speedup"]})
        if row["variant"] == "resnet32+rsg":
            out.append({"target": "step_overhead", "setting": row["setting"], "variant": row["variant"],
                        "phase": row["phase"], "measured": row.get("overhead_vs_no_rsg_pct"), "unit": "%",
                        "goal": TARGETS["step_overhead"]})
    by_key = {(r["setting"], r["variant"], r["phase"]): r for r in result["rows"]}
    for (setting, variant, phase), row in by_key.items():
        if variant not in ("rsg-torch", "rsg-triton"):
            continue
        ref = by_key.get((setting, "reference", phase), {}).get("peak_mem_bytes")
        mine = row.get("peak_mem_bytes")
        if ref and mine:
            out.append({"target": "memory_ratio", "setting": setting, "variant": variant, "phase": phase,
                        "measured": ref / mine, "unit": "x", "goal": TARGETS["memory_ratio"]})
    return out


# ----------------------------------------------------------------------------- report and files

def _fmt(value, spec, empty="-"):
    return empty if value is None else format(value, spec)


def format_report(result: dict) -> str:
    dev, ver = result["device"], result["versions"]
    lines = [f"rsg-fast bench  {result['date']}  {dev['type']}: {dev['name']}  threads={dev['threads']}  "
             f"torch {ver['torch']}  triton {ver['triton']}  commit {(result['commit']['sha'] or '?')[:10]}"
             f"{'+dirty' if result['commit'].get('dirty') else ''}",
             f"copy bandwidth {result['copy_bandwidth_gbps']:.1f} GB/s; timing: {result['timing']['method']}; "
             f"load average {result['load_average']['start']} -> {result['load_average']['end']}"]
    cuda = dev["type"] == "cuda"
    head = ["variant", "phase", "median ms", "spread ms", "vs ref", "vs no-RSG", "peak MB"]
    if cuda:
        head += ["GB/s", "% copy"]
    for s in result["settings"]:
        lines.append("")
        lines.append(f"[{s['name']}] N={s['batch']} maps {s['maps']} K={s['centers']} D={s['dim']} "
                     f"classes={s['num_classes']} heads={s['head_classes']} rho={s['rho']:g} "
                     f"new samples/batch={s['pairs_generation']}")
        table = [head]
        for r in (r for r in result["rows"] if r["setting"] == s["name"]):
            if r.get("median_ms") is None:
                table.append([r["variant"], r["phase"], r["status"], "", "", "", ""] + (["", ""] if cuda else []))
                continue
            line = [r["variant"], r["phase"], _fmt(r["median_ms"], ".2f"),
                    f"{r['p25_ms']:.2f}..{r['p75_ms']:.2f}", _fmt(r.get("speedup_vs_reference"), ".1f") + (
                        "x" if r.get("speedup_vs_reference") is not None else ""),
                    _fmt(r.get("overhead_vs_no_rsg_pct"), "+.1f") + ("%" if r.get("overhead_vs_no_rsg_pct")
                                                                      is not None else ""),
                    _fmt(r.get("peak_mem_mb"), ".1f")]
            if cuda:
                line += [_fmt(r.get("gbps"), ".1f"), _fmt(r.get("pct_copy_bw"), ".1f")]
            table.append(line)
        full = [row for row in table if not str(row[2]).startswith(("skipped", "error"))]
        widths = [max(len(str(row[i])) for row in table if row in full or i < 2) for i in range(len(head))]
        for row in table:
            if row not in full:
                lines.append(f"  {row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]}")
            else:
                lines.append("  " + "  ".join(f"{str(c):>{w}}" if i >= 2 else f"{str(c):<{w}}"
                                              for i, (c, w) in enumerate(zip(row, widths))))
    if result["targets"]:
        lines.append("")
        lines.append("targets (measured here; see TARGETS for the conditions each is defined at):")
        for t in result["targets"]:
            value = _fmt(t["measured"], ".2f") + t["unit"]
            lines.append(f"  {t['target']:<14} {t['setting']:<14} {t['variant']:<13} {t['phase']:<12} {value:>9}"
                         f"   goal {t['goal']}")
    lines.append(f"\nwall time {result['wall_s']} s")
    return "\n".join(lines)


def write_outputs(result: dict, out: Path, tag: str, chart: bool = True) -> dict:
    """Write <tag>.json, <tag>.csv and <tag>.png (when matplotlib imports) to ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    png = out / f"{tag}.png"
    note = write_chart(result, png) if chart else "chart not drawn yet (partial results)"
    if note is None:
        paths["chart"] = str(png)
        result["chart"] = png.name
    else:
        result["chart"] = None
        result["chart_note"] = note
    json_path = out / f"{tag}.json"
    json_path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    paths["json"] = str(json_path)
    csv_path = out / f"{tag}.csv"
    settings = {s["name"]: s for s in result["settings"]}
    with open(csv_path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for r in result["rows"]:
            s = settings[r["setting"]]
            writer.writerow({
                **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()},
                "date": result["date"], "commit": result["commit"]["sha"], "device": result["device"]["type"],
                "device_name": result["device"]["name"], "threads": result["device"]["threads"],
                "torch": result["versions"]["torch"], "triton": result["versions"]["triton"],
                "batch": s["batch"], "maps": s["maps"], "centers": s["centers"], "dim": s["dim"],
                "classes": s["num_classes"], "head_classes": s["head_classes"],
            })
    paths["csv"] = str(csv_path)
    return dict(sorted(paths.items()))


def write_chart(result: dict, path: Path) -> str | None:
    """Median time (log scale, p25..p75 whiskers) and peak memory per variant and phase. Returns None
    when written, else the reason it was skipped."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:  # noqa: BLE001 (ImportError, or a broken install)
        return "chart skipped: matplotlib is not installed (pip install 'rsg-fast[plot]')"
    settings = [s["name"] for s in result["settings"]]
    fig, axes = plt.subplots(len(settings), 2, figsize=(13, 4.2 * len(settings)), squeeze=False)
    colours = {"contrastive": "#4c72b0", "generation": "#dd8452", "-": "#55a868"}
    for i, name in enumerate(settings):
        rows = [r for r in result["rows"] if r["setting"] == name and r.get("median_ms") is not None]
        variants = list(dict.fromkeys(r["variant"] for r in rows))
        for j, (metric, label) in enumerate((("median_ms", "median ms per call (log)"),
                                             ("peak_mem_mb", "peak memory of one call, MB"))):
            ax = axes[i][j]
            width = 0.38
            if not any(r.get(metric) is not None for r in rows):
                ax.text(0.5, 0.5, "not measured in this run", ha="center", va="center", transform=ax.transAxes)
                ax.set_axis_off()
                continue
            for k, phase in enumerate(("contrastive", "generation", "-")):
                xs, ys, lo, hi = [], [], [], []
                for x, v in enumerate(variants):
                    r = next((r for r in rows if r["variant"] == v and r["phase"] == phase), None)
                    if r is None or r.get(metric) is None:
                        continue
                    offset = 0 if phase == "-" else (k - 0.5) * width
                    xs.append(x + offset)
                    ys.append(r[metric])
                    if metric == "median_ms":
                        lo.append(r[metric] - r["p25_ms"])
                        hi.append(r["p75_ms"] - r[metric])
                if xs:
                    ax.bar(xs, ys, width, color=colours[phase], label=phase if phase != "-" else "no phase",
                           yerr=[lo, hi] if metric == "median_ms" else None, capsize=3)
            ax.set_xticks(range(len(variants)))
            ax.set_xticklabels(variants, rotation=20, ha="right", fontsize=8)
            if metric == "median_ms":
                ax.set_yscale("log")
            ax.set_ylabel(label)
            ax.set_title(f"{name}: {label}", fontsize=10)
            ax.legend(fontsize=8)
            ax.grid(axis="y", alpha=0.3)
    dev = result["device"]
    fig.suptitle(f"rsg-fast bench, {dev['type']} ({dev['name']}, torch threads={dev['threads']}), {result['date']}",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


if __name__ == "__main__":  # python -m rsg_fast.bench
    sys.exit(main())
