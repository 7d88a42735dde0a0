"""What a benchmark result must say about where it ran: device, versions, commit, CPU, threads, load.

``capture(device)`` returns the ``device``, ``versions`` and ``commit`` entries of the result JSON.
The commit comes from git when the package sits in a checkout; a copy without ``.git`` (as on a
lent GPU machine) can name it through the environment variable ``RSG_FAST_COMMIT``.
"""
from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
from pathlib import Path

import torch

COMMIT_ENV = "RSG_FAST_COMMIT"


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _run(cmd: list[str]) -> str | None:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout if proc.returncode == 0 else None


def _driver_version() -> str | None:
    """The NVIDIA driver version (first GPU), from nvidia-smi when it is on the PATH."""
    out = _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
    return out.strip().splitlines()[0].strip() if out and out.strip() else None


def git_commit() -> dict:
    """{"sha", "dirty", "changed_files", "source"} of the checkout holding this package."""
    root = str(Path(__file__).resolve().parents[2])
    sha = (_run(["git", "-C", root, "rev-parse", "HEAD"]) or "").strip() or None
    if sha is None:
        named = os.environ.get(COMMIT_ENV) or None
        return {"sha": named, "dirty": None, "source": f"${COMMIT_ENV}" if named else "unknown (no git checkout)"}
    status = _run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"]) or ""
    changed = [ln[3:] for ln in status.splitlines() if ln.strip()]   # porcelain lines: "XY path"
    return {"sha": sha, "dirty": bool(changed), "changed_files": changed[:50], "source": "git"}


def _triton_version() -> str | None:
    try:
        import triton
        return triton.__version__
    except Exception:  # noqa: BLE001 (ImportError, or a broken install)
        return None


def capture(device: torch.device) -> dict:
    """The ``device``, ``versions`` and ``commit`` entries of a result."""
    import numpy

    import rsg_fast

    dev = {"type": device.type, "threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
           "cpu_count": os.cpu_count(), "cpu": cpu_name(), "platform": platform.platform()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        dev.update(name=props.name, capability=f"{props.major}.{props.minor}",
                   memory_gib=round(props.total_memory / (1 << 30), 1), multiprocessors=props.multi_processor_count,
                   driver=_driver_version())
    else:
        dev["name"] = dev["cpu"]
    versions = {"python": platform.python_version(), "torch": torch.__version__, "triton": _triton_version(),
                "numpy": numpy.__version__, "rsg_fast": getattr(rsg_fast, "__version__", None),
                "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None}
    return {"device": dev, "versions": versions, "commit": git_commit()}
