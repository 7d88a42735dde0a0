"""`rsg-fast bench` end to end on the hidden tiny setting, its output files, and its argument errors.

The timings themselves are not checked (they are what the bench reports); the files and the exit
status are. One thread: on a loaded 2-core machine two OpenMP threads can be far slower than one.
"""
from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys

import pytest

from rsg_fast import _bench_cases as bc
from rsg_fast import bench

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
    assert "[tiny]" in proc.stdout
    for variant in ("reference", "rsg-torch", "resnet32", "resnet32+reference", "resnet32+rsg"):
        assert variant in proc.stdout


def test_tiny_run_writes_valid_json(tiny_run):
    out, proc = tiny_run
    doc = json.loads((out / "bench-tiny-cpu.json").read_text())
    assert doc["schema"] == bench.SCHEMA and doc["complete"] is True
    for key in ("date", "commit", "device", "versions", "settings", "timing", "rows", "copy_bandwidth_gbps"):
        assert key in doc, key
    assert doc["device"]["type"] == "cpu" and doc["device"]["threads"] == 1
    assert doc["versions"]["torch"]
    assert doc["settings"][0]["name"] == "tiny"
    rows = {(r["variant"], r["phase"]): r for r in doc["rows"]}
    for variant in ("reference", "rsg-torch"):
        for phase in bc.PHASES:
            row = rows[(variant, phase)]
            assert row["status"] == "ok", row
            assert row["median_ms"] > 0 and row["p25_ms"] <= row["median_ms"] <= row["p75_ms"]
            assert row["peak_mem_bytes"] is not None and row["peak_mem_bytes"] >= 0
    assert rows[("rsg-torch", "generation")]["speedup_vs_reference"] > 0
    assert rows[("resnet32", "-")]["status"] == "ok"
    assert "overhead_vs_no_rsg_pct" in rows[("resnet32+rsg", "generation")]
    # CUDA-only / opt-in variants are reported as skipped with the reason, not silently dropped
    assert rows[("rsg-triton", "contrastive")]["status"].startswith("skipped: needs CUDA")
    assert rows[("reference-compiled", "generation")]["status"].startswith("skipped:")


def test_tiny_run_writes_csv_with_columns(tiny_run):
    out, _ = tiny_run
    with open(out / "bench-tiny-cpu.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == bench.CSV_COLUMNS
        rows = list(reader)
    assert {r["variant"] for r in rows} >= {"reference", "rsg-torch", "resnet32+rsg"}
    ok = [r for r in rows if r["status"] == "ok"]
    assert ok and all(float(r["median_ms"]) > 0 and r["device"] == "cpu" and r["date"] for r in ok)


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
    note = bench.write_chart({"settings": [], "rows": []}, tmp_path / "x.png")
    assert note is not None and "matplotlib is not installed" in note
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("argv, message", [
    (["--shapes", "cifar11"], "unknown shapes 'cifar11'"),
    (["--shapes", ""], "shapes must name at least one"),
    (["--variants", "fast"], "unknown variants 'fast'"),
    (["--maps", "32x16"], "--maps must be CxHxW"),
    (["--batch", "0"], "--batch must be a positive integer"),
    (["--batch", "1"], "--batch must be at least 2"),
    (["--budget", "-3"], "--budget must be a positive number"),
    (["--device", "tpu"], "invalid choice"),
    (["--frobnicate"], "unrecognized arguments"),
])
def test_bad_arguments_exit_nonzero_with_clear_message(argv, message, capsys):
    assert bench.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("rsg-fast bench: error:") and message in err, err


def test_out_that_is_a_file_is_an_error(tmp_path, capsys):
    target = tmp_path / "file.txt"
    target.write_text("x")
    assert bench.main(["--out", str(target)]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_cuda_requested_without_cuda_is_an_error(capsys):
    import torch
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    assert bench.main(["--device", "cuda"]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_console_script_reports_bad_arguments(capsys):
    from rsg_fast.cli import main
    assert main(["bench", "--shapes", "nope"]) == 2
    assert "unknown shapes 'nope'" in capsys.readouterr().err


def test_help_lists_public_shapes_not_tiny(capsys):
    assert bench.main(["--help"]) == 0
    text = capsys.readouterr().out
    for name in bc.PUBLIC_SHAPES:
        assert name in text
    assert "tiny" not in text


def test_label_counts_are_long_tailed_and_pair():
    s = bc.SETTINGS["cifar10"]
    counts = bc.label_counts(s)
    assert sum(counts) == s.batch and counts == sorted(counts, reverse=True)
    assert counts[0] / max(counts[-1], 1) > 10
    nh = counts[0] + counts[1]
    assert bc.pair_count(s) == max(1, int(nh / (s.batch - nh))) * (s.batch - nh)
    for name, setting in bc.SETTINGS.items():
        c = bc.label_counts(setting)
        assert sum(c) == setting.batch, name
        assert bc.pair_count(setting) > 0, name


def test_override_renames_setting():
    s = bc.SETTINGS["cifar100"].override(batch=64, maps=(256, 14, 14))
    assert s.name == "cifar100-n64-256x14x14" and s.batch == 64 and s.maps == (256, 14, 14)
    assert not s.has_step and s.centers == 15 and s.num_classes == 100


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak RSS via /proc is Linux-only")
def test_cpu_memory_probe_counts_the_gradients_a_call_allocates():
    # 4000 classes: RSG's dense gradients of `linear` and `centers` are 2 x 4000*3*32 floats (3 MB), far
    # above the tiny maps; a probe that let the previous call's gradients sit in its baseline missed them.
    s = bc.SETTINGS["tiny"].override(num_classes=4000)
    pool = bc.InputPool(s, "cpu", rotations=1)
    case = bc.module_case("rsg-torch", s, "contrastive", pool)
    peak, method = bench.cpu_memory(s, [case], seed=0, compile_reference=False)[("rsg-torch", "contrastive")]
    assert peak is not None, method
    assert peak >= 2 * 4000 * 3 * 32 * 4, (peak, method)
