"""The project's performance targets, reported against what a run measured: never asserted.

``evaluate(result, baseline=None)`` returns one entry per measured instance of each target
(setting, variant, phase, ...) with ``status`` "met" or "missed", and one "not measured" entry for
each target this run could not measure (with the reason). A target defined on an H100 but
measured on another GPU says so in its ``note``. The targets are defined on fp32 module and step
rows: rows timed under autocast (``--amp``) measure none of them, only ``cpu_no_slower``, against
the baseline's row of the same dtype.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from rsg_fast.bench.report import row_dtype


@dataclass(frozen=True)
class Target:
    name: str
    goal: str           # the target in words, with where it is defined
    unit: str           # "x" (ratio), "%", or a count's noun (" launches")
    threshold: float
    at_least: bool      # met when measured >= threshold (else when measured <= threshold)
    needs: str          # what a run must include to measure it (the "not measured" reason)


TARGETS = {t.name: t for t in (
    Target("rsg_speedup", "RSG forward+backward >= 10x faster than ReferenceRSG, both phases (2-core CPU, cifar10)",
           "x", 10.0, True, "a CPU run of cifar10 with the reference and rsg-torch rows"),
    Target("step_overhead", "ResNet-32 step with RSG <= 15 % slower than without (2-core CPU, cifar10)",
           "%", 15.0, False, "a CPU run of cifar10 with the resnet32 and resnet32+rsg rows"),
    Target("memory_ratio", ">= 4x less peak memory than ReferenceRSG (CPU, 256x14x14 maps, N=64, K=15, 100 classes)",
           "x", 4.0, True, "a CPU run of --shapes cifar100 --maps 256x14x14 --batch 64 with memory"),
    Target("cpu_no_slower", "no CPU row slower than the baseline run's: median <= the baseline row's p75",
           "x", 1.0, False, "a CPU run with --baseline FILE (an earlier result JSON)"),
    Target("compiled_vs_compiled_reference",
           "torch.compile(RSG) forward+backward >= 3x faster than torch.compile(ReferenceRSG) (H100, cifar10)",
           "x", 3.0, True, "a CUDA run of cifar10 with --compile (rsg-compiled and reference-compiled rows)"),
    Target("compiled_vs_reference",
           "torch.compile(RSG) forward+backward >= 50x faster than eager ReferenceRSG (H100, cifar10)",
           "x", 50.0, True, "a CUDA run of cifar10 with --compile (rsg-compiled and reference rows)"),
    Target("gpu_step_overhead",
           "ResNet-32 step with RSG <= 10 % slower than without, before the threshold (H100, cifar10)",
           "%", 10.0, False, "a CUDA run of cifar10 with the resnet32 and resnet32+rsg rows"),
    Target("gpu_launches",
           "RSG forward+backward on CUDA queues <= 40 device commands (kernels, copies, fills) in the generation "
           "phase (eager, Triton; cifar10)", " launches", 40.0, False,
           "a CUDA run of cifar10 with the rsg-triton or rsg-host rows (launches counted: not --no-launches)"),
    Target("gpu_host_syncs",
           "RSG forward+backward on CUDA synchronises the host <= 1 time (eager and compiled), 0 times with "
           "host_target (cifar10)", " syncs", 1.0, False,
           "a CUDA run of cifar10 with the rsg-triton, rsg-compiled or rsg-host rows (not --no-launches)"),
    Target("kernel_bandwidth", "each fused Triton kernel >= 80 % of the measured copy bandwidth (CUDA, imagenet-lt; "
           "the cuda-graph rows where measured, as eager rows also time the host's launches)",
           "%", 80.0, True, "a CUDA run of --groups op --shapes imagenet-lt with the triton rows"),
)}
H100_TARGETS = ("compiled_vs_compiled_reference", "compiled_vs_reference", "gpu_step_overhead")


def _entry(target: Target, row: dict, measured: float | None, **extra) -> dict:
    t = target
    if measured is None:
        status = "not measured"
    else:
        status = "met" if (measured >= t.threshold if t.at_least else measured <= t.threshold) else "missed"
    entry = {"target": t.name, "setting": row.get("setting"), "variant": row.get("variant"),
             "phase": row.get("phase"), "measured": measured, "unit": t.unit, "status": status, "goal": t.goal}
    if row.get("group") == "op":
        entry.update(dtype=row.get("dtype"), mode=row.get("mode"))
    elif row_dtype(row) != "fp32":     # a module or step row under autocast names its dtype
        entry["dtype"] = row["dtype"]
    return entry | extra


def _ratio(a, b):
    return None if a is None or b in (None, 0) else a / b


def evaluate(result: dict, baseline: dict | None = None) -> list[dict]:
    """The target entries for ``result`` (a bench result document); see the module docstring."""
    device, timed = result["device"], [r for r in result["rows"] if r.get("median_ms") is not None]
    cpu, cuda = device["type"] == "cpu", device["type"] == "cuda"
    # the targets' module and step rows are fp32 (a row written before --amp has no dtype: fp32)
    rows = [r for r in timed if r.get("group") == "op" or row_dtype(r) == "fp32"]
    by_key = {(r["setting"], r["variant"], r["phase"]): r for r in rows if r.get("group") != "op"}
    settings = {s["name"]: s for s in result["settings"]}
    # an op replayed from a CUDA graph is the kernels' own time; its eager row adds the host's launches
    replayed = {(r["setting"], r["variant"], r.get("dtype")) for r in rows
                if r.get("group") == "op" and r.get("mode") == "cuda-graph"}
    out = []
    for r in rows:
        s, v, p = r["setting"], r["variant"], r["phase"]
        if cpu and s == "cifar10" and v in ("rsg-torch", "rsg-triton"):
            out.append(_entry(TARGETS["rsg_speedup"], r, r.get("speedup_vs_reference")))
        if cpu and s == "cifar10" and v == "resnet32+rsg":
            out.append(_entry(TARGETS["step_overhead"], r, r.get("overhead_vs_no_rsg_pct")))
        st = settings.get(s, {})
        if (cpu and v in ("rsg-torch", "rsg-triton") and st.get("maps") == "256x14x14" and st.get("batch") == 64
                and st.get("centers") == 15 and st.get("num_classes") == 100):
            ref = by_key.get((s, "reference", p), {}).get("peak_mem_bytes")
            if ref and r.get("peak_mem_bytes"):
                out.append(_entry(TARGETS["memory_ratio"], r, ref / r["peak_mem_bytes"]))
        if cuda and s == "cifar10" and v == "rsg-compiled":
            ref_c = by_key.get((s, "reference-compiled", p), {}).get("median_ms")
            ref = by_key.get((s, "reference", p), {}).get("median_ms")
            if ref_c is not None:
                out.append(_entry(TARGETS["compiled_vs_compiled_reference"], r, _ratio(ref_c, r["median_ms"])))
            if ref is not None:
                out.append(_entry(TARGETS["compiled_vs_reference"], r, _ratio(ref, r["median_ms"])))
        if cuda and s == "cifar10" and p == "contrastive" and v in ("resnet32+rsg", "resnet32+rsg-host",
                                                                     "resnet32+rsg-compiled"):
            out.append(_entry(TARGETS["gpu_step_overhead"], r, r.get("overhead_vs_no_rsg_pct")))
        if cuda and s == "cifar10" and p == "generation" and v in ("rsg-triton", "rsg-host") \
                and r.get("launches") is not None:
            out.append(_entry(TARGETS["gpu_launches"], r, r["launches"]))
        if cuda and s == "cifar10" and v in ("rsg-triton", "rsg-compiled", "rsg-host") \
                and r.get("host_syncs") is not None:
            # host_target takes the one synchronisation away
            target = replace(TARGETS["gpu_host_syncs"], threshold=0.0) if v == "rsg-host" else TARGETS["gpu_host_syncs"]
            out.append(_entry(target, r, r["host_syncs"]))
        if (cuda and s == "imagenet-lt" and r.get("group") == "op" and v.endswith(":triton")
                and (r.get("mode") == "cuda-graph" or (s, v, r.get("dtype")) not in replayed)):
            out.append(_entry(TARGETS["kernel_bandwidth"], r, r.get("pct_copy_bw")))
    # a row without its comparison (e.g. --variants rsg-torch: no reference row to divide by; a GPU
    # run cut short before resnet32-compiled) measures nothing. Where no row measured the target, the
    # one "not measured" entry below says what the run lacked; where others did, the row stays, named,
    # so that a met target does not hide the rows it could not judge
    some = {e["target"] for e in out if e["measured"] is not None}
    out = [e if e["measured"] is not None else e | {"note": "no value in this run (the row it is compared "
                                                    "with was not timed or failed)"}
           for e in out if e["measured"] is not None or e["target"] in some]
    if cpu and baseline is not None:
        out.extend(_against_baseline(timed, baseline))
    gpu_name = device.get("name", "")
    for e in out:
        if e["target"] in H100_TARGETS and "H100" not in gpu_name:
            e["note"] = f"defined on an H100; measured on {gpu_name}"
    measured = {e["target"] for e in out}
    for t in TARGETS.values():
        if t.name not in measured:
            out.append({"target": t.name, "measured": None, "unit": t.unit, "status": "not measured",
                        "goal": t.goal, "note": f"needs {t.needs}"})
    return out


def _row_key(r: dict) -> tuple:
    return (r["setting"], r["variant"], r["phase"], row_dtype(r), r.get("mode", "eager"))


def _against_baseline(rows: list[dict], baseline: dict) -> list[dict]:
    if baseline.get("device", {}).get("type") != "cpu":
        return []
    old = {_row_key(r): r for r in baseline.get("rows", []) if r.get("median_ms") is not None}
    out = []
    for r in rows:
        b = old.get(_row_key(r))
        if b is None:
            continue
        # met when this median lies within the baseline's own spread or below it
        within = r["median_ms"] <= b["p75_ms"]
        e = _entry(TARGETS["cpu_no_slower"], r, r["median_ms"] / b["median_ms"],
                   baseline_median_ms=b["median_ms"], baseline_p75_ms=b["p75_ms"])
        e["status"] = "met" if within else "missed"
        out.append(e)
    return out
