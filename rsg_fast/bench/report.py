"""The bench's outputs: the printed table, and the JSON and CSV files (the chart is ``chart.py``).

The JSON document (schema ``SCHEMA``) holds: ``schema, tool, command, date, device, versions,
commit, load_average, settings, timing, copy_bandwidth_gbps, rows, wall_s, complete, targets``
(and ``chart`` / ``chart_note``). Each row: ``setting, group, variant, phase, dtype, mode, status``
("ok", "skipped: why" or "error: what"; a module or step row's ``dtype`` is fp32, or bf16 / fp16
for one timed under autocast, ``--amp``) and, when timed, ``median_ms, p25_ms, p75_ms, iqr_ms,
min_ms, max_ms, reps, threads, noisy``, ``speedup_vs_reference``, ``overhead_vs_no_rsg_pct`` (step
rows with RSG), ``speedup_vs_torch`` (Triton op rows), ``peak_mem_bytes``, ``peak_mem_mb``, ``mem_method``,
``bytes_moved, gbps, pct_copy_bw``, ``pairs``, and on CUDA for module and step rows
``launches, kernels, copies, fills, host_syncs`` (``launch_probe.py``; ``launches_error`` when the
profiler failed). The CSV has one line per row, ``CSV_COLUMNS``.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

SCHEMA = "rsg-fast-bench/1"
CSV_COLUMNS = [
    "date", "commit", "device", "device_name", "threads", "torch", "triton", "setting", "batch", "maps",
    "centers", "dim", "classes", "head_classes", "group", "variant", "phase", "status", "median_ms", "p25_ms",
    "p75_ms", "iqr_ms", "min_ms", "reps", "speedup_vs_reference", "overhead_vs_no_rsg_pct", "peak_mem_mb",
    "mem_method", "bytes_moved", "gbps", "pct_copy_bw", "pairs",
    # added after the first format (appended, so older readers keep working)
    "dtype", "mode", "speedup_vs_torch",
    "launches", "kernels", "copies", "fills", "host_syncs",
]


def _fmt(value, spec, suffix="", empty="-"):
    return empty if value is None else format(value, spec) + suffix


def measured_text(target: dict) -> str:
    """A target entry's measured value with its unit: counts (a unit such as " launches") whole,
    ratios and percentages to two decimals; "-" when not measured."""
    return _fmt(target["measured"], ".0f" if target["unit"].startswith(" ") else ".2f", target["unit"])


def row_dtype(r: dict) -> str:
    """A row's dtype; a module or step row of a file written before ``--amp`` has none: fp32."""
    return r.get("dtype", "fp32")


def row_case(r: dict) -> str:
    """Which of its variant's rows ``r`` is, for the lists of rows not timed: a module or step row's
    phase (under autocast its dtype first: "bf16 contrastive", or "bf16" without a phase), an op
    row's dtype and mode."""
    if r.get("group") == "op":
        return f"{r['dtype']} {r['mode']}"
    dtype = row_dtype(r)
    return r["phase"] if dtype == "fp32" else f"{dtype} {r['phase']}".removesuffix(" -")


def _table(head: list[str], lines: list[list[str]], skipped: list[tuple[str, str, str]],
           left: int = 2) -> list[str]:
    """Aligned columns, the first ``left`` to the left; then the rows not timed, one line per (name,
    status) with their cases merged."""
    widths = [max(len(str(row[i])) for row in [head, *lines]) for i in range(len(head))]
    out = []
    for row in [head, *lines]:
        out.append("  " + "  ".join(f"{str(c):<{w}}" if i < left else f"{str(c):>{w}}"
                                    for i, (c, w) in enumerate(zip(row, widths))))
    merged: dict[tuple[str, str], list[str]] = {}
    for name, what, status in skipped:
        merged.setdefault((name, status), []).append(what)
    for (name, status), what in merged.items():
        out.append(f"  {name:<{widths[0]}}  ({', '.join(dict.fromkeys(what))}) {status}")
    return out


def _module_lines(rows: list[dict], cuda: bool) -> list[str]:
    # a dtype column only where some row ran under autocast (--amp): an fp32 run's table stays as it was
    amp = any(row_dtype(r) != "fp32" for r in rows)
    head = ["variant", "phase", *(["dtype"] if amp else []), "median ms", "spread ms", "vs ref", "vs no-RSG",
            "peak MB"] + (["GB/s", "% copy", "launches", "syncs"] if cuda else [])
    lines, skipped = [], []
    for r in rows:
        if r.get("median_ms") is None:
            skipped.append((r["variant"], row_case(r), r["status"]))
            continue
        line = [r["variant"], r["phase"], *([row_dtype(r)] if amp else []), f"{r['median_ms']:.2f}",
                f"{r['p25_ms']:.2f}..{r['p75_ms']:.2f}", _fmt(r.get("speedup_vs_reference"), ".1f", "x"),
                _fmt(r.get("overhead_vs_no_rsg_pct"), "+.1f", "%"), _fmt(r.get("peak_mem_mb"), ".1f")]
        if cuda:
            line += [_fmt(r.get("gbps"), ".1f"), _fmt(r.get("pct_copy_bw"), ".1f"), _fmt(r.get("launches"), "d"),
                     _fmt(r.get("host_syncs"), "d")]
        lines.append(line)
    note = ["  (bf16, fp16: under torch.autocast, fp16 steps with a GradScaler; vs ref and vs no-RSG compare "
            "rows of one dtype)"] if amp else []
    return note + _table(head, lines, skipped, left=3 if amp else 2)


def _op_lines(rows: list[dict]) -> list[str]:
    head = ["op:impl", "dtype mode", "median us", "spread us", "vs ref", "vs torch", "GB/s", "% copy"]
    lines, skipped = [], []
    for r in rows:
        if r.get("median_ms") is None:
            skipped.append((r["variant"], row_case(r), r["status"]))
            continue
        lines.append([r["variant"], f"{r['dtype']} {r['mode']}", f"{r['median_ms'] * 1e3:.1f}",
                      f"{r['p25_ms'] * 1e3:.1f}..{r['p75_ms'] * 1e3:.1f}",
                      _fmt(r.get("speedup_vs_reference"), ".1f", "x"), _fmt(r.get("speedup_vs_torch"), ".2f", "x"),
                      _fmt(r.get("gbps"), ".1f"), _fmt(r.get("pct_copy_bw"), ".1f")])
    return _table(head, lines, skipped)


def format_report(result: dict) -> str:
    """The table ``rsg-fast bench`` prints: one block per setting, then the targets."""
    dev, ver, commit = result["device"], result["versions"], result["commit"]
    lines = [f"rsg-fast bench  {result['date']}  {dev['type']}: {dev['name']}  threads={dev['threads']}  "
             f"torch {ver['torch']}  triton {ver['triton']}  commit {(commit.get('sha') or '?')[:10]}"
             f"{'+dirty' if commit.get('dirty') else ''}",
             f"copy bandwidth {result['copy_bandwidth_gbps']:.1f} GB/s; timing: {result['timing']['method']}; "
             f"load average {result['load_average']['start']} -> {result['load_average']['end']}"]
    busy = busy_note(result)
    if busy:
        lines.append(busy)
    cuda = dev["type"] == "cuda"
    for s in result["settings"]:
        rows = [r for r in result["rows"] if r["setting"] == s["name"]]
        if not rows:
            continue
        lines += ["", f"[{s['name']}] N={s['batch']} maps {s['maps']} K={s['centers']} D={s['dim']} "
                      f"classes={s['num_classes']} heads={s['head_classes']} rho={s['rho']:g} "
                      f"new samples/batch={s['pairs_generation']}"]
        whole = [r for r in rows if r.get("group") != "op"]
        ops = [r for r in rows if r.get("group") == "op"]
        if whole:
            lines += _module_lines(whole, cuda)
        if ops:
            lines += ["  fused ops, one call each (us = microseconds):"] + _op_lines(ops)
    if result.get("targets"):
        lines += ["", "targets (reported, never asserted):"]
        if result.get("timing", {}).get("quick"):
            lines.append("  (--quick: a few rounds per row, so met / missed below is indicative only; "
                         "judge the targets on a run without --quick)")
        goals = {}
        for t in result["targets"]:
            goals.setdefault(t["target"], t["goal"])
            where = " ".join(str(t[k]) for k in ("setting", "variant", "phase", "dtype", "mode") if t.get(k))
            if t["status"] == "not measured":   # a row named (where) when others measured the target
                lines.append(f"  {t['status']:<12}  {t['target']}: {where + ': ' if where else ''}{t.get('note', '')}")
                continue
            note = f"  ({t['note']})" if t.get("note") else ""
            lines.append(f"  {t['status']:<12}  {t['target']}: {where}  {measured_text(t)}{note}")
        lines += ["  goals:"] + [f"    {name}: {goal}" for name, goal in goals.items()]
    lines.append(f"\nwall time {result['wall_s']} s")
    return "\n".join(lines)


def busy_note(result: dict) -> str | None:
    """A warning line when other work shared the CPUs: the 1-minute load average at the start or end,
    less the bench's own threads, above half the CPUs. CPU timings then stall on other processes
    (README: benchmarks/results; a loaded 2-core VM once read 4.8 s for a 0.5 s step)."""
    dev, load = result["device"], result.get("load_average") or {}
    cpus = dev.get("cpu_count") or 0
    ones = [point[0] for point in (load.get("start"), load.get("end")) if point]
    if dev["type"] != "cpu" or not cpus or not ones:
        return None
    others = max(ones) - dev.get("threads", 1)
    if others <= cpus / 2:
        return None
    return (f"warning: other work shared the CPUs (load average {max(ones):.2f} on {cpus} CPUs, this bench "
            f"using {dev.get('threads')} threads): these timings and the targets below are not comparable; "
            "rerun on a quiet machine")


def write_json(result: dict, path: Path) -> None:
    """Write atomically (a partial file left by a killed run is still valid JSON)."""
    from rsg_fast.checkpoint import atomic_write_text   # imports torch: not at this module's import

    atomic_write_text(str(path), json.dumps(result, indent=2, default=str) + "\n")


def write_csv(result: dict, path: Path) -> None:
    settings = {s["name"]: s for s in result["settings"]}
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for r in result["rows"]:
            s = settings[r["setting"]]
            writer.writerow({
                **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()},
                "date": result["date"], "commit": result["commit"].get("sha"), "device": result["device"]["type"],
                "device_name": result["device"]["name"], "threads": result["device"]["threads"],
                "torch": result["versions"]["torch"], "triton": result["versions"]["triton"],
                "batch": s["batch"], "maps": s["maps"], "centers": s["centers"], "dim": s["dim"],
                "classes": s["num_classes"], "head_classes": s["head_classes"],
            })


def write_outputs(result: dict, out: Path, tag: str, chart: bool = True) -> dict:
    """Write <tag>.json, <tag>.csv and (when ``chart`` and matplotlib imports) <tag>.png to ``out``.
    Returns {"chart"?, "csv", "json": path}."""
    from rsg_fast.bench.chart import write_chart

    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    png = out / f"{tag}.png"
    note = write_chart(result, png) if chart else "chart not drawn yet (partial results)"
    result["chart"] = png.name if note is None else None
    if note is None:
        paths["chart"] = str(png)
        result.pop("chart_note", None)
    else:
        result["chart_note"] = note
    write_json(result, out / f"{tag}.json")
    paths["json"] = str(out / f"{tag}.json")
    write_csv(result, out / f"{tag}.csv")
    paths["csv"] = str(out / f"{tag}.csv")
    return dict(sorted(paths.items()))
