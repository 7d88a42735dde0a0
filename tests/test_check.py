"""`rsg-fast check`: the users' self-test passes here, fails loudly when a fast path is off, and
shares its comparison rule with the test suite (rsg_fast.testing)."""
from __future__ import annotations

import importlib
import json

from rsg_fast import check, cli


def test_quick_check_passes_and_prints_the_table(capsys, tmp_path):
    report = tmp_path / "check.json"
    assert check.main(["--quick", "--device", "cpu", "--json", str(report)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[1].split()[:4] == ["op", "backend", "dtype", "shape"]
    for name in check.OPS + ("RSG (original, generation)", "RSG (paper, contrastive)",
                             "RSG (original, generation, host_target)"):
        assert name in out
    rows = json.loads(report.read_text())["rows"]
    assert rows and all(r["passed"] for r in rows)
    assert {r["dtype"] for r in rows} == {"float32", "float64"}
    assert f"{len(rows)} of {len(rows)} passed" in out


def test_a_wrong_fast_path_fails_the_check(monkeypatch, capsys):
    module = importlib.import_module("rsg_fast.ops.displacement")   # the file, not the function it exports
    real = module._forward_torch
    monkeypatch.setattr(module, "_forward_torch", lambda *a: real(*a) * (1 + 1e-3))
    assert check.main(["--quick", "--device", "cpu", "--backends", "torch"]) == 1
    failing = [line for line in capsys.readouterr().out.splitlines() if "FAIL" in line]
    assert any(line.startswith("displacement") for line in failing)
    assert all(line.startswith(("displacement", "RSG")) for line in failing)    # RSG uses it; the other ops pass


def test_command_line(capsys):
    assert cli.main(["check", "--help"]) == 0
    assert "float64 references" in capsys.readouterr().out
    assert check.main(["--quick", "--full"]) == 2
    assert check.main(["--device", "tpu"]) == 2
    assert check.main(["--backends", "jax"]) == 2
    err = capsys.readouterr().err
    assert "rsg-fast check: error:" in err and "--device must be" in err
