"""`bash benchmarks/gpu_check.sh --dry-run`: the lent-GPU script runs its steps on the CPU, as a bare
machine would run it, so it cannot rot between the sessions that are lent a GPU.

From a clean copy of the repository's files (what git tracks, plus new files it does not ignore),
with a PATH offering `python3` (this interpreter) and a few shell tools but no `python`, `pip`,
`pytest` or `rsg-fast`, and an environment holding nothing else. About a minute and a half on a 2-core
CPU, and a minute more for the `--steps` run.
"""
from __future__ import annotations

import fnmatch
import json
import os
import shutil
import site
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = "benchmarks/gpu_check.sh"
TOOLS = ("bash", "timeout", "date", "mktemp", "mkdir", "tee", "tail", "cat", "cp", "rm", "ln", "grep", "cut",
         "head", "sed", "sleep")
EXPECTED = {"gpu-check.log", "gpu-check.json", "check.json", "pytest-cuda.xml", "bench-ops.json", "bench-module.json"}
OPTIONAL = {"bench-ops.png", "bench-module.png"}     # when matplotlib imports


def _repository_files() -> list[str]:
    """The files a clean copy holds: what git tracks plus new files it does not ignore; outside a git
    checkout (a source archive), every file but those .gitignore's patterns name."""
    if shutil.which("git") is not None and (ROOT / ".git").exists():
        out = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             capture_output=True, text=True, check=True).stdout
        return [f for f in out.split("\0") if f and (ROOT / f).is_file()]
    ignored = [line.strip().rstrip("/") for line in (ROOT / ".gitignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")] + [".git"]
    return [str(p.relative_to(ROOT)) for p in ROOT.rglob("*") if p.is_file()
            and not any(fnmatch.fnmatch(part, pat) for part in p.relative_to(ROOT).parts for pat in ignored)]


def _site_snapshot() -> dict:
    """Names and modification times in this interpreter's site-packages: the dry run must not change them."""
    snap = {}
    for d in site.getsitepackages():
        if os.path.isdir(d):
            snap.update({os.path.join(d, n): os.stat(os.path.join(d, n)).st_mtime_ns for n in os.listdir(d)})
    return snap


def _prepare(tmp_path_factory, **env_extra: str) -> tuple[dict, Path, Path, Path, dict]:
    """(tools, src, out, tmp, env): a clean copy of the repository and the bare environment to run it in."""
    tools = {t: shutil.which(t) for t in TOOLS}
    # the lent machine has these; a machine without them cannot check the script, which is a failure
    assert all(tools.values()), f"shell tools the dry run needs are missing: {[t for t, p in tools.items() if not p]}"
    base = tmp_path_factory.mktemp("gpu-check")
    src, bin_dir, out, tmp = base / "src", base / "bin", base / "out", base / "tmp"
    for d in (bin_dir, out, tmp):
        d.mkdir()
    for f in _repository_files():
        (src / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, src / f)
    for name, path in tools.items():
        (bin_dir / name).symlink_to(path)
    # a wrapper, not a symlink: a venv's python must keep its own path to find its packages
    (bin_dir / "python3").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (bin_dir / "python3").chmod(0o755)
    env = {"PATH": str(bin_dir), "HOME": str(base), "TMPDIR": str(tmp), "OUT": str(out),
           "GPU_CHECK_COMMIT": "dry-run-test", **env_extra}
    if os.environ.get("LD_LIBRARY_PATH"):
        env["LD_LIBRARY_PATH"] = os.environ["LD_LIBRARY_PATH"]
    return tools, src, out, tmp, env


def _dry_run(tmp_path_factory, *args: str, **env_extra: str) -> dict:
    tools, src, out, tmp, env = _prepare(tmp_path_factory, **env_extra)
    before = _site_snapshot()
    proc = subprocess.run([tools["bash"], SCRIPT, "--dry-run", *args], cwd=src, env=env, capture_output=True,
                          text=True, timeout=900)
    return {"proc": proc, "src": src, "out": out, "tmp": tmp, "site_changed": _site_snapshot() != before}


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    # the warm pass may need longer than check + tests on a loaded CPU: wait for it, so that it passes
    return _dry_run(tmp_path_factory, GPU_CHECK_WARM_WAIT_S="300")


def test_dry_run_passes_every_step(dry_run):
    proc = dry_run["proc"]
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    doc = json.loads((dry_run["out"] / "gpu-check.json").read_text())
    steps = {s["name"]: s["status"] for s in doc["steps"]}
    assert list(steps) == ["install", "check", "tests", "warm", "ops", "module"], steps
    assert steps["install"].startswith("passed: ")
    assert steps["check"] == "passed"
    rows = json.loads((dry_run["out"] / "check.json").read_text())["rows"]
    assert rows and all(r["passed"] for r in rows)
    assert all(steps[s] == "passed" for s in ("tests", "warm", "ops", "module")), "; ".join(f"{k}: {v}" for k, v in steps.items())
    assert doc["dry_run"] is True and doc["commit"] == "dry-run-test" and doc["torch"] and doc["date"]
    assert "gpu_check (dry run)" in proc.stdout


def test_dry_run_leaves_at_most_8_files_directly_under_out(dry_run):
    found = {p.name for p in dry_run["out"].iterdir()}
    assert all(p.is_file() for p in dry_run["out"].iterdir())
    assert len(found) <= 8 and EXPECTED <= found <= EXPECTED | OPTIONAL, found


def test_dry_run_bench_files_are_complete_results(dry_run):
    ops = json.loads((dry_run["out"] / "bench-ops.json").read_text())
    module = json.loads((dry_run["out"] / "bench-module.json").read_text())
    assert ops["complete"] and module["complete"] and ops["commit"]["sha"] == "dry-run-test"
    assert {r["dtype"] for r in ops["rows"]} == {"fp32", "bf16"}
    assert any(r["variant"] == "mv_terms:torch" and r["status"] == "ok" for r in ops["rows"])
    timed = {r["variant"] for r in module["rows"] if r["status"] == "ok"}
    assert {"reference", "reference-compiled", "rsg-compiled", "resnet32+rsg", "resnet32+rsg-compiled"} <= timed


def test_dry_run_cleans_up_and_changes_no_python_environment(dry_run):
    assert not (dry_run["src"] / "rsg_fast" / "kernels").exists()     # the fallback's symlink, if made
    assert list(dry_run["tmp"].iterdir()) == []                         # the throwaway venv and caches
    assert not dry_run["site_changed"]


def test_warm_pass_compiles_the_module_steps_compiled_rows_before_the_timings(dry_run):
    log = (dry_run["out"] / "gpu-check.log").read_text()
    started, ops = log.index("== warm (background"), log.index("== ops (limit")
    compiled = "rsg-compiled,reference-compiled,resnet32-compiled,resnet32+rsg-compiled"
    assert compiled in log[started:log.index("\n", started)]
    assert started < log.index("== check (limit") and log.index("== warm: passed") < ops   # done before any timing
    assert "json:" in log[log.index("== warm: its output"):ops]          # the warm bench ran to its end


def test_steps_runs_only_the_steps_named_with_the_whole_budget(tmp_path_factory):
    run = _dry_run(tmp_path_factory, "--steps", "module")
    assert run["proc"].returncode == 0, run["proc"].stdout[-4000:] + run["proc"].stderr[-2000:]
    doc = json.loads((run["out"] / "gpu-check.json").read_text())
    steps = {s["name"]: s for s in doc["steps"]}
    assert list(steps) == ["install", "check", "tests", "ops", "module"]      # no warm pass: nothing to overlap
    assert all(steps[s]["status"] == "not selected (--steps)" for s in ("check", "tests", "ops"))
    assert steps["module"]["status"] == "passed" and steps["module"]["limit_s"] == 420    # its cap: no later floor
    assert {p.name for p in run["out"].iterdir()} <= {"gpu-check.log", "gpu-check.json", "bench-module.json",
                                                      "bench-module.png"}
    assert list(run["tmp"].iterdir()) == []


def test_the_inputs_step_runs_only_when_named_and_reports_into_gpu_check_json(dry_run, tmp_path_factory):
    default = json.loads((dry_run["out"] / "gpu-check.json").read_text())
    assert "inputs" not in {s["name"] for s in default["steps"]} and "inputs" not in default
    run = _dry_run(tmp_path_factory, "--steps", "inputs")
    assert run["proc"].returncode == 0, run["proc"].stdout[-4000:] + run["proc"].stderr[-2000:]
    doc = json.loads((run["out"] / "gpu-check.json").read_text())
    steps = {s["name"]: s for s in doc["steps"]}
    assert steps["inputs"]["status"] == "passed" and steps["inputs"]["limit_s"] == 90
    timed = {b["benchmark"]: b for b in doc["inputs"]}
    assert set(timed) == {"test_cifar_training_batch[dataloader-main-process]", "test_cifar_training_batch[device-batches]",
                          "test_list_file_training_batch[per-image-float32]",
                          "test_list_file_training_batch[on-device-uint8]"}
    assert all(b["median_ms"] > 0 and b["rounds"] >= 10 and b["device"] == "cpu" for b in timed.values())
    assert "median" in run["proc"].stdout.split("gpu_check (dry run)")[-1]      # the final table lists them
    assert {p.name for p in run["out"].iterdir()} == {"gpu-check.log", "gpu-check.json"}
    assert list(run["tmp"].iterdir()) == []


def test_a_failed_pip_install_falls_back_to_the_source_tree(tmp_path_factory):
    """The lent machine's pip may fail to install the package (say a setuptools older than the 77 that
    pyproject.toml's licence fields need, as --no-build-isolation uses the machine's own): the script
    then runs from the source tree (PYTHONPATH and a kernels symlink) and removes the symlink after.
    Here pip fails because its constraints file does not exist."""
    run = _dry_run(tmp_path_factory, "--steps", "check", PIP_CONSTRAINT=str(tmp_path_factory.mktemp("no") / "c.txt"))
    assert run["proc"].returncode == 0, run["proc"].stdout[-4000:] + run["proc"].stderr[-2000:]
    steps = {s["name"]: s["status"] for s in json.loads((run["out"] / "gpu-check.json").read_text())["steps"]}
    assert steps["install"] == "passed: pythonpath-fallback" and steps["check"] == "passed", steps
    log = (run["out"] / "gpu-check.log").read_text()
    assert "c.txt" in log and f"rsg_fast from {run['src']}/rsg_fast/__init__.py" in log    # pip's error, then this copy
    assert not (run["src"] / "rsg_fast" / "kernels").exists() and list(run["tmp"].iterdir()) == []
    assert not run["site_changed"]


@pytest.mark.parametrize("args, message", [
    (["--steps", "module,bench"], "unknown step 'bench'"),
    (["--steps", ","], "no step named"),
    (["--steps"], "--steps needs a value"),
    (["--fast"], "unknown argument '--fast'"),
])
def test_bad_arguments_stop_before_anything_runs(tmp_path, args, message):
    proc = subprocess.run(["bash", str(ROOT / SCRIPT), *args], cwd=tmp_path, env={**os.environ, "OUT": str(tmp_path / "out")},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()


def _processes_naming(text: str) -> dict[int, str]:
    """pid -> command line of the processes whose command line holds ``text``."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmd:
                found[int(entry.name)] = cmd
    return found


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="lists processes through /proc")
def test_an_interrupted_run_stops_its_step_and_the_warm_pass(tmp_path_factory):
    """SIGTERM to the script (the device tool's timeout) while check and the warm pass run. Each runs
    under `timeout`, in a process group of its own that the signal does not reach: the cleanup stopped
    the warm pass, but the step kept running (on the GPU) after the script had exited and removed its
    work folder, which the step then wrote into again."""
    tools, src, out, tmp, env = _prepare(tmp_path_factory)
    proc = subprocess.Popen([tools["bash"], SCRIPT, "--dry-run"], cwd=src, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    log, deadline = out / "gpu-check.log", time.monotonic() + 300
    try:
        while "== check (limit" not in (log.read_text() if log.exists() else ""):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0][-3000:]
            time.sleep(0.2)
        time.sleep(1)
        assert "== warm (background" in log.read_text()
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
        for _ in range(10):    # a moment for one that exits on its own (the summary's python3, say)
            left = _processes_naming(str(tmp))
            if not left:
                break
            time.sleep(0.3)
        assert not left, left
        assert list(tmp.iterdir()) == []
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in _processes_naming(str(tmp)):   # this test's own leftovers, if it failed
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
