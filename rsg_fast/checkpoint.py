"""Checkpoints that are written atomically and load with ``torch.load(weights_only=True)``: tensors,
plain dicts / lists / numbers / strings only (RNG states converted to tensors and lists).

Every write goes to a temporary file ``.tmp-*<name>`` in the same folder, then is renamed over the
target: a reader sees the old file or the new one, never half of one. A write that fails (a full disk,
a read-only folder) removes its temporary file and raises ``WriteError`` with the old file intact; a
process killed mid-write leaves its temporary file behind, which ``remove_temp_files`` clears."""
from __future__ import annotations

import os
import random
import tempfile
import zipfile
from typing import Any

import numpy as np
import torch

LAST = "checkpoint_last.pt"     # full training state: resume from it
BEST = "checkpoint_best.pt"     # inference checkpoint of the best epoch: no RSG keys, loads into the plain model
TMP_PREFIX = ".tmp-"            # temporary files of atomic writes: TMP_PREFIX + random + target name


class WriteError(OSError):
    """A file could not be written (its previous version, if any, is intact); the message names it."""


def _atomic(path: str, write) -> None:
    """Write through a temporary file in the same folder, then rename: readers never see half a file."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=os.path.basename(path), dir=folder)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(err, OSError):
            kept = "the previous version is intact" if os.path.exists(path) else "nothing was written"
            raise WriteError(err.errno, f"cannot write {path}: {err.strerror or err} ({kept})") from err
        raise


def remove_temp_files(folder: str) -> list[str]:
    """Delete the temporary files that killed writes left in ``folder``; return their names."""
    if not os.path.isdir(folder):
        return []
    names = sorted(n for n in os.listdir(folder) if n.startswith(TMP_PREFIX))
    for name in names:
        os.unlink(os.path.join(folder, name))
    return names


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_save(obj: Any, path: str) -> None:
    _atomic(path, lambda f: torch.save(obj, f))


def atomic_write_text(path: str, text: str) -> None:
    _atomic(path, lambda f: f.write(text.encode("utf-8")))


def load_checkpoint(path: str) -> dict:
    """Load on the CPU with ``weights_only=True``; clear errors for a missing or foreign file."""
    if os.path.isdir(path):   # e.g. the run folder itself: "not found" would be wrong
        raise FileNotFoundError(f"checkpoint {path!r} is a folder; give a checkpoint file in it ({BEST} or {LAST})")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {os.path.abspath(path)!r}")
    if not zipfile.is_zipfile(path):   # torch.save writes a zip archive; torch.load's error says only "KeyError: 101"
        raise ValueError(f"{path!r} is not an rsg-fast checkpoint (not the zip archive torch.save writes); "
                         f"rsg-fast train writes {BEST} and {LAST} in its run folder")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"cannot read checkpoint {path!r} with torch.load(weights_only=True), so it is not an "
                         f"rsg-fast checkpoint (those hold only tensors and plain data): {load_error_line(err)}") from err
    if not isinstance(obj, dict):
        raise ValueError(f"checkpoint {path!r} holds a {type(obj).__name__}, expected a dict")
    return obj


def load_error_line(err: Exception) -> str:
    """The line of torch.load's error that says what failed: its weights_only message is a page of advice
    (weights_only=False, safe globals) that a user of these commands cannot act on."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    named = [line for line in lines if "WeightsUnpickler error:" in line]
    if named:
        return named[0].split("WeightsUnpickler error:", 1)[1].split(". ")[0].strip()
    return lines[0] if lines else type(err).__name__


def rng_state() -> dict:
    """Every RNG the training loop draws from (torch CPU and CUDA, numpy, Python), as plain data."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": py_state[0], "state": list(py_state[1]), "gauss": py_state[2]},
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    # CUDA states only when the machine has as many GPUs as the one that saved them.
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))


def load_state_strict(model: torch.nn.Module, state_dict: dict, source: str) -> None:
    """``load_state_dict(strict=True)`` with an error that says what did not match and why it matters."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    wrong = [f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
             for k in own if k in state_dict and hasattr(state_dict[k], "shape") and state_dict[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        parts = []
        for name, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", wrong)):
            if items:
                parts.append(f"{len(items)} {name} (e.g. {', '.join(items[:3])})")
        raise ValueError(f"checkpoint {source!r} does not fit this model (another architecture, class count, "
                         f"classifier or RSG setting?): " + "; ".join(parts))
    model.load_state_dict(state_dict, strict=True)
