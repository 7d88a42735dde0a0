"""One bench run: plan every row, time and measure what can run here, relate the rows, document it.

``run(plan)`` returns the result document (``report.py`` describes it). The order:

1. Every row is planned up front (setting x dtype x variant x phase, or op x impl x dtype x mode), each
   either runnable or skipped with the reason; so the progress bar knows its total from the start
   (each runnable case counts: warm-up, timing and, for module and step cases, memory).
2. Per setting, the cases are built and timed. CPU: one batch per group (module, step, op), its
   cases interleaved round by round (``timers.time_interleaved``), then their memory in a child
   process. CUDA: case by case (``timers.time_cuda``), eager cases before compiled ones so that a
   time-limited run keeps the quick rows, memory right after each case. Once every setting is
   timed, the device commands and host synchronisations of each module and step row (``launch_probe``).
3. After each batch (CPU) or case (CUDA) ``on_partial`` gets the document so far (the command line
   writes it), so a run killed later keeps what it measured. A case that fails (a compile error,
   say) becomes an ``error: ...`` row and the run goes on.
"""
from __future__ import annotations

import gc
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rsg_fast.bench import cases as bc
from rsg_fast.bench import environment, launch_probe, memory_probe, op_cases, timers
from rsg_fast.bench.report import SCHEMA
from rsg_fast.bench.targets import evaluate

GROUP_WEIGHT = {"module": 2.0, "step": 3.0, "op": 1.0}   # share of the timing budget (module:step = 0.4:0.6)


@dataclass
class Plan:
    """Everything a run needs, resolved from the command line (``cli.py``)."""

    device: torch.device
    settings: list[bc.Setting]
    groups: list[str]                  # "module", "step", "op"
    variants: list[str]                # module and step variants to plan
    phases: list[str]
    # module and step rows: "fp32" as the published scripts, "bf16" / "fp16" under autocast (--amp)
    amp_dtypes: list[str] = field(default_factory=lambda: ["fp32"])
    variants_in_order: bool = False    # --variants given: on CUDA run them in that order
    ops: list[str] = field(default_factory=lambda: list(op_cases.OPS))
    op_impls: list[str] = field(default_factory=lambda: list(op_cases.OP_IMPLS))
    dtypes: list[str] = field(default_factory=lambda: ["fp32"])   # op rows (--dtypes)
    cuda_graphs: bool = True
    compile: bool = False
    compile_backend: str = "inductor"
    seed: int = 0
    memory: bool = True
    launches: bool = True              # CUDA: count one call's device commands and host syncs
    progress: bool = True
    quick: bool = False
    warmup: int = 2
    budget_s: float = 40.0
    min_rounds: int = 5
    max_rounds: int = 40
    baseline: dict | None = None
    command: str = "rsg-fast bench"
    out: Path = Path("./rsg-bench/")
    tag: str = "bench"


@dataclass
class Planned:
    """One planned row: what it is, and why it cannot run here (None: it can)."""

    setting: bc.Setting
    group: str
    variant: str
    phase: str
    dtype: str = "fp32"
    mode: str = "eager"
    why: str | None = None

    @property
    def key(self):
        return (self.variant, self.phase, self.dtype, self.mode)

    @property
    def label(self) -> str:
        """"variant phase dtype" for the progress line (no phase for the plain ResNet-32 steps)."""
        return f"{self.variant} {self.phase} {self.dtype}".replace(" - ", " ")

    def row(self) -> dict:
        return {"setting": self.setting.name, "group": self.group, "variant": self.variant, "phase": self.phase,
                "dtype": self.dtype, "mode": self.mode, "status": f"skipped: {self.why}" if self.why else "ok"}


def plan_rows(plan: Plan, setting: bc.Setting) -> list[Planned]:
    out = []
    for dtype in plan.amp_dtypes:
        for variant in plan.variants:
            group = bc.GROUP_OF[variant]
            if group not in plan.groups:
                continue
            why = (bc.variant_unavailable(variant, plan.device, with_compile=plan.compile, setting=setting)
                   or bc.dtype_unavailable(dtype, plan.device))
            phases = ["-"] if variant in ("resnet32", "resnet32-compiled") else plan.phases
            out += [Planned(setting, group, variant, phase, dtype, why=why) for phase in phases]
    if "op" in plan.groups:
        modes = ["eager"] + (["cuda-graph"] if plan.device.type == "cuda" and plan.cuda_graphs else [])
        for op in plan.ops:
            for impl in plan.op_impls:
                why = op_cases.op_unavailable(impl, plan.device)
                out += [Planned(setting, "op", f"{op}:{impl}", "-", dtype, mode,
                                why or bc.dtype_unavailable(dtype, plan.device))
                        for dtype in plan.dtypes for mode in modes]
    return out


def _units(p: Planned, memory: bool) -> int:
    """Units of progress of one runnable row: warm-up + timing, + memory for module and step rows."""
    return 2 + (memory and p.group != "op")


def progress_units(planned: list[Planned], memory: bool) -> int:
    """Units of progress of the runnable rows (``_units`` each)."""
    return sum(_units(p, memory) for p in planned if p.why is None)


class _Bar:
    """A tqdm bar whose total is fixed up front; fractional updates show as a percentage."""

    def __init__(self, total: int, enabled: bool):
        from tqdm.auto import tqdm
        import sys
        # set_description() appends ": " itself; the first description gets it by hand
        self.bar = tqdm(total=total, desc="rsg-fast bench: ", disable=not enabled, file=sys.stderr, dynamic_ncols=True,
                        bar_format="{desc}{percentage:3.0f}%|{bar}| [{elapsed}<{remaining}]")

    def advance(self, units: float) -> None:
        self.bar.update(units)

    def say(self, text: str) -> None:
        self.bar.set_description(text)

    def close(self) -> None:
        self.bar.close()


def _case(p: Planned, pool, plan: Plan, built: dict) -> bc.Case:
    if p.group == "op":
        op, impl = p.variant.split(":")
        return op_cases.op_case(op, impl, p.setting, pool, seed=plan.seed, mode=p.mode)
    # one module (or model and optimiser) per variant and dtype, shared by the phases: each dtype's
    # rows start from the same fresh parameters
    if (p.variant, p.dtype) not in built:
        built[p.variant, p.dtype] = bc.build(p.group, p.variant, p.setting, plan.device, seed=plan.seed,
                                             compile_backend=plan.compile_backend, dtype=p.dtype)
    return bc.make_case(p.group, p.variant, p.phase, p.setting, pool, seed=plan.seed,
                        built=built[p.variant, p.dtype])


class _SettingRun:
    """Times and measures the runnable rows of one setting, filling ``rows`` (keyed by ``Planned.key``)."""

    def __init__(self, plan: Plan, setting: bc.Setting, planned: list[Planned], rows: dict, bar: _Bar, partial):
        self.plan, self.setting, self.rows, self.bar, self.partial = plan, setting, rows, bar, partial
        self.runnable = [p for p in planned if p.why is None]
        self.to_probe: list[Planned] = []       # module and step rows whose launches to count (CUDA)
        self.pools: dict[str, bc.InputPool] = {}
        self.built: dict = {}
        weights = {g: GROUP_WEIGHT[g] for g in {p.group for p in self.runnable}}
        self.share = {g: w / sum(weights.values()) for g, w in weights.items()}

    def pool(self, dtype: str) -> bc.InputPool:
        if dtype not in self.pools:
            self.pools[dtype] = bc.InputPool(self.setting, self.plan.device, seed=self.plan.seed,
                                             dtype=bc.DTYPES[dtype])
        return self.pools[dtype]

    def build(self, planned: list[Planned]) -> list[bc.Case]:
        cases = []
        for p in planned:
            self.bar.say(f"{self.setting.name}: building {p.label}")
            try:
                case = _case(p, self.pool(p.dtype), self.plan, self.built)
                cases.append(case)
                self.rows[p.key]["pairs"] = case.meta.get("pairs")
                if case.meta.get("mv_loss"):
                    self.rows[p.key]["mv_loss"] = case.meta["mv_loss"]
            except Exception as exc:  # noqa: BLE001 (a variant that cannot be built is an error row)
                self.rows[p.key]["status"] = timers.error_text(exc)
                self.bar.advance(_units(p, self.plan.memory))
        return cases

    def record(self, case: bc.Case, measurement) -> None:
        row = self.rows[case.key]
        row.update(timers.summarise(measurement))
        if case.bytes_moved:
            row["bytes_moved"] = case.bytes_moved

    def run_cpu(self) -> None:
        for group in ("module", "step", "op"):
            planned = [p for p in self.runnable if p.group == group]
            if not planned:
                continue
            cases = self.build(planned)
            self.bar.say(f"{self.setting.name}: timing {group}")
            # torch.compile compiles during its first calls: give every case of that batch more warm-up.
            extra = 2 if any(c.compiled for c in cases) else 0
            measured, errors = timers.time_interleaved(
                cases, warmup=self.plan.warmup + extra, budget_s=self.plan.budget_s * self.share[group],
                min_rounds=self.plan.min_rounds, max_rounds=self.plan.max_rounds, advance=self.bar.advance)
            for case in cases:
                if case.key in errors:
                    self.rows[case.key]["status"] = errors[case.key]
                else:
                    self.record(case, measured[case.key])
            if group != "op" and self.plan.memory:
                ok = [c for c in cases if self.rows[c.key]["status"] == "ok"]
                self.bar.say(f"{self.setting.name}: memory {group}")
                if ok:
                    found = memory_probe.cpu_memory(self.setting, ok, seed=self.plan.seed, warmup=1 + extra,
                                                    compile_backend=self.plan.compile_backend)
                    for case in ok:
                        peak, method = found[case.key]
                        self.rows[case.key].update(peak_mem_bytes=peak, mem_method=method)
                self.bar.advance(len(cases))
            del cases
            self.partial()
            gc.collect()

    def run_cuda(self) -> None:
        # ops first, then eager module/step cases, compiled cases last (they take longest to start),
        # unless --variants gave an order (a run with a time limit puts what it needs first)
        order = sorted(self.runnable, key=lambda p: (p.group != "op",
                                                     not self.plan.variants_in_order and p.variant.endswith("-compiled")))
        per_group = {g: sum(p.group == g for p in self.runnable) for g in self.share}
        for p in order:
            cases = self.build([p])
            if not cases:
                self.partial()
                continue
            case = cases[0]
            self.bar.say(f"{self.setting.name}: {case.variant} {case.phase} {case.dtype} {case.mode}".replace(" - ", " "))
            budget_ms = 1e3 * self.plan.budget_s * self.share[p.group] / per_group[p.group]
            try:
                m = timers.time_cuda(case, warmup=self.plan.warmup + (2 if case.compiled else 0), budget_ms=budget_ms,
                                     min_reps=self.plan.min_rounds, max_reps=self.plan.max_rounds)
                self.record(case, m)
            except Exception as exc:  # noqa: BLE001 (a failing case is an error row; the run goes on)
                self.rows[case.key]["status"] = timers.error_text(exc)
            self.bar.advance(2)
            if p.group != "op" and self.plan.memory:
                if self.rows[case.key]["status"] == "ok":
                    try:
                        self.rows[case.key].update(peak_mem_bytes=memory_probe.cuda_peak(case, self.plan.device),
                                                   mem_method=memory_probe.METHOD_CUDA)
                    except Exception as exc:  # noqa: BLE001
                        self.rows[case.key]["mem_method"] = timers.error_text(exc)
                self.bar.advance(1)
            case.reset()
            del case, cases
            self.partial()
        self.to_probe = [p for p in order if p.group != "op"]

    def count_launches(self) -> None:
        """``launch_probe.cuda_launches`` of each timed module and step row (``run`` calls it once
        every setting is timed: the profiler's CUPTI hooks may outlive it and slow later launches)."""
        for p in self.to_probe:
            row = self.rows[p.key]
            if row["status"] != "ok":
                continue
            self.bar.say(f"{self.setting.name}: launches {p.label}")
            try:
                case = _case(p, self.pool(p.dtype), self.plan, self.built)
                row.update(launch_probe.cuda_launches(case, self.plan.device))
                case.reset()
            except Exception as exc:  # noqa: BLE001 (no CUPTI, say: the row keeps its timing)
                row["launches_error"] = timers.error_text(exc)
            self.partial()

    def close(self) -> None:
        self.built.clear()
        self.pools.clear()
        gc.collect()
        if self.plan.device.type == "cuda":
            torch.cuda.empty_cache()


def relate(rows: list[dict], copy_gbps: float) -> None:
    """Speed-ups, overheads and bandwidth shares, within each setting, dtype and mode (see report.py
    for the fields): a bf16 row is never compared with an fp32 one."""
    by = {(r["setting"], r["variant"], r["phase"], r["dtype"], r["mode"]): r for r in rows
          if r.get("median_ms") is not None}

    def median(setting, variant, phase, dtype, mode):
        return by.get((setting, variant, phase, dtype, mode), {}).get("median_ms")

    for (s, v, p, d, m), r in by.items():
        if r["group"] == "op":
            op, impl = v.split(":")
            base, torch_path = median(s, f"{op}:reference", p, d, m), median(s, f"{op}:torch", p, d, m)
            if base is not None:
                r["speedup_vs_reference"] = base / r["median_ms"]
            if impl == "triton" and torch_path is not None:
                r["speedup_vs_torch"] = torch_path / r["median_ms"]
        else:
            base = median(s, "reference" if r["group"] == "module" else "resnet32+reference", p, d, m)
            if base is not None and v not in ("resnet32", "resnet32-compiled"):
                r["speedup_vs_reference"] = base / r["median_ms"]
            plain = median(s, "resnet32-compiled" if v.endswith("-compiled") else "resnet32", "-", d, m)
            if plain is not None and v.startswith("resnet32+"):
                r["overhead_vs_no_rsg_pct"] = 100.0 * (r["median_ms"] / plain - 1.0)
        if r.get("bytes_moved"):
            r["gbps"] = r["bytes_moved"] / (r["median_ms"] * 1e-3) / 1e9
            r["pct_copy_bw"] = 100.0 * r["gbps"] / copy_gbps
        if r.get("peak_mem_bytes") is not None:
            r["peak_mem_mb"] = r["peak_mem_bytes"] / 2**20


def run(plan: Plan, on_partial=None) -> dict:
    """Time and measure every planned row of every setting; returns the result document."""
    started, date = time.time(), environment.utc_now()
    if plan.device.type == "cuda" and plan.device.index is not None:
        torch.cuda.set_device(plan.device)   # timers, graphs and Triton launches use the current device
    env = environment.capture(plan.device)
    load_start = environment.load_average()
    copy_gbps = timers.copy_bandwidth(plan.device)
    planned = {s.name: plan_rows(plan, s) for s in plan.settings}
    rows = {s.name: {p.key: p.row() for p in planned[s.name]} for s in plan.settings}
    bar = _Bar(sum(progress_units(p, plan.memory) for p in planned.values()), plan.progress)
    settings = [s.describe() | {"pairs_generation": bc.pair_count(s),
                                "label_counts": bc.label_counts(s) if s.num_classes <= 100 else None}
                for s in plan.settings]
    rotations = {s.name: bc.default_rotations(s, plan.device) for s in plan.settings}

    def document(complete: bool) -> dict:
        flat = [dict(r) for s in plan.settings for r in rows[s.name].values()]
        relate(flat, copy_gbps)
        result = {
            "schema": SCHEMA, "tool": "rsg-fast bench", "command": plan.command, "date": date, **env,
            "load_average": {"start": load_start, "end": environment.load_average()},
            "settings": settings,
            "timing": {"method": timers.CUDA_METHOD if plan.device.type == "cuda" else timers.CPU_METHOD,
                       "warmup_calls": plan.warmup, "budget_s": plan.budget_s, "min_rounds": plan.min_rounds,
                       "max_rounds": plan.max_rounds,
                       "rotations": rotations,
                       "spread": "p25..p75 (IQR) of the per-call times",
                       "cuda_graphs": any(r["mode"] == "cuda-graph" and r.get("median_ms") for r in flat),
                       "compile": plan.compile, "compile_backend": plan.compile_backend if plan.compile else None,
                       "compile_reference": plan.compile, "quick": plan.quick,
                       "launches": launch_probe.METHOD if plan.launches and plan.device.type == "cuda" else None},
            "copy_bandwidth_gbps": copy_gbps,
            "rows": flat,
            "wall_s": round(time.time() - started, 1),
            "complete": complete,
        }
        result["targets"] = evaluate(result, plan.baseline)
        return result

    def partial() -> None:
        if on_partial is not None:
            on_partial(document(False))

    # CUDA with launches: each setting's modules and inputs stay until every setting is timed, then
    # its launches are counted (the profiler must not run before any timing it could slow)
    probe = plan.device.type == "cuda" and plan.launches
    kept: list[_SettingRun] = []
    try:
        for setting in plan.settings:
            one = _SettingRun(plan, setting, planned[setting.name], rows[setting.name], bar, partial)
            try:
                one.run_cuda() if plan.device.type == "cuda" else one.run_cpu()
            finally:
                if probe:
                    kept.append(one)
                else:
                    one.close()
        for one in kept:
            one.count_launches()
    finally:
        for one in kept:
            one.close()
        bar.close()
    return document(True)
