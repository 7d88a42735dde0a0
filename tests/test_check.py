"""`rsg-fast check`: the users' self-test passes here, fails loudly when a fast path is off, and
shares its comparison rule with the test suite (rsg_fast.testing)."""
from __future__ import annotations

import importlib
import json
import subprocess
import sys

import pytest
import torch

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
    assert rows and all(r["passed"] for r in rows) and json.loads(report.read_text())["complete"]
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


def test_a_case_that_raises_is_a_failing_row_and_the_check_goes_on(monkeypatch, capsys, tmp_path):
    """A compile or CUDA error in one case (first seen on a GPU) must not end the check: the rows
    after it still run and reach the JSON file."""
    real = check.check_op

    def check_op(op, backend, dtype, shape, device, seed=0):
        if op == "displacement" and shape[0] == "odd":
            raise RuntimeError("PTX assembly failed\nsecond line")
        return real(op, backend, dtype, shape, device, seed)

    monkeypatch.setattr(check, "check_op", check_op)
    report = tmp_path / "check.json"
    assert check.main(["--quick", "--device", "cpu", "--backends", "torch", "--json", str(report)]) == 1
    doc = json.loads(report.read_text(), parse_constant=lambda name: pytest.fail(f"{name} is not strict JSON"))
    rows = doc["rows"]
    errors = [r for r in rows if not r["passed"]]
    assert [(r["op"], r["dtype"], r["shape"]) for r in errors] == [("displacement", "float32", "odd"),
                                                                    ("displacement", "float64", "odd")]
    assert errors[0]["worst"] == "error: RuntimeError: PTX assembly failed"
    assert errors[0]["max_abs"] is None and errors[0]["max_rel"] is None
    assert doc["complete"] and rows[-1]["op"] == "RSG (original, generation, host_target)" and rows[-1]["passed"]
    assert "error: RuntimeError: PTX assembly failed" in capsys.readouterr().out


def test_command_line(capsys):
    assert cli.main(["check", "--help"]) == 0
    assert "float64 references" in capsys.readouterr().out
    assert check.main(["--quick", "--full"]) == 2
    assert check.main(["--device", "tpu"]) == 2
    assert check.main(["--backends", "jax"]) == 2
    err = capsys.readouterr().err
    assert "rsg-fast check: error:" in err and "--device must be" in err
    # an unwritable --json is a usage error before any row runs (it was a traceback after the first)
    assert check.main(["--quick", "--json", "/nonexistent-folder/rows.json"]) == 2
    captured = capsys.readouterr()
    assert "--json /nonexistent-folder/rows.json: cannot write it" in captured.err and "PASS" not in captured.out


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("op", check.OPS)
def test_half_precision_rows_pass_with_the_pytorch_path(op, dtype):
    """The fp16/bf16 rows `rsg-fast check` runs on CUDA, here with the PyTorch path on the CPU. They
    failed correct results: the output weights were not representable in the dtype (autograd rounds a
    half-precision output's gradient), and the MV terms' centre-table gradient passes through a tensor
    of the maps' dtype (check.ROUNDED_ON_THE_WAY: one rounding of it is the tolerance there)."""
    for shape in ("odd", "cifar"):
        row = check.check_op(op, "torch", dtype, check.SHAPES[shape], torch.device("cpu"))
        assert row.passed, check.format_row(row)


def test_full_fp32_turns_tf32_off_and_restores_the_settings():
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    before = (cudnn.allow_tf32, matmul.allow_tf32, cudnn.benchmark)
    cudnn.allow_tf32, matmul.allow_tf32, cudnn.benchmark = True, True, True
    try:
        with check.full_fp32():
            assert not cudnn.allow_tf32 and not matmul.allow_tf32 and cudnn.benchmark
        assert cudnn.allow_tf32 and matmul.allow_tf32 and cudnn.benchmark
    finally:
        cudnn.allow_tf32, (matmul.allow_tf32, cudnn.benchmark) = before[0], before[1:]


NEW_PRECISION_API_CALLER = """
import torch
from rsg_fast import check
flags = (torch.backends.cuda.matmul, torch.backends.cudnn.conv, torch.backends.cudnn.rnn)
for f in flags:
    f.fp32_precision = "tf32"                  # a caller of the new API (torch >= 2.9)
with check.full_fp32():
    assert [f.fp32_precision for f in flags] == ["ieee"] * 3
assert [f.fp32_precision for f in flags] == ["tf32"] * 3
print("restored")
"""


@pytest.mark.skipif(not hasattr(torch.backends.cuda.matmul, "fp32_precision"), reason="torch < 2.9")
def test_full_fp32_serves_a_caller_of_the_new_precision_api():
    """Once a process has set the new fp32_precision flags, reading the legacy allow_tf32 ones raises
    (torch >= 2.9); in a fresh process, since that state sticks to it."""
    done = subprocess.run([sys.executable, "-c", NEW_PRECISION_API_CALLER], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and "restored" in done.stdout, done.stderr[-2000:]


def test_bf16_is_checked_only_where_the_gpu_computes_in_it(monkeypatch):
    """A T4 or V100 (before sm_80) would check torch's and Triton's bf16 emulation: left out there."""
    assert check.checked_dtypes(torch.device("cpu")) == ([torch.float32, torch.float64],) * 2
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    assert check.checked_dtypes(torch.device("cuda")) == ([torch.float32, torch.float16], [torch.float32])
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert check.checked_dtypes(torch.device("cuda")) == ([torch.float32, torch.float16, torch.bfloat16],
                                                          [torch.float32, torch.bfloat16])
