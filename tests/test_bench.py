"""`rsg-fast bench` (rsg_fast.bench): end to end on the hidden tiny setting, its output files, its
argument errors, the memory-probe protocol, the progress total, the targets and the chart.

The timings themselves are not checked (they are what the bench reports); the files, rows, statuses
and exit status are. One thread: on a loaded 2-core machine two OpenMP threads can be far slower.
"""
from __future__ import annotations

import copy
import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from rsg_fast.bench import cases as bc
from rsg_fast import ops as rsg_ops
from rsg_fast.bench import chart, cli, launch_probe, memory_probe, op_cases, report, runner, targets, timers

HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    argv = ["--shapes", "tiny", "--quick", "--threads", "1", "--no-progress", "--out", str(out)]
    proc = subprocess.run([sys.executable, "-m", "rsg_fast.bench", *argv], capture_output=True, text=True,
                          timeout=300)
    return out, proc


def test_tiny_run_exits_zero_and_prints_table(tiny_run):
    _, proc = tiny_run
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[tiny]" in proc.stdout and "targets (reported, never asserted)" in proc.stdout
    assert "--quick: a few rounds per row, so met / missed below is indicative only" in proc.stdout
    for variant in ("reference", "rsg-torch", "resnet32", "resnet32+reference", "resnet32+rsg"):
        assert variant in proc.stdout


def test_tiny_run_writes_valid_json(tiny_run):
    out, _ = tiny_run
    doc = json.loads((out / "bench-tiny-cpu.json").read_text())
    assert doc["schema"] == report.SCHEMA and doc["complete"] is True
    for key in ("date", "commit", "device", "versions", "settings", "timing", "rows", "copy_bandwidth_gbps"):
        assert key in doc, key
    assert doc["device"]["type"] == "cpu" and doc["device"]["threads"] == 1
    assert doc["versions"]["torch"] and doc["settings"][0]["name"] == "tiny"
    rows = {(r["variant"], r["phase"]): r for r in doc["rows"]}
    for variant in ("reference", "rsg-torch"):
        for phase in bc.PHASES:
            row = rows[(variant, phase)]
            assert row["status"] == "ok", row
            assert row["median_ms"] > 0 and row["p25_ms"] <= row["median_ms"] <= row["p75_ms"]
            assert row["threads"] == 1 and row["reps"] >= 2
            assert row["peak_mem_bytes"] is not None and row["peak_mem_bytes"] >= 0
    assert rows[("rsg-torch", "generation")]["speedup_vs_reference"] > 0
    assert rows[("resnet32", "-")]["status"] == "ok"
    assert "overhead_vs_no_rsg_pct" in rows[("resnet32+rsg", "generation")]
    # CUDA-only / opt-in variants are reported as skipped with the reason, not silently dropped
    assert rows[("rsg-triton", "contrastive")]["status"].startswith("skipped: needs CUDA")
    assert rows[("rsg-host", "generation")]["status"].startswith("skipped: host_target removes a device-to-host")
    for variant in bc.COMPILED_VARIANTS:
        assert rows[(variant, "-" if variant == "resnet32-compiled" else "generation")]["status"].startswith("skipped:")
    assert {t["status"] for t in doc["targets"]} <= {"met", "missed", "not measured"}


def test_tiny_run_writes_csv_with_columns(tiny_run):
    out, _ = tiny_run
    with open(out / "bench-tiny-cpu.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == report.CSV_COLUMNS
        rows = list(reader)
    assert {r["variant"] for r in rows} >= {"reference", "rsg-torch", "resnet32+rsg"}
    ok = [r for r in rows if r["status"] == "ok"]
    assert ok and all(float(r["median_ms"]) > 0 and r["device"] == "cpu" and r["date"] for r in ok)


def test_csv_keeps_its_first_columns_in_order():
    first = ["date", "commit", "device", "device_name", "threads", "torch", "triton", "setting", "batch", "maps",
             "centers", "dim", "classes", "head_classes", "group", "variant", "phase", "status", "median_ms",
             "p25_ms", "p75_ms", "iqr_ms", "min_ms", "reps", "speedup_vs_reference", "overhead_vs_no_rsg_pct",
             "peak_mem_mb", "mem_method", "bytes_moved", "gbps", "pct_copy_bw", "pairs"]
    assert report.CSV_COLUMNS[:len(first)] == first


def test_tiny_run_chart_or_skip_message(tiny_run):
    out, proc = tiny_run
    png = out / "bench-tiny-cpu.png"
    if HAS_MATPLOTLIB:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert not png.exists()
        assert "chart skipped: matplotlib is not installed" in proc.stdout


def test_chart_skips_cleanly_without_matplotlib(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)   # import matplotlib -> ImportError
    note = chart.write_chart({"settings": [], "rows": [], "device": {"type": "cpu"}}, tmp_path / "x.png")
    assert note is not None and "matplotlib is not installed" in note
    assert not (tmp_path / "x.png").exists()


# ----------------------------------------------------------------------------- one run in process

@pytest.fixture(scope="module")
def small_run():
    """Module rows (one of them failing to compile), op rows and memory, with a recording progress bar."""
    seen = {}

    class Bar:
        def __init__(self, total, enabled):
            seen.update(total=total, done=0.0)

        def advance(self, units):
            seen["done"] += units

        def say(self, text):
            pass

        def close(self):
            seen["closed"] = True

    plan = runner.Plan(device=torch.device("cpu"), settings=[bc.SETTINGS["tiny"]], groups=["module", "op"],
                       variants=["reference", "rsg-torch", "rsg-triton", "rsg-compiled"], phases=["contrastive"],
                       ops=["center_assign", "mv_terms"], op_impls=list(op_cases.OP_IMPLS), compile=True,
                       compile_backend="no-such-backend", progress=False, quick=True, warmup=1, budget_s=0.5,
                       min_rounds=2, max_rounds=2)
    mp = pytest.MonkeyPatch()
    mp.setattr(runner, "_Bar", Bar)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)     # see the module docstring
    try:
        result = runner.run(plan)
    finally:
        torch.set_num_threads(threads)
        mp.undo()
    return result, seen


def test_progress_total_is_known_up_front_and_reached(small_run):
    result, seen = small_run
    # runnable: reference, rsg-torch, rsg-compiled (contrastive) with memory: 3 x 3; ops: 2 ops x 2 impls x 2
    assert seen["total"] == 3 * 3 + 2 * 2 * 2
    assert seen["done"] == pytest.approx(seen["total"]) and seen["closed"]


def test_a_variant_that_fails_to_compile_is_an_error_row_and_the_run_goes_on(small_run):
    result, _ = small_run
    rows = {(r["variant"], r["phase"]): r for r in result["rows"]}
    assert rows[("rsg-compiled", "contrastive")]["status"].startswith("error:"), rows[("rsg-compiled", "contrastive")]
    assert rows[("reference", "contrastive")]["status"] == "ok" and rows[("rsg-torch", "contrastive")]["median_ms"] > 0
    assert result["complete"] is True


def test_op_rows_relate_to_the_plain_reference(small_run):
    result, _ = small_run
    ops = [r for r in result["rows"] if r["group"] == "op"]
    assert {r["variant"] for r in ops} == {f"{op}:{impl}" for op in ("center_assign", "mv_terms")
                                           for impl in op_cases.OP_IMPLS}
    for r in ops:
        assert r["dtype"] == "fp32" and r["mode"] == "eager"   # no cuda-graph rows on the CPU
        if r["variant"].endswith(":triton"):
            assert r["status"].startswith("skipped: needs CUDA")
        else:
            assert r["median_ms"] > 0 and r["gbps"] > 0 and r["speedup_vs_reference"] > 0


def test_report_lists_op_rows_and_skipped_variants(small_run):
    text = report.format_report(small_run[0])
    full = report.format_report(small_run[0] | {"timing": small_run[0]["timing"] | {"quick": False}})
    assert "indicative only" in text and "indicative only" not in full      # only a --quick run says so
    assert "fused ops, one call each" in text and "center_assign:torch" in text
    assert "rsg-triton" in text and "(contrastive) skipped: needs CUDA" in text


def test_report_warns_when_other_work_shared_the_cpus(small_run):
    """A loaded machine made every row of a --baseline comparison read 'missed' and a negative RSG
    overhead read 'met', with nothing said but the load average."""
    quiet, busy = (copy.deepcopy(small_run[0]) for _ in range(2))
    cpus, threads = quiet["device"]["cpu_count"], quiet["device"]["threads"]
    quiet["load_average"] = {"start": [threads + 0.2, 1, 1], "end": [threads, 1, 1]}
    busy["load_average"] = {"start": [threads, 1, 1], "end": [threads + cpus, 1, 1]}
    assert "warning: other work" not in report.format_report(quiet)
    assert f"warning: other work shared the CPUs (load average {threads + cpus:.2f} on {cpus} CPUs" in \
        report.format_report(busy)


# ----------------------------------------------------------------------------- the command line

@pytest.mark.parametrize("argv, message", [
    (["--shapes", "cifar11"], "--shapes: unknown 'cifar11'"),
    (["--shapes", ""], "--shapes must name at least one"),
    (["--shape", "cifar10"], "unrecognized arguments: --shape"),          # no prefix matching
    (["--variants", "fast"], "--variants: unknown 'fast'"),
    (["--maps", "32x16"], "--maps must be CxHxW"),
    (["--batch", "0"], "--batch must be a positive integer"),
    (["--batch", "1"], "--batch must be at least 2"),
    (["--budget", "-3"], "--budget must be a positive number"),
    (["--device", "tpu"], "--device must be auto, cpu, cuda or cuda:N"),
    (["--ops", "mv_terms"], "--ops applies to the fused ops: add --groups op"),
    (["--groups", "op", "--variants", "reference"], "includes neither group"),
    (["--dtypes", "fp64", "--groups", "op"], "--dtypes: unknown 'fp64'"),
    (["--amp", "fp32"], "--amp: unknown 'fp32'; choose from off, bf16, fp16"),
    (["--amp", ","], "--amp must name at least one of off, bf16, fp16"),
    (["--groups", "op", "--amp", "bf16"], "--amp applies to the module and step rows"),
    (["--compile-backend", "tvm"], "invalid choice"),
    (["--frobnicate"], "unrecognized arguments"),
])
def test_bad_arguments_exit_2_with_a_message_naming_the_flag(argv, message, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("rsg-fast bench: error:") and message in err, err


def test_out_that_is_a_file_is_an_error(tmp_path, capsys):
    target = tmp_path / "file.txt"
    target.write_text("x")
    assert cli.main(["--out", str(target)]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_baseline_that_is_not_a_bench_result_is_an_error(tmp_path, capsys):
    bad = tmp_path / "other.json"
    bad.write_text('{"schema": "something-else"}')
    assert cli.main(["--baseline", str(bad), "--out", str(tmp_path)]) == 2
    assert "--baseline" in capsys.readouterr().err


def test_cuda_requested_without_cuda_is_an_error(capsys):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    assert cli.main(["--device", "cuda"]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_console_script_reports_bad_arguments(capsys):
    from rsg_fast.cli import main
    assert main(["bench", "--shapes", "nope"]) == 2
    assert "--shapes: unknown 'nope'" in capsys.readouterr().err


def test_help_lists_public_shapes_not_tiny(capsys):
    assert cli.main(["--help"]) == 0
    text = capsys.readouterr().out
    for name in bc.PUBLIC_SHAPES:
        assert name in text
    assert "tiny" not in text


# ----------------------------------------------------------------------------- settings and timers

def test_label_counts_are_long_tailed_and_pair():
    s = bc.SETTINGS["cifar10"]
    counts = bc.label_counts(s)
    assert sum(counts) == s.batch and counts == sorted(counts, reverse=True)
    assert counts[0] / max(counts[-1], 1) > 10
    nh = counts[0] + counts[1]
    assert bc.pair_count(s) == max(1, int(nh / (s.batch - nh))) * (s.batch - nh)
    for name, setting in bc.SETTINGS.items():
        assert sum(bc.label_counts(setting)) == setting.batch, name
        assert bc.pair_count(setting) > 0, name


def test_op_cases_pair_like_the_module_and_count_each_sample_once_per_pass(monkeypatch):
    """The fused-op cases take the module's pairs of the setting's long-tailed batch (at imagenet-lt
    each head once, each tail four times), and their bytes count a sample read by several pairs once
    per pass, so GB/s is never flattered by cache hits; the tap-window input is rotated, and its
    backward re-read counts only where it does not fit the L2 cache."""
    s = bc.SETTINGS["imagenet-lt"]
    labels = bc.InputPool(s, "cpu", rotations=2).host_labels[0]      # (its maps are never made)
    heads, tails = op_cases._pairs(s, labels, torch.device("cpu"))
    M = bc.pair_count(s)
    assert heads.shape == tails.shape == (M,) and M > 0
    assert heads.unique().numel() == M and tails.unique().numel() < M
    head_classes = torch.tensor(s.head_classes)
    assert torch.isin(labels[heads], head_classes).all() and not torch.isin(labels[tails], head_classes).any()

    s = bc.SETTINGS["cifar10"]
    pool = bc.InputPool(s, "cpu", rotations=2)
    heads, tails = op_cases._pairs(s, pool.host_labels[0], pool.device)
    M, plane = bc.pair_count(s), s.channels * s.height * s.width * 4
    cases = {op: op_cases.op_case(op, "torch", s, pool) for op in op_cases.OPS}
    for case in cases.values():
        case.fn()
    head_rows = (pool.host_labels[0] * s.centers
                 + torch.randint(0, s.centers, (s.batch,), generator=torch.Generator().manual_seed(23)))[heads]
    assert cases["displacement"].bytes_moved == ((heads.unique().numel() + M) * plane
                                                 + head_rows.unique().numel() * s.channels * 4)
    assert cases["mv_terms"].bytes_moved == (6 * M + 2 * tails.unique().numel()) * plane
    tap_bytes = M * s.height * s.width * s.dim * 4
    assert cases["tap_window_means"].bytes_moved == 3 * tap_bytes          # no L2 assumed off CUDA
    monkeypatch.setattr(op_cases, "_l2_bytes", lambda device: tap_bytes)
    assert op_cases.op_case("tap_window_means", "torch", s, pool).bytes_moved == 2 * tap_bytes
    seen = []
    monkeypatch.setattr(rsg_ops, "relu_tap_window_means",
                        lambda pre, backend: seen.append(pre) or pre.sum((1, 2))[..., None, None].expand(-1, -1, 3, 3))
    tap = op_cases.op_case("tap_window_means", "torch", s, pool)
    for _ in range(2):
        tap.fn()
    assert seen[0] is not seen[1]


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_half_precision_op_cases_run_for_the_reference_and_the_pytorch_path(dtype):
    """``--groups op --dtypes bf16`` (the README's command, and pytest benchmarks/ with
    RSG_BENCH_DTYPE): half-precision maps with the module's fp32 parameters, for every op. The plain
    reference of center_assign multiplies them in one bmm, which needs autocast, as the published
    module would; without it every such row was an error."""
    s = bc.SETTINGS["tiny"]
    pool = bc.InputPool(s, "cpu", rotations=2, dtype=op_cases.DTYPES[dtype])
    for op in op_cases.OPS:
        for impl in ("reference", "torch"):
            case = op_cases.op_case(op, impl, s, pool)
            case.fn()
            case.fn()


def test_op_case_bytes_never_count_a_cache_hit_as_device_traffic(monkeypatch):
    """A centre row that several heads share is read from device memory once (cifar10: 45 pairs
    over 24 distinct rows), and of the tap-window input only the part the L2 cache cannot hold is
    re-read by the backward: an input one byte larger than the L2 is not a whole third pass."""
    s = bc.SETTINGS["cifar10"]
    pool = bc.InputPool(s, "cpu", rotations=2)
    heads, _ = op_cases._pairs(s, pool.host_labels[0], pool.device)
    M, C, plane = heads.numel(), s.channels, s.channels * s.height * s.width * 4
    disp = op_cases.op_case("displacement", "torch", s, pool)
    row_bytes = disp.bytes_moved - (heads.unique().numel() + M) * plane
    assert row_bytes % (C * 4) == 0 and row_bytes // (C * 4) < M        # fewer rows than pairs
    tap_bytes = M * s.height * s.width * s.dim * 4
    monkeypatch.setattr(op_cases, "_l2_bytes", lambda device: tap_bytes - 1)
    assert op_cases.op_case("tap_window_means", "torch", s, pool).bytes_moved == 2 * tap_bytes + 1


def test_host_target_variants_run_their_calls_on_the_cpu_too():
    """A run times the host_target rows on CUDA only (on the CPU there is no synchronisation to remove);
    their calls still run here, so the first GPU run cannot find them broken."""
    setting = bc.SETTINGS["tiny"]
    pool = bc.InputPool(setting, "cpu", rotations=2)
    module = bc.build_module("rsg-host", setting, "cpu")
    model, optimiser = bc.build_step_model("resnet32+rsg-host", setting, "cpu")
    given = []
    for rsg in (module, model.rsg):       # record what RSG is called with
        real = rsg.forward
        rsg.forward = lambda *a, real=real, **kw: (given.append(kw.get("host_target")), real(*a, **kw))[1]
    for phase in bc.PHASES:
        for case in (bc.module_case("rsg-host", setting, phase, pool, module=module),
                     bc.step_case("resnet32+rsg-host", setting, phase, pool, model=(model, optimiser))):
            case.fn()
            case.fn()
    assert len(given) == 8 and all(isinstance(y, torch.Tensor) and y.device.type == "cpu" for y in given)
    assert torch.equal(pool.host_labels_of(pool.labels[1]), pool.labels[1].cpu())
    with pytest.raises(ValueError, match="labels this pool returned"):
        pool.host_labels_of(pool.labels[1].clone())


def test_override_renames_setting_and_json_round_trips():
    s = bc.SETTINGS["cifar100"].override(batch=64, maps=(256, 14, 14))
    assert s.name == "cifar100-n64-256x14x14" and s.batch == 64 and s.maps == (256, 14, 14)
    assert not s.has_step and s.centers == 15 and s.num_classes == 100
    assert bc.Setting.from_json(json.loads(json.dumps(s.to_json()))) == s


def test_interleaved_timer_reports_errors_and_counts_progress():
    def boom():
        raise RuntimeError("broken variant")

    cases = [bc.Case("module", "fine", "-", lambda: None), bc.Case("module", "broken", "-", boom)]
    done = []
    measured, errors = timers.time_interleaved(cases, warmup=1, budget_s=0.01, min_rounds=3, max_rounds=3,
                                               advance=done.append)
    assert errors[cases[1].key] == "error: RuntimeError: broken variant"
    stats = timers.summarise(measured[cases[0].key])
    assert stats["reps"] >= 3 and stats["p25_ms"] <= stats["median_ms"] <= stats["p75_ms"]
    assert sum(done) == pytest.approx(2 * len(cases))


# ----------------------------------------------------------------------------- memory probe protocol

def _probe(spec) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rsg_fast.bench.memory_probe", spec], capture_output=True,
                          text=True, timeout=120)


def test_memory_probe_replies_one_json_line_per_case():
    s = bc.SETTINGS["tiny"]
    cases = [bc.Case("module", "rsg-torch", "contrastive", None), bc.Case("module", "nonsense", "generation", None)]
    spec = memory_probe.make_spec(s, cases, seed=0, threads=1, warmup=1, compile_backend="inductor")
    proc = _probe(json.dumps(spec))
    assert proc.returncode == 0, proc.stderr
    replies = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [(r["variant"], r["phase"]) for r in replies] == [("rsg-torch", "contrastive"), ("nonsense", "generation")]
    assert replies[0]["peak_bytes"] >= 0 and replies[0]["method"]
    assert "error" in replies[1] and "peak_bytes" not in replies[1]


def test_memory_probe_rejects_a_bad_spec():
    proc = _probe('{"setting": {}}')
    assert proc.returncode == 2 and "the spec lacks" in proc.stderr


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak RSS via /proc is Linux-only")
def test_cpu_memory_probe_counts_the_gradients_a_call_allocates():
    # 4000 classes: RSG's dense gradients of `linear` and `centers` are 2 x 4000*3*32 floats (3 MB), far
    # above the tiny maps; a probe that let the previous call's gradients sit in its baseline missed them.
    s = bc.SETTINGS["tiny"].override(num_classes=4000)
    case = bc.Case("module", "rsg-torch", "contrastive", None)
    peak, method = memory_probe.cpu_memory(s, [case], seed=0)[case.key]
    assert peak is not None, method
    assert peak >= 2 * 4000 * 3 * 32 * 4, (peak, method)


# ----------------------------------------------------------------------------- targets and chart

def _doc(device, rows, settings=("cifar10",)):
    return {"device": device, "rows": rows, "settings": [bc.SETTINGS[s].describe() for s in settings]}


def _row(variant, phase, median, **extra):
    group = "op" if ":" in variant else bc.GROUP_OF.get(variant, "module")
    return {"setting": extra.pop("setting", "cifar10"), "group": group, "variant": variant, "phase": phase,
            "dtype": "fp32", "mode": "eager", "status": "ok", "median_ms": median, "p25_ms": median,
            "p75_ms": median * 1.1, **extra}


def test_targets_report_met_missed_and_not_measured():
    h200 = {"type": "cuda", "name": "NVIDIA H200"}
    rows = [_row("reference", "contrastive", 100.0), _row("reference-compiled", "contrastive", 9.0),
            _row("rsg-compiled", "contrastive", 1.0),
            _row("resnet32+rsg", "contrastive", 11.0, overhead_vs_no_rsg_pct=12.0),
            _row("mv_terms:triton", "-", 1.0, setting="imagenet-lt", pct_copy_bw=85.0)]
    found = targets.evaluate(_doc(h200, rows, ("cifar10", "imagenet-lt")))
    status = {e["target"]: e["status"] for e in found}
    assert status["compiled_vs_compiled_reference"] == "met"        # 9x >= 3x
    assert status["compiled_vs_reference"] == "met"                 # 100x >= 50x
    assert status["gpu_step_overhead"] == "missed"                  # +12 % > 10 %
    assert status["kernel_bandwidth"] == "met"
    assert status["rsg_speedup"] == "not measured" and status["cpu_no_slower"] == "not measured"
    assert all("H100" in e["note"] for e in found if e["target"] == "compiled_vs_reference")


def test_a_row_without_its_comparison_is_one_not_measured_entry_that_says_why():
    """--variants rsg-torch on the CPU: the rsg-torch rows have no speed-up (no reference row), and no
    resnet32 row gives resnet32+rsg no overhead. Each target was listed once per row as "not measured"
    with an empty reason; it is one entry naming the rows the run lacked."""
    rows = [_row("rsg-torch", "contrastive", 1.0), _row("rsg-torch", "generation", 1.0),
            _row("resnet32+rsg", "generation", 1.0)]
    found = targets.evaluate(_doc({"type": "cpu", "name": "x"}, rows))
    for name in ("rsg_speedup", "step_overhead"):
        (entry,) = [e for e in found if e["target"] == name]
        assert entry["status"] == "not measured" and entry["note"] == f"needs {targets.TARGETS[name].needs}"


def test_a_row_without_its_comparison_stays_named_where_other_rows_measured_its_target():
    """A GPU run cut short: resnet32+rsg-compiled was timed but resnet32-compiled, its comparison, was
    not, while the eager pair was. The compiled row has no overhead; it must stay in the target's list
    as "not measured", not vanish because the eager row measured the target."""
    h100 = {"type": "cuda", "name": "NVIDIA H100"}
    rows = [_row("resnet32", "-", 10.0), _row("resnet32+rsg", "contrastive", 10.5, overhead_vs_no_rsg_pct=5.0),
            _row("resnet32+rsg-compiled", "contrastive", 8.0)]
    found = [e for e in targets.evaluate(_doc(h100, rows)) if e["target"] == "gpu_step_overhead"]
    assert {(e["variant"], e["status"]) for e in found} == {("resnet32+rsg", "met"),
                                                            ("resnet32+rsg-compiled", "not measured")}
    assert "no value in this run" in next(e["note"] for e in found if e["status"] == "not measured")


def test_kernel_bandwidth_target_takes_the_replayed_row_of_an_op_where_there_is_one():
    """An eager op row also times the host's launches; where the same op and dtype were replayed
    from a CUDA graph, that row alone is the kernels' share of copy bandwidth."""
    h100 = {"type": "cuda", "name": "NVIDIA H100"}
    op = {"setting": "imagenet-lt"}
    rows = [_row("mv_terms:triton", "-", 2.0, pct_copy_bw=40.0, **op),
            {**_row("mv_terms:triton", "-", 1.0, pct_copy_bw=85.0, **op), "mode": "cuda-graph"},
            {**_row("displacement:triton", "-", 1.0, pct_copy_bw=60.0, **op), "dtype": "bf16"}]
    found = [e for e in targets.evaluate(_doc(h100, rows, ("imagenet-lt",))) if e["target"] == "kernel_bandwidth"]
    assert [(e["variant"], e["dtype"], e["mode"], e["status"]) for e in found] == [
        ("mv_terms:triton", "fp32", "cuda-graph", "met"), ("displacement:triton", "bf16", "eager", "missed")]


def test_cpu_baseline_target_compares_each_row_with_its_spread():
    cpu = {"type": "cpu", "name": "x"}
    base = _doc(cpu, [_row("rsg-torch", "contrastive", 10.0), _row("reference", "contrastive", 100.0)])
    now = _doc(cpu, [_row("rsg-torch", "contrastive", 10.5), _row("reference", "contrastive", 120.0)])
    found = {e["variant"]: e for e in targets.evaluate(now, base) if e["target"] == "cpu_no_slower"}
    assert found["rsg-torch"]["status"] == "met" and found["reference"]["status"] == "missed"
    assert found["reference"]["measured"] == pytest.approx(1.2)


def test_chart_notes_list_what_was_not_timed_and_why():
    doc = _doc({"type": "cuda", "name": "gpu"}, [
        _row("reference", "contrastive", 5.0),
        {**_row("rsg-compiled", "contrastive", 1.0), "status": "error: InvalidBackend: nope", "median_ms": None},
        {**_row("rsg-compiled", "generation", 1.0), "status": "error: InvalidBackend: nope", "median_ms": None}])
    notes = chart._not_timed(doc)
    assert notes == ["cifar10: rsg-compiled (contrastive, generation): error: InvalidBackend: nope"]
    fast = _row("resnet32+rsg", "contrastive", 5.0, speedup_vs_reference=2.5, overhead_vs_no_rsg_pct=4.0)
    assert chart._time_figure(fast) == "2.5x\n+4%"


@pytest.mark.skipif(not HAS_MATPLOTLIB, reason="matplotlib is not installed")
def test_chart_draws_a_cuda_result_with_op_rows(tmp_path):
    rows = [_row("reference", "contrastive", 5.0), _row("rsg-triton", "contrastive", 1.0, speedup_vs_reference=5.0),
            _row("mv_terms:torch", "-", 0.02), _row("mv_terms:triton", "-", 0.01, pct_copy_bw=70.0),
            {**_row("mv_terms:triton", "-", 0.005, pct_copy_bw=90.0), "mode": "cuda-graph"}]
    doc = _doc({"type": "cuda", "name": "gpu", "threads": 1}, rows) | {"date": "today"}
    assert chart.write_chart(doc, tmp_path / "c.png") is None
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.skipif(not HAS_MATPLOTLIB, reason="matplotlib is not installed")
@pytest.mark.parametrize("which", ["stored cifar10-cpu", "every variant and ops",
                                   "every variant and ops, fp32 and bf16"])
def test_chart_figures_on_the_bars_do_not_overlap(which):
    """The figures on the bars stay apart, inside their panel and off its legend: in the stored CPU
    result the memory figures of neighbouring bars ran into each other ("5.0x less" over "6.9x less"),
    and with every variant (a CUDA run) most of the figures did. With --amp rows each dtype has its
    own panels, titled with it."""
    dtypes = ("fp32", "bf16") if "bf16" in which else ("fp32",)
    if which.startswith("stored"):
        doc = json.loads((Path(__file__).parent.parent / "benchmarks" / "results" / "cifar10-cpu.json").read_text())
    else:
        rows = []
        for dtype in dtypes:
            for i, v in enumerate(bc.ALL_VARIANTS):
                for phase in ("-",) if v in ("resnet32", "resnet32-compiled") else ("contrastive", "generation"):
                    rows.append(_row(v, phase, 30.0 + 7 * i, peak_mem_mb=40.0 + 3 * i + 5 * (phase == "generation"),
                                     speedup_vs_reference=None if "reference" in v else 17.53,
                                     overhead_vs_no_rsg_pct=12.4 if "+rsg" in v else None, dtype=dtype))
        for op in ("center_assign", "displacement", "mv_terms", "relu_tap_window_means"):
            for backend in ("torch", "triton"):
                for mode in ("eager", "cuda-graph"):
                    ms = (0.05 if backend == "torch" else 0.012) * (0.7 if mode == "cuda-graph" else 1.0)
                    rows.append({**_row(f"{op}:{backend}", "-", ms, pct_copy_bw=21.0 if backend == "torch" else 87.0),
                                 "mode": mode})
        doc = _doc({"type": "cuda", "name": "gpu", "threads": 1}, rows) | {"date": "today"}
    fig = chart.draw_chart(doc)
    try:
        renderer = fig.canvas.get_renderer()
        labels = [t for ax in fig.axes for t in ax.texts if t.get_gid() == chart.BAR_LABEL]
        # stored: 4 time and 4 memory figures; every variant: 16 time and 16 memory figures per dtype,
        # 16 op figures
        assert len(labels) == (8 if which.startswith("stored") else 32 * len(dtypes) + 16), \
            [t.get_text() for t in labels]
        titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
        if len(dtypes) > 1:
            assert titles[:5] == ["cifar10, fp32: median ms per call (log)",
                                  "cifar10, fp32: peak memory of one call, MB",
                                  "cifar10: fused ops: median us per call (log)",
                                  "cifar10, bf16 autocast: median ms per call (log)",
                                  "cifar10, bf16 autocast: peak memory of one call, MB"], titles
        else:
            assert titles[0] == "cifar10: median ms per call (log)", titles
        boxes = [t.get_window_extent(renderer) for t in labels]
        for i, (a, box) in enumerate(zip(labels, boxes)):
            panel = a.axes.get_window_extent(renderer)
            assert panel.x0 <= box.x0 and box.x1 <= panel.x1 and panel.y0 <= box.y0 and box.y1 <= panel.y1, \
                a.get_text()
            for b, other in zip(labels[i + 1:], boxes[i + 1:]):
                assert not box.overlaps(other), (a.get_text(), b.get_text())
            assert not box.overlaps(a.axes.get_legend().get_window_extent(renderer)), a.get_text()
    finally:
        import matplotlib.pyplot as plt
        plt.close(fig)


def test_cuda_path_times_case_by_case_with_compiled_variants_last(monkeypatch):
    """The CUDA schedule without a GPU: triton's timer and the CUDA memory probe are stood in for."""
    order = []

    def fake_time_cuda(case, **kwargs):
        order.append(case.variant)
        if case.variant == "rsg-torch":
            raise RuntimeError("a kernel failed")
        return timers._measurement(case, [1e-3, 2e-3, 3e-3])

    monkeypatch.setattr(timers, "time_cuda", fake_time_cuda)
    monkeypatch.setattr(memory_probe, "cuda_peak", lambda case, device: 1234)
    counts = {"launches": 7, "kernels": 5, "copies": 1, "fills": 1, "host_syncs": 1}
    monkeypatch.setattr(launch_probe, "cuda_launches", lambda case, device: order.append("launches " + case.variant) or counts)
    plan = runner.Plan(device=torch.device("cpu"), settings=[bc.SETTINGS["tiny"]], groups=["module", "op"],
                       variants=["reference-compiled", "reference", "rsg-torch"], phases=["contrastive"],
                       ops=["displacement"], op_impls=["torch"], compile=True, compile_backend="eager")
    setting = plan.settings[0]
    planned = runner.plan_rows(plan, setting)
    rows = {p.key: p.row() for p in planned}
    partials = []
    one = runner._SettingRun(plan, setting, planned, rows, runner._Bar(10, False), lambda: partials.append(1))
    one.run_cuda()
    one.count_launches()
    one.close()
    # every row timed before the profiler runs (it may slow what runs after it); failed rows not probed
    assert order == ["displacement:torch", "reference", "rsg-torch", "reference-compiled",
                     "launches reference", "launches reference-compiled"]
    assert len(partials) == len(order)                         # the file is rewritten after every case
    got = {k[0]: r for k, r in rows.items()}
    assert got["reference"]["median_ms"] == pytest.approx(2.0) and got["reference"]["peak_mem_bytes"] == 1234
    assert got["rsg-torch"]["status"] == "error: RuntimeError: a kernel failed"
    assert "peak_mem_bytes" not in got["displacement:torch"]   # ops: no memory rows
    assert {k: got["reference"][k] for k in counts} == counts and "launches" not in got["displacement:torch"]

    # --variants given (variants_in_order): ops first, then the variants in the order given
    order.clear()
    plan.variants_in_order = True
    planned = runner.plan_rows(plan, setting)
    one = runner._SettingRun(plan, setting, planned, {p.key: p.row() for p in planned}, runner._Bar(10, False),
                             lambda: None)
    one.run_cuda()
    one.count_launches()
    one.close()
    assert order == ["displacement:torch", "reference-compiled", "reference", "rsg-torch",
                     "launches reference-compiled", "launches reference"]



def test_a_cuda_run_counts_launches_only_once_every_setting_is_timed(monkeypatch):
    """The profiler may slow what runs after it: with two settings, both are timed before either's
    launches are counted, and each setting's modules are freed only after that. --no-launches and
    CPU runs free each setting as soon as it is timed."""
    events = []
    for name in ("run_cuda", "run_cpu", "count_launches", "close"):
        monkeypatch.setattr(runner._SettingRun, name,
                            lambda self, name=name: events.append(f"{name} {self.setting.name}"))
    monkeypatch.setattr(runner.environment, "capture", lambda device: {
        "device": {"type": torch.device(device).type, "name": "x", "threads": 1},
        "versions": {"torch": "t", "triton": "t"}, "commit": {}})
    monkeypatch.setattr(runner.timers, "copy_bandwidth", lambda device: 1.0)
    settings = [bc.SETTINGS["tiny"], bc.SETTINGS["tiny"].override(batch=6)]
    for device, launches, expected in (
            ("cuda", True, ["run_cuda A", "run_cuda B", "count_launches A", "count_launches B", "close A", "close B"]),
            ("cuda", False, ["run_cuda A", "close A", "run_cuda B", "close B"]),
            ("cpu", True, ["run_cpu A", "close A", "run_cpu B", "close B"])):
        events.clear()
        plan = runner.Plan(device=torch.device(device), settings=settings, groups=["module"], variants=["reference"],
                           phases=["contrastive"], launches=launches, progress=False)
        runner.run(plan)
        names = {settings[0].name: "A", settings[1].name: "B"}
        assert [e.split()[0] + " " + names[e.split()[1]] for e in events] == expected, (device, launches)

def test_cuda_timer_and_memory_probe_call_torch_and_triton_as_their_apis_take_them(monkeypatch):
    """The CUDA-only bodies of timers.time_cuda and memory_probe.cuda_peak, run on the CPU against
    stand-ins that bind every call to the real signature (a wrong keyword or argument count raises
    here, not on the lent GPU)."""
    import inspect

    import triton.testing

    def bound(real, result=None, run_fn=False):
        def call(*args, **kwargs):
            inspect.signature(real).bind(*args, **kwargs)
            calls.append((real.__name__, kwargs))
            if run_fn:
                args[0]()
            return result
        return call

    class Event:
        def __init__(self, *args, **kwargs):
            inspect.signature(torch.cuda.Event.__new__).bind(Event, *args, **kwargs)

        def record(self, *args, **kwargs):
            inspect.signature(torch.cuda.Event.record).bind(self, *args, **kwargs)

        def elapsed_time(self, *args, **kwargs):
            inspect.signature(torch.cuda.Event.elapsed_time).bind(self, *args, **kwargs)
            return 0.5

    calls: list = []
    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "current_device", bound(torch.cuda.current_device, 0))
    monkeypatch.setattr(torch.cuda, "synchronize", bound(torch.cuda.synchronize))
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", bound(torch.cuda.reset_peak_memory_stats))
    monkeypatch.setattr(torch.cuda, "memory_allocated", bound(torch.cuda.memory_allocated, 1000))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", bound(torch.cuda.max_memory_allocated, 4096))
    monkeypatch.setattr(triton.testing, "do_bench", bound(triton.testing.do_bench, [1.0, 2.0, 3.0], True))
    monkeypatch.setattr(triton.testing, "do_bench_cudagraph",
                        bound(triton.testing.do_bench_cudagraph, [0.5, 0.5], True))
    ran = []
    for mode, timer, reps in (("eager", "do_bench", 3), ("cuda-graph", "do_bench_cudagraph", 2)):
        case = bc.Case("op", "displacement:triton", "-", lambda: ran.append(1), mode=mode)
        row = timers.summarise(timers.time_cuda(case, warmup=2, budget_ms=100.0, min_reps=5, max_reps=50))
        assert row["reps"] == reps and row["median_ms"] == (2.0 if mode == "eager" else 0.5)
        assert [name for name, _ in calls if name.startswith("do_bench")][-1] == timer
    assert dict(calls)["do_bench_cudagraph"]["rep"] <= timers.GRAPH_REP_MS     # capture stays short
    case = bc.Case("module", "rsg-triton", "generation", lambda: ran.append(1))
    assert memory_probe.cuda_peak(case, torch.device("cuda")) == 4096 - 1000


def test_launch_probe_counts_device_commands_by_kind():
    cuda, cpu = torch.autograd.DeviceType.CUDA, torch.autograd.DeviceType.CPU
    events = [SimpleNamespace(name=n, device_type=d) for n, d in (
        ("triton_poi_fused_add_0", cuda), ("_center_assign_fwd_kernel", cuda), ("Memcpy HtoD (Pinned -> Device)", cuda),
        ("Memset (Device)", cuda), ("cudaLaunchKernel", cpu), ("aten::add", cpu), ("Memcpy DtoH (Device -> Pageable)", cuda))]
    assert launch_probe.count_device_activity(events) == {"launches": 5, "kernels": 2, "copies": 2, "fills": 1}
    # a user-scope record_function (Optimizer.step in every step row) that encloses kernels comes back
    # as a device-side span of those kernels too (kineto's gpu_user_annotation): not a launch
    span = SimpleNamespace(name="Optimizer.step#SGD.step", device_type=cuda, is_user_annotation=True)
    assert launch_probe.count_device_activity(events + [span])["launches"] == 5
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:   # real events
        with torch.profiler.record_function("user span"):
            torch.randn(8, 8) @ torch.randn(8, 8)
    assert len(prof.events()) > 0
    assert [e.name for e in prof.events() if e.is_user_annotation] == ["user span"]   # the flag it reads
    assert launch_probe.count_device_activity(prof.events())["launches"] == 0             # no device here


@pytest.mark.filterwarnings("ignore:CUDA is not available, disabling CUDA profiling")
def test_launch_probe_body_runs_against_torch_apis_as_they_take_them(monkeypatch):
    """cuda_launches without a GPU: torch.cuda's synchronize and sync-debug mode are stood in for by
    functions bound to their real signatures; the profiler is the real one (CPU activity only here)."""
    import inspect
    import warnings

    modes = []

    def set_sync_debug_mode(*args, **kwargs):
        inspect.signature(torch.cuda.set_sync_debug_mode).bind(*args, **kwargs)
        modes.append(args[0])

    def synchronize(*args, **kwargs):
        inspect.signature(torch.cuda.synchronize).bind(*args, **kwargs)

    def call():
        torch.randn(4, 4).sum()
        if modes and modes[-1] == "warn":
            warnings.warn("called a synchronizing CUDA operation")     # what torch says for .item()

    def get_sync_debug_mode(*args, **kwargs):
        inspect.signature(torch.cuda.get_sync_debug_mode).bind(*args, **kwargs)
        return 2                                      # a caller's "error" mode, to be restored

    monkeypatch.setattr(torch.cuda, "get_sync_debug_mode", get_sync_debug_mode)
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", set_sync_debug_mode)
    monkeypatch.setattr(torch.cuda, "synchronize", synchronize)
    resets = []
    case = bc.Case("module", "rsg-triton", "generation", call, reset=lambda: resets.append(1))
    found = launch_probe.cuda_launches(case, torch.device("cuda"))
    # no device events (here: no GPU; on a GPU: CUPTI unavailable, which kineto only logs) are no
    # count, not 0 launches, which would meet gpu_launches; the host syncs are still counted
    assert found == {"launches_error": launch_probe.NO_DEVICE_ACTIVITY, "host_syncs": 1}
    assert [e["status"] for e in targets.evaluate(_doc({"type": "cuda", "name": "NVIDIA H100"}, [
        _row("rsg-triton", "generation", 1.0, **found)])) if e["target"] == "gpu_launches"] == ["not measured"]
    assert modes == ["warn", 2] and len(resets) == 4      # a warm-up call, then two measured ones


def test_launch_and_sync_targets():
    h100 = {"type": "cuda", "name": "NVIDIA H100"}
    rows = [_row("rsg-triton", "generation", 1.0, launches=38, host_syncs=1),
            _row("rsg-triton", "contrastive", 1.0, launches=30, host_syncs=0),
            _row("rsg-host", "generation", 1.0, launches=41, host_syncs=1),
            _row("rsg-compiled", "generation", 1.0, host_syncs=2),
            _row("reference", "generation", 1.0, launches=400, host_syncs=5)]     # no target of its own
    found = [(e["variant"], e["phase"], e["status"]) for e in targets.evaluate(_doc(h100, rows))
             if e["target"] == "gpu_launches"]
    assert found == [("rsg-triton", "generation", "met"), ("rsg-host", "generation", "missed")]   # 38, 41 vs 40
    found = [(e["variant"], e["phase"], e["status"]) for e in targets.evaluate(_doc(h100, rows))
             if e["target"] == "gpu_host_syncs"]
    assert found == [("rsg-triton", "generation", "met"), ("rsg-triton", "contrastive", "met"),
                     ("rsg-host", "generation", "missed"), ("rsg-compiled", "generation", "missed")]
    cpu = [e for e in targets.evaluate(_doc({"type": "cpu", "name": "x"}, rows))
           if e["target"] in ("gpu_launches", "gpu_host_syncs")]
    assert [e["status"] for e in cpu] == ["not measured"] * 2
    doc = _doc(h100 | {"threads": 1}, rows)
    doc["settings"][0]["pairs_generation"] = 45
    text = report.format_report(doc | {
        "date": "today", "versions": {"torch": "t", "triton": "t"}, "commit": {"sha": "abc"},
        "copy_bandwidth_gbps": 1.0, "timing": {"method": "m"}, "load_average": {"start": None, "end": None},
        "wall_s": 1, "targets": targets.evaluate(_doc(h100, rows))})
    assert "launches" in text and "missed        gpu_launches: cifar10 rsg-host generation  41 launches" in text


def test_results_summary_shows_launch_counts_where_a_run_counted_them(tmp_path):
    """benchmarks/summarise.py (the results README's tables): a CUDA file's launches and host syncs
    get two columns, with the gpu_launches target in the targets list; CPU files keep their table."""
    h100 = {"type": "cuda", "name": "NVIDIA H100", "threads": 1}
    rows = [_row("rsg-triton", "generation", 1.0, launches=38, host_syncs=1), _row("reference", "generation", 9.0)]
    doc = _doc(h100, rows) | {"schema": report.SCHEMA, "date": "2027-01-01T00:00:00Z", "command": "rsg-fast bench",
                              "commit": {"sha": "abc"}, "versions": {"torch": "2.11.0", "triton": "3.6.0"},
                              "copy_bandwidth_gbps": 3000.0}
    doc["targets"] = targets.evaluate(doc)
    cpu = _doc({"type": "cpu", "name": "x", "threads": 2}, [_row("rsg-torch", "generation", 20.0)]) | {
        k: doc[k] for k in ("schema", "date", "command", "commit", "versions", "copy_bandwidth_gbps")}
    (tmp_path / "gpu.json").write_text(json.dumps(doc))
    (tmp_path / "cpu.json").write_text(json.dumps(cpu))
    script = str(Path(__file__).parent.parent / "benchmarks" / "summarise.py")
    run = lambda *files: subprocess.run([sys.executable, script, *files], capture_output=True, text=True, check=True).stdout
    both = run(str(tmp_path / "gpu.json"), str(tmp_path / "cpu.json"))
    assert "| launches | host syncs |" in both
    assert "| rsg-triton | generation | 1.0 (1.0..1.1) |  |  |  | 38 | 1 | cuda NVIDIA H100" in both
    assert "`gpu.json`: gpu_launches met: cifar10 rsg-triton generation, 38 launches" in both
    assert "launches" not in run(str(tmp_path / "cpu.json")).splitlines()[0]


# ----------------------------------------------------------------------------- --amp: module and step rows

@pytest.fixture(scope="module")
def amp_run():
    """The module and step rows in fp32, bf16 and fp16 (one phase), with memory, in process."""
    plan = runner.Plan(device=torch.device("cpu"), settings=[bc.SETTINGS["tiny"]], groups=["module", "step"],
                       variants=["reference", "rsg-torch", "resnet32", "resnet32+rsg"], phases=["generation"],
                       amp_dtypes=["fp32", "bf16", "fp16"], progress=False, quick=True, warmup=1, budget_s=0.5,
                       min_rounds=2, max_rounds=2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)     # see the module docstring
    try:
        return runner.run(plan)
    finally:
        torch.set_num_threads(threads)


def test_amp_gives_each_dtype_its_own_timed_rows(amp_run):
    rows = {(r["variant"], r["phase"], r["dtype"]): r for r in amp_run["rows"]}
    assert len(rows) == len(amp_run["rows"]) == 3 * 4
    setting = bc.SETTINGS["tiny"]
    for dtype, size in (("fp32", 4), ("bf16", 2), ("fp16", 2)):
        for variant in ("reference", "rsg-torch", "resnet32", "resnet32+rsg"):
            r = rows[(variant, "-" if variant == "resnet32" else "generation", dtype)]
            assert r["status"] == "ok" and r["mode"] == "eager", r
            assert 0 < r["median_ms"] < float("inf") and r["peak_mem_bytes"] is not None, r
        # the module's compulsory bytes in the maps' own element size
        assert rows[("rsg-torch", "generation", dtype)]["bytes_moved"] == bc.module_bytes(setting, "generation", size)


def test_amp_rows_are_compared_within_their_dtype_only(amp_run):
    rows = {(r["variant"], r["dtype"]): r for r in amp_run["rows"]}
    for dtype in ("fp32", "bf16", "fp16"):
        fast, ref = rows[("rsg-torch", dtype)], rows[("reference", dtype)]
        assert fast["speedup_vs_reference"] == pytest.approx(ref["median_ms"] / fast["median_ms"])
        step, plain = rows[("resnet32+rsg", dtype)], rows[("resnet32", dtype)]
        assert step["overhead_vs_no_rsg_pct"] == pytest.approx(100 * (step["median_ms"] / plain["median_ms"] - 1))


def test_amp_table_and_csv_name_each_rows_dtype(amp_run, tmp_path):
    text = report.format_report(amp_run)
    assert "under torch.autocast, fp16 steps with a GradScaler" in text
    head = next(line for line in text.splitlines() if line.strip().startswith("variant"))
    assert head.split()[:4] == ["variant", "phase", "dtype", "median"]
    for dtype in ("fp32", "bf16", "fp16"):
        assert any(line.split()[:3] == ["rsg-torch", "generation", dtype] for line in text.splitlines()), text
    report.write_csv(amp_run, tmp_path / "amp.csv")
    with open(tmp_path / "amp.csv", newline="") as fh:
        found = {(r["variant"], r["dtype"]) for r in csv.DictReader(fh)}
    assert ("resnet32+rsg", "bf16") in found and ("resnet32+rsg", "fp16") in found


def test_an_fp32_table_has_no_dtype_column(small_run):
    text = report.format_report(small_run[0])
    head = next(line for line in text.splitlines() if line.strip().startswith("variant"))
    assert head.split()[:3] == ["variant", "phase", "median"] and "torch.autocast" not in text


@pytest.mark.parametrize("argv, dtypes", [([], ["fp32"]), (["--amp", "off,bf16"], ["fp32", "bf16"]),
                                           (["--amp", "fp16", "--groups", "step"], ["fp16"])])
def test_amp_cli_plans_a_set_of_module_and_step_rows_per_precision(argv, dtypes, tmp_path):
    from rsg_fast import cli_args

    argv = ["--device", "cpu", "--shapes", "tiny", "--out", str(tmp_path), *argv]
    plan = cli.make_plan(cli_args.parse_args(cli.build_parser(), argv), argv)
    planned = runner.plan_rows(plan, plan.settings[0])
    assert plan.amp_dtypes == dtypes and list(dict.fromkeys(p.dtype for p in planned)) == dtypes


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
@pytest.mark.parametrize("variant", ["reference", "rsg-torch"])
def test_module_case_under_amp_runs_rsg_on_half_maps_under_autocast(variant, dtype):
    """The maps RSG gets are in the autocast dtype, as a convolution under autocast hands them over,
    and its forward runs under autocast in that dtype (an fp32 case: fp32 maps, no autocast)."""
    setting = bc.SETTINGS["tiny"]
    pool = bc.InputPool(setting, "cpu", rotations=2, dtype=bc.DTYPES[dtype])
    module = bc.build_module(variant, setting, "cpu")
    seen = []
    module.register_forward_pre_hook(lambda m, args: seen.append(
        (args[0].dtype, torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"))))
    for phase in bc.PHASES:
        case = bc.module_case(variant, setting, phase, pool, module=module)
        case.fn()
        assert case.dtype == dtype and case.bytes_moved == bc.module_bytes(setting, phase, 2)
    assert seen == [(bc.DTYPES[dtype], True, bc.DTYPES[dtype])] * 2
    fp32 = bc.module_case(variant, setting, "generation", bc.InputPool(setting, "cpu", rotations=2), module=module)
    fp32.fn()
    assert seen[-1][:2] == (torch.float32, False) and fp32.dtype == "fp32"


class _RecordingScaler(torch.amp.GradScaler):
    """torch's GradScaler, recording whether it is on and which of its calls a step makes."""

    made: list = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls, self.factors = [], []
        self.made.append(self)

    def scale(self, outputs):
        self.calls.append("scale")
        scaled = super().scale(outputs)
        self.factors.append(float((scaled / outputs).detach()) if self.is_enabled() else 1.0)
        return scaled

    def step(self, optimizer, *args, **kwargs):
        self.calls.append("step")
        return super().step(optimizer, *args, **kwargs)

    def update(self, new_scale=None):
        self.calls.append("update")
        return super().update(new_scale)


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16"])
def test_step_case_under_amp_runs_under_autocast_and_fp16_scales_its_loss(dtype, monkeypatch):
    """As ``rsg-fast train --amp``: the forward and loss under autocast (RSG gets maps in its dtype),
    and for fp16 a GradScaler that scales the loss and steps the trainer's fused SGD (which reads the
    overflow flag on the device); bf16 needs none."""
    monkeypatch.setattr(_RecordingScaler, "made", [])
    monkeypatch.setattr(torch.amp, "GradScaler", _RecordingScaler)
    setting = bc.SETTINGS["tiny"]
    pool = bc.InputPool(setting, "cpu", rotations=2, dtype=bc.DTYPES[dtype])
    model, optimiser = bc.build("step", "resnet32+rsg", setting, "cpu", dtype=dtype)   # as the runner builds it
    assert all(group["fused"] == (True if dtype == "fp16" else None) for group in optimiser.param_groups)
    seen = []
    model.rsg.register_forward_pre_hook(lambda m, args: seen.append((args[0].dtype, torch.is_autocast_enabled("cpu"))))
    case = bc.step_case("resnet32+rsg", setting, "generation", pool, model=(model, optimiser))
    (scaler,) = _RecordingScaler.made
    assert scaler.is_enabled() == (dtype == "fp16")
    if dtype == "fp16":
        # the case settled the scale before any timing: the first steps overflowed at 2**16 and were skipped
        assert 3 <= len(scaler.calls) <= 3 * bc.SCALER_SETTLE_STEPS and scaler.get_scale() < 2.0 ** 16
    else:
        assert scaler.calls == [] and seen == []
    seen.clear(), scaler.calls.clear(), scaler.factors.clear()
    scale = scaler.get_scale()
    case.fn()
    assert case.dtype == dtype
    assert seen == [(bc.DTYPES[dtype] if dtype != "fp32" else torch.float32, dtype != "fp32")]
    if dtype == "fp16":
        assert scaler.calls == ["scale", "step", "update"]
        assert scaler.factors == [scale]     # the loss was multiplied by the scale before the backward


def test_half_pools_keep_the_images_in_fp32():
    """A data loader gives fp32 images; autocast casts them at the first convolution."""
    pool = bc.InputPool(bc.SETTINGS["tiny"], "cpu", rotations=2, dtype=torch.bfloat16)
    assert pool.next()[0].dtype == torch.bfloat16 and pool.next_images()[0].dtype == torch.float32


def test_relate_never_compares_rows_of_different_dtypes():
    """A bf16 row without its bf16 reference (or bf16 step without RSG) has no speed-up (overhead),
    rather than one against the fp32 row."""
    rows = [_row("reference", "generation", 100.0), _row("rsg-torch", "generation", 10.0),
            _row("resnet32", "-", 50.0), _row("resnet32+rsg", "generation", 55.0),
            _row("reference", "generation", 60.0, dtype="bf16"), _row("rsg-torch", "generation", 6.0, dtype="bf16"),
            _row("rsg-torch", "generation", 8.0, dtype="fp16"), _row("resnet32+rsg", "generation", 30.0, dtype="fp16")]
    runner.relate(rows, copy_gbps=1.0)
    found = {(r["variant"], r["dtype"]): r for r in rows}
    assert found[("rsg-torch", "fp32")]["speedup_vs_reference"] == pytest.approx(10.0)
    assert found[("rsg-torch", "bf16")]["speedup_vs_reference"] == pytest.approx(10.0)
    assert found[("resnet32+rsg", "fp32")]["overhead_vs_no_rsg_pct"] == pytest.approx(10.0)
    assert "speedup_vs_reference" not in found[("rsg-torch", "fp16")]
    assert "overhead_vs_no_rsg_pct" not in found[("resnet32+rsg", "fp16")]


def test_targets_take_fp32_rows_only():
    """The targets are defined on fp32 rows: bf16 rows measure none of them, and a run of bf16 rows
    alone leaves them not measured."""
    cpu = {"type": "cpu", "name": "x"}
    fp32 = [_row("rsg-torch", "generation", 10.0, speedup_vs_reference=15.0),
            _row("resnet32+rsg", "generation", 55.0, overhead_vs_no_rsg_pct=10.0)]
    bf16 = [_row("rsg-torch", "generation", 10.0, speedup_vs_reference=2.0, dtype="bf16"),
            _row("resnet32+rsg", "generation", 55.0, overhead_vs_no_rsg_pct=40.0, dtype="bf16")]
    found = [e for e in targets.evaluate(_doc(cpu, fp32 + bf16)) if e["target"] in ("rsg_speedup", "step_overhead")]
    assert [(e["target"], e["status"], e.get("dtype")) for e in found] == [("rsg_speedup", "met", None),
                                                                            ("step_overhead", "met", None)]
    found = [e for e in targets.evaluate(_doc(cpu, bf16)) if e["target"] in ("rsg_speedup", "step_overhead")]
    assert [(e["target"], e["status"]) for e in found] == [("rsg_speedup", "not measured"),
                                                           ("step_overhead", "not measured")]


@pytest.mark.parametrize("stored", ["cifar10-cpu.json", "cifar10-cpu-v0.1-af41d32.json"])
def test_a_stored_result_is_still_a_baseline_and_counts_as_fp32(stored):
    """The committed results (v0.1's rows have no dtype at all) load as --baseline, and each of their
    module and step rows is compared with this run's fp32 row only, never with a bf16 one."""
    path = Path(__file__).parent.parent / "benchmarks" / "results" / stored
    baseline = cli._baseline(str(path))
    old = [r for r in baseline["rows"] if r.get("median_ms") is not None and r.get("group", "module") != "op"][0]
    cpu = {"type": "cpu", "name": "x"}
    now = [_row(old["variant"], old["phase"], old["median_ms"], setting=old["setting"]),
           _row(old["variant"], old["phase"], old["median_ms"] * 9, setting=old["setting"], dtype="bf16")]
    found = [e for e in targets.evaluate(_doc(cpu, now), baseline) if e["target"] == "cpu_no_slower"]
    assert [(e["variant"], e.get("dtype"), e["status"]) for e in found] == [(old["variant"], None, "met")]
    assert found[0]["measured"] == pytest.approx(1.0)


def test_a_baseline_compares_amp_rows_with_its_rows_of_the_same_dtype():
    cpu = {"type": "cpu", "name": "x"}
    base = _doc(cpu, [_row("rsg-torch", "generation", 10.0), _row("rsg-torch", "generation", 5.0, dtype="bf16")])
    now = _doc(cpu, [_row("rsg-torch", "generation", 10.0), _row("rsg-torch", "generation", 6.0, dtype="bf16")])
    found = {e.get("dtype"): e for e in targets.evaluate(now, base) if e["target"] == "cpu_no_slower"}
    assert found[None]["status"] == "met" and found["bf16"]["status"] == "missed"
    assert found["bf16"]["measured"] == pytest.approx(1.2)


def test_bf16_rows_are_skipped_on_a_gpu_without_bf16_arithmetic(monkeypatch):
    """torch would emulate bf16 there (slowly): the module and op rows say why they were not timed;
    fp16 runs. A T4 (sm_75) stands in, through its compute capability."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    plan = runner.Plan(device=torch.device("cuda"), settings=[bc.SETTINGS["tiny"]], groups=["module", "op"],
                       variants=["reference"], phases=["generation"], amp_dtypes=["bf16", "fp16"],
                       ops=["displacement"], op_impls=["torch"], dtypes=["bf16", "fp16"], cuda_graphs=False)
    why = {(p.group, p.dtype): p.why for p in runner.plan_rows(plan, plan.settings[0])}
    for group in ("module", "op"):
        assert why[group, "bf16"].startswith("this GPU has no bf16 arithmetic") and why[group, "fp16"] is None
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))     # an A100
    assert all(p.why is None for p in runner.plan_rows(plan, plan.settings[0]))


def test_results_summary_names_the_dtype_of_amp_rows(tmp_path):
    cpu = _doc({"type": "cpu", "name": "x", "threads": 2},
               [_row("rsg-torch", "generation", 20.0), _row("rsg-torch", "generation", 12.0, dtype="bf16")]) | {
        "schema": report.SCHEMA, "date": "2027-01-01T00:00:00Z", "command": "rsg-fast bench --amp off,bf16",
        "commit": {"sha": "abc"}, "versions": {"torch": "2.11.0", "triton": "3.6.0"}, "copy_bandwidth_gbps": 10.0}
    (tmp_path / "cpu.json").write_text(json.dumps(cpu))
    script = str(Path(__file__).parent.parent / "benchmarks" / "summarise.py")
    out = subprocess.run([sys.executable, script, str(tmp_path / "cpu.json")], capture_output=True, text=True,
                         check=True).stdout
    assert "| rsg-torch | generation | 20.0 " in out and "| rsg-torch | generation (bf16 autocast) | 12.0 " in out


def test_the_pytest_benchmark_files_run():
    """Every file in benchmarks/ runs once (timing disabled) at the tiny setting on the CPU, so a
    renamed case or fixture cannot leave a file that only fails when someone benchmarks."""
    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RSG_BENCH_")}   # not the caller's settings
    env.update(RSG_BENCH_SHAPES="tiny", RSG_BENCH_DEVICE="cpu", RSG_BENCH_ROUNDS="1")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--benchmark-disable",
                           "-o", "addopts=", "-rA", str(root / "benchmarks")], capture_output=True, text=True, env=env,
                          cwd=root, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for loader in ("dataloader-main-process", "device-batches"):
        assert f"PASSED benchmarks/test_input_batches.py::test_cifar_training_batch[{loader}]" in proc.stdout
    assert "PASSED benchmarks/test_module.py::" in proc.stdout and "failed" not in proc.stdout.splitlines()[-1]
