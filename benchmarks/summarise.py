"""Print the markdown table of benchmarks/results/README.md from the committed JSON files.

    python benchmarks/summarise.py benchmarks/results/*.json

One row per (setting, variant, phase, dtype) measured, each naming its device, date and command, so every
number in the README comes straight from a file written by `rsg-fast bench`. Files with fused-op rows
(`rsg-fast bench --groups op`) get an op table, and files that report targets a targets list.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from rsg_fast.bench.report import SCHEMA, measured_text, row_dtype


def _f(value, spec, suffix=""):
    return "" if value is None else format(value, spec) + suffix


def rows(docs):
    # CUDA runs count each row's device commands and host synchronisations: two more columns then
    counted = any("launches" in r or "host_syncs" in r for _, doc in docs for r in doc["rows"])
    extra = " launches | host syncs |" if counted else ""
    yield ("| setting | variant | phase | median ms (p25..p75) | vs reference | vs no RSG | peak MB |" + extra +
           " device, threads | date (UTC) | file |")
    yield "|---|---|---|---|---|---|---|" + ("---|---|" if counted else "") + "---|---|---|"
    for path, doc in docs:
        dev = doc["device"]
        where = f"{dev['type']} {dev['name']}, {dev['threads']} threads"
        for r in doc["rows"]:
            if r.get("median_ms") is None or r.get("group") == "op":
                continue
            counts = f" {_f(r.get('launches'), 'd')} | {_f(r.get('host_syncs'), 'd')} |" if counted else ""
            # a row timed under autocast (--amp) says so beside its phase
            phase = r["phase"] if row_dtype(r) == "fp32" else f"{r['phase']} ({r['dtype']} autocast)"
            yield (f"| {r['setting']} | {r['variant']} | {phase} | {r['median_ms']:.1f} "
                   f"({r['p25_ms']:.1f}..{r['p75_ms']:.1f}) | {_f(r.get('speedup_vs_reference'), '.1f', 'x')} | "
                   f"{_f(r.get('overhead_vs_no_rsg_pct'), '+.1f', ' %')} | {_f(r.get('peak_mem_mb'), '.1f')} |{counts} "
                   f"{where} | {doc['date']} | [{Path(path).name}]({Path(path).name}) |")


def commands(docs):
    for path, doc in docs:
        load = doc.get("load_average", {})
        yield (f"- `{Path(path).name}`: `{doc['command']}` on {doc['device']['type']} ({doc['device']['name']}), "
               f"{doc['date']}, commit {(doc['commit'].get('sha') or '?')[:10]}"
               f"{' (+uncommitted changes)' if doc['commit'].get('dirty') else ''}, torch {doc['versions']['torch']}, "
               f"load average {load.get('start')} -> {load.get('end')}, wall {doc.get('wall_s')} s")


def op_rows(path, doc):
    """The fused-op table of one result file (rows of ``--groups op``)."""
    ops = [r for r in doc["rows"] if r.get("group") == "op" and r.get("median_ms") is not None]
    if not ops:
        return
    yield f"`{Path(path).name}` ({doc['device']['type']} {doc['device']['name']}, copy bandwidth " \
          f"{doc['copy_bandwidth_gbps']:.0f} GB/s, {doc['date']}):"
    yield ""
    yield "| setting | op:impl | dtype | mode | median us (p25..p75) | vs reference | vs torch | GB/s | % copy |"
    yield "|---|---|---|---|---|---|---|---|---|"
    for r in ops:
        yield (f"| {r['setting']} | {r['variant']} | {r['dtype']} | {r['mode']} | {r['median_ms'] * 1e3:.1f} "
               f"({r['p25_ms'] * 1e3:.1f}..{r['p75_ms'] * 1e3:.1f}) | {_f(r.get('speedup_vs_reference'), '.1f', 'x')} | "
               f"{_f(r.get('speedup_vs_torch'), '.2f', 'x')} | {_f(r.get('gbps'), '.1f')} | {_f(r.get('pct_copy_bw'), '.1f')} |")


def target_lines(path, doc):
    """The targets a result file reports (files written before targets had a status have none)."""
    for t in doc.get("targets", []):
        if t.get("status") in ("met", "missed"):
            where = " ".join(str(t[k]) for k in ("setting", "variant", "phase", "dtype", "mode") if t.get(k))
            note = f" ({t['note']})" if t.get("note") else ""
            yield f"- `{Path(path).name}`: {t['target']} {t['status']}: {where}, {measured_text(t)}{note}"


def pytest_benchmark_rows(path, doc):
    """The op table from a ``--benchmark-json`` file of ``pytest benchmarks/``."""
    cpu = doc["machine_info"].get("cpu", {}).get("brand_raw", "?")
    yield "| group | benchmark | median ms | IQR ms | rounds | setting, device, threads | date (UTC) |"
    yield "|---|---|---|---|---|---|---|"
    for b in sorted(doc["benchmarks"], key=lambda b: (b["group"] or "", b["stats"]["median"])):
        st, info = b["stats"], b.get("extra_info", {})
        yield (f"| {b['group']} | {b['name']} | {st['median'] * 1e3:.3f} | {st['iqr'] * 1e3:.3f} | {st['rounds']} | "
               f"{info.get('setting')}, {info.get('device')} ({cpu}), {info.get('threads')} | {doc['datetime'][:19]}Z |")


if __name__ == "__main__":
    files = sys.argv[1:] or sorted(str(p) for p in (Path(__file__).parent / "results").glob("*.json"))
    docs = [(f, json.loads(Path(f).read_text())) for f in files]
    bench_docs = [(f, doc) for f, doc in docs if doc.get("schema") == SCHEMA]
    pytest_docs = [(f, doc) for f, doc in docs if "machine_info" in doc]
    print("\n".join(rows(bench_docs)))
    print()
    print("\n".join(commands(bench_docs)))
    for f, doc in bench_docs:
        table = list(op_rows(f, doc))
        if table:
            print("\n" + "\n".join(table))
    targets = [line for f, doc in bench_docs for line in target_lines(f, doc)]
    if targets:
        print("\n" + "\n".join(targets))
    for f, doc in pytest_docs:
        print(f"\n`{Path(f).name}`:\n")
        print("\n".join(pytest_benchmark_rows(f, doc)))
