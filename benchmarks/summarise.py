"""Print the markdown table of benchmarks/results/README.md from the committed JSON files.

    python benchmarks/summarise.py benchmarks/results/*.json

One row per (setting, variant, phase) measured, each naming its device, date and command, so every
number in the README comes straight from a file written by `rsg-fast bench`.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def _f(value, spec, suffix=""):
    return "" if value is None else format(value, spec) + suffix


def rows(paths):
    yield ("| setting | variant | phase | median ms (p25..p75) | vs reference | vs no RSG | peak MB | device, threads "
           "| date (UTC) | file |")
    yield "|---|---|---|---|---|---|---|---|---|---|"
    for path in paths:
        doc = json.loads(Path(path).read_text())
        dev = doc["device"]
        where = f"{dev['type']} {dev['name']}, {dev['threads']} threads"
        for r in doc["rows"]:
            if r.get("median_ms") is None:
                continue
            yield (f"| {r['setting']} | {r['variant']} | {r['phase']} | {r['median_ms']:.1f} "
                   f"({r['p25_ms']:.1f}..{r['p75_ms']:.1f}) | {_f(r.get('speedup_vs_reference'), '.1f', 'x')} | "
                   f"{_f(r.get('overhead_vs_no_rsg_pct'), '+.1f', ' %')} | {_f(r.get('peak_mem_mb'), '.1f')} | "
                   f"{where} | {doc['date']} | [{Path(path).name}]({Path(path).name}) |")


def commands(paths):
    for path in paths:
        doc = json.loads(Path(path).read_text())
        load = doc.get("load_average", {})
        yield (f"- `{Path(path).name}`: `{doc['command']}` on {doc['device']['type']} ({doc['device']['name']}), "
               f"{doc['date']}, commit {(doc['commit'].get('sha') or '?')[:10]}"
               f"{' (+uncommitted changes)' if doc['commit'].get('dirty') else ''}, torch {doc['versions']['torch']}, "
               f"load average {load.get('start')} -> {load.get('end')}, wall {doc.get('wall_s')} s")


def pytest_benchmark_rows(path):
    """The op table from a ``--benchmark-json`` file of ``pytest benchmarks/``."""
    doc = json.loads(Path(path).read_text())
    cpu = doc["machine_info"].get("cpu", {}).get("brand_raw", "?")
    yield "| group | benchmark | median ms | IQR ms | rounds | setting, device, threads | date (UTC) |"
    yield "|---|---|---|---|---|---|---|"
    for b in sorted(doc["benchmarks"], key=lambda b: (b["group"] or "", b["stats"]["median"])):
        st, info = b["stats"], b.get("extra_info", {})
        yield (f"| {b['group']} | {b['name']} | {st['median'] * 1e3:.3f} | {st['iqr'] * 1e3:.3f} | {st['rounds']} | "
               f"{info.get('setting')}, {info.get('device')} ({cpu}), {info.get('threads')} | {doc['datetime'][:19]}Z |")


if __name__ == "__main__":
    files = sys.argv[1:] or sorted(str(p) for p in (Path(__file__).parent / "results").glob("*.json"))
    bench_files = [f for f in files if "machine_info" not in json.loads(Path(f).read_text())]
    pytest_files = [f for f in files if f not in bench_files]
    print("\n".join(rows(bench_files)))
    print()
    print("\n".join(commands(bench_files)))
    for f in pytest_files:
        print(f"\n`{Path(f).name}`:\n")
        print("\n".join(pytest_benchmark_rows(f)))
