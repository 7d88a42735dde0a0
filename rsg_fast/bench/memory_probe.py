"""Peak memory of one call: on CUDA in-process, on the CPU in a child process (this module).

CUDA: ``cuda_peak`` = ``torch.cuda.max_memory_allocated`` during one call, above what was allocated
just before it (the previous call's gradients freed first).

CPU: the growth of the peak resident set (VmHWM, reset through ``/proc/self/clear_refs``) during one
call over the resident set just before it. Freed warm-up buffers and other cases' tensors would
blur that in the bench's own process, so ``cpu_memory`` runs a fresh child, with glibc's mmap
threshold fixed so every freed tensor goes back to the OS at once:

    python -m rsg_fast.bench.memory_probe SPEC_JSON

SPEC_JSON (one command-line argument) is an object:
    {"setting": <Setting.to_json()>,                  every field of the benchmark setting
     "cases": [{"group": "module"|"step", "variant": NAME, "phase": PHASE,
                "dtype": "fp32"|"bf16"|"fp16"}, ...],     bf16 / fp16: under autocast (default fp32)
     "seed": 0, "threads": 2, "warmup": 1,           torch threads (null: torch's choice), calls before
     "compile_backend": "inductor"}                   for the -compiled variants
The child prints one JSON line per case, in order:
    {"group": ..., "variant": ..., "phase": ..., "dtype": ..., "peak_bytes": INT, "method": TEXT}   or
    {"group": ..., "variant": ..., "phase": ..., "dtype": ..., "error": TEXT}
and exits 0; a spec it cannot read gives a message on stderr and exit status 2.
"""
from __future__ import annotations

import gc
import json
import os
import subprocess
import sys

import torch

from rsg_fast.bench import cases as bc
from rsg_fast.bench.timers import error_text

SPEC_KEYS = ("setting", "cases", "seed", "threads", "warmup", "compile_backend")
METHOD_CUDA = "torch.cuda.max_memory_allocated growth"
METHOD_RSS = "peak RSS growth (VmHWM), child process"


# ----------------------------------------------------------------------------- CUDA (in process)

def cuda_peak(case: bc.Case, device) -> int:
    case.reset()
    gc.collect()
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    case.fn()
    torch.cuda.synchronize(device)
    return int(torch.cuda.max_memory_allocated(device) - base)


# ----------------------------------------------------------------------------- CPU (the parent side)

def make_spec(setting: bc.Setting, cases, *, seed: int, threads: int | None, warmup: int,
              compile_backend: str) -> dict:
    return {"setting": setting.to_json(), "cases": [{"group": c.group, "variant": c.variant, "phase": c.phase,
                                                     "dtype": c.dtype} for c in cases],
            "seed": seed, "threads": threads, "warmup": warmup, "compile_backend": compile_backend}


def cpu_memory(setting: bc.Setting, cases, *, seed: int, warmup: int = 1, compile_backend: str = "inductor",
               timeout_s: float = 900) -> dict:
    """Run the probe in a child process. Returns {case.key: (peak bytes or None, method or error)}."""
    spec = make_spec(setting, cases, seed=seed, threads=torch.get_num_threads(), warmup=warmup,
                     compile_backend=compile_backend)
    env = dict(os.environ)
    # A fixed mmap threshold: glibc then returns every freed tensor to the OS at once, so the resident
    # set follows live memory (the dynamic threshold would keep freed warm-up buffers resident).
    env.setdefault("MALLOC_MMAP_THRESHOLD_", "65536")
    env.setdefault("MALLOC_TRIM_THRESHOLD_", "0")
    by_name = {(c.variant, c.phase, c.dtype): c.key for c in cases}
    result = {}
    try:
        proc = subprocess.run([sys.executable, "-m", "rsg_fast.bench.memory_probe", json.dumps(spec)], env=env,
                              capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {c.key: (None, f"memory probe timed out after {timeout_s:g} s") for c in cases}
    for line in proc.stdout.splitlines():
        if not line.startswith("{"):
            continue
        reply = json.loads(line)
        key = by_name.get((reply["variant"], reply["phase"], reply["dtype"]))
        if key is not None:
            result[key] = (reply.get("peak_bytes"), reply.get("method") or reply.get("error"))
    if proc.returncode != 0 or len(result) < len(cases):
        tail = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}, no output"])[-1]
        for c in cases:
            result.setdefault(c.key, (None, f"memory probe failed: {tail[:200]}"))
    return result


# ----------------------------------------------------------------------------- CPU (the child side)

def _status_kib(field: str) -> int | None:
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


def _peak_of_one_call(case: bc.Case) -> tuple[int, str]:
    case.reset()
    gc.collect()
    if _reset_peak_rss():
        base = _status_kib("VmRSS")
        case.fn()
        peak = _status_kib("VmHWM")
        return max(0, peak - base) * 1024, METHOD_RSS
    import resource   # no clear_refs: ru_maxrss only grows, so this is a lower bound
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    case.fn()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return max(0, peak - base) * 1024, "ru_maxrss growth (lower bound)"


def probe(spec: dict) -> list[dict]:
    """Measure every case of ``spec``; one reply dict per case (see the module docstring)."""
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    setting = bc.Setting.from_json(spec["setting"])
    pools, built, replies = {}, {}, []
    for item in spec["cases"]:
        dtype = item.get("dtype", "fp32")
        reply = {"group": item["group"], "variant": item["variant"], "phase": item["phase"], "dtype": dtype}
        try:
            if dtype not in pools:
                pools[dtype] = bc.InputPool(setting, "cpu", rotations=1, seed=spec["seed"], dtype=bc.DTYPES[dtype])
            if (item["variant"], dtype) not in built:   # as the bench's own run: one per variant and dtype
                built[item["variant"], dtype] = bc.build(item["group"], item["variant"], setting, "cpu",
                                                         seed=spec["seed"], compile_backend=spec["compile_backend"],
                                                         dtype=dtype)
            case = bc.make_case(item["group"], item["variant"], item["phase"], setting, pools[dtype],
                                seed=spec["seed"], built=built[item["variant"], dtype])
            for _ in range(int(spec["warmup"])):
                case.fn()
            reply["peak_bytes"], reply["method"] = _peak_of_one_call(case)
            case.reset()
            del case
        except Exception as exc:  # noqa: BLE001 (report it for this case, go on with the next)
            reply["error"] = error_text(exc)
        gc.collect()
        replies.append(reply)
        print(json.dumps(reply), flush=True)
    return replies


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if len(argv) != 1:
            raise ValueError("expected one argument, the spec as JSON")
        spec = json.loads(argv[0])
        missing = [k for k in SPEC_KEYS if k not in spec]
        if missing:
            raise ValueError(f"the spec lacks {', '.join(missing)}")
        bc.Setting.from_json(spec["setting"])
    except (ValueError, TypeError, KeyError) as exc:
        print(f"usage: python -m rsg_fast.bench.memory_probe SPEC_JSON\nerror: {exc}", file=sys.stderr)
        return 2
    probe(spec)
    return 0


if __name__ == "__main__":
    sys.exit(main())
