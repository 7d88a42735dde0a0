"""The run folder (``--out``): checked before any work, and the order its checkpoints are written in.

Each epoch writes ``checkpoint_last.pt`` (full training state, holding the best epoch so far) and,
when the epoch is a new best, then ``checkpoint_best.pt`` (its inference weights). Each file is
written atomically (``rsg_fast.checkpoint``), but a kill between the two writes, or during the second,
leaves a last checkpoint that names a new best and a best checkpoint from an older epoch. That is
the only way the two can disagree, and the last checkpoint then holds the best epoch's own weights,
so ``restore_best`` rewrites the best checkpoint from it when a run is resumed.
"""
from __future__ import annotations

import json
import os
import tempfile

import torch.nn as nn

from rsg_fast import __version__
from rsg_fast import checkpoint as ckpt

# The checkpoints' "format" entries. A change to what their keys hold gets a new number, which this
# version then refuses (check_format) rather than misreading; rsg-fast 0.1 wrote no "format".
FORMAT_LAST = "rsg_fast.train/1"
FORMAT_BEST = "rsg_fast.inference/1"


def check_writable(out: str, flag: str = "--out") -> None:
    """``ValueError`` naming ``flag`` unless files can be created in ``out`` (made later if missing).

    Tries it: creates and removes a temporary file in ``out``, or in its nearest existing parent when
    ``out`` does not exist yet (``os.access`` says yes to root in a read-only folder and knows nothing
    of read-only mounts). Nothing is left on disk.
    """
    path = os.path.abspath(out)
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{flag} {out}: a file of that name exists; a folder is needed")
    probe = path
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise ValueError(f"{flag} {out}: {probe} is a file, so no folder can be made under it")
    try:
        fd, tmp = tempfile.mkstemp(prefix=ckpt.TMP_PREFIX, suffix="write-test", dir=probe)
    except OSError as err:
        where = "" if probe == path else f" (in {probe}, where it would be made)"
        raise ValueError(f"{flag} {out}: cannot create files{where}: {err.strerror or err}") from None
    os.close(fd)
    os.unlink(tmp)


def check_format(state: dict, path: str) -> None:
    """``ValueError`` for a checkpoint in a format this version does not know: its entries may mean
    other things than they do here (a later rsg-fast wrote it, or another program)."""
    found = state.get("format")
    if found is not None and found not in (FORMAT_LAST, FORMAT_BEST):
        raise ValueError(f"checkpoint {path!r} is in format {found!r}, which rsg-fast {__version__} does not read "
                         f"(it reads {FORMAT_LAST} and {FORMAT_BEST}); a later rsg-fast, or another program, wrote it")


def training_checkpoint(epoch: int, config: dict, net: nn.Module, optimizer, scaler, best: tuple[float, int],
                        rng: list[dict]) -> dict:
    """``checkpoint_last.pt``'s state after epoch ``epoch``: everything ``--resume`` restores (the network
    with RSG, the optimiser, the loss scaler, the best (top-1, epoch) so far and every process's RNG
    states; ``config`` is ``TrainConfig.to_dict()``). "sampler" and "scheduler" say where the data order
    and learning rate stand, for readers of the file: a resumed run recomputes both from the config."""
    return {"format": FORMAT_LAST, "epoch": epoch, "config": config, "model": net.state_dict(),
            "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
            "best": {"acc": best[0], "epoch": best[1]}, "rng": rng,
            "sampler": {"seed": config["seed"], "epoch": epoch + 1},
            "scheduler": {"name": "paper_lr", "next_epoch": epoch + 1}}


def inference_checkpoint(model: nn.Module, config: dict, epoch: int, acc: float) -> dict:
    """The network without RSG (its keys dropped): loads strictly into ``build_model(arch, C, rsg=None)``."""
    return {"format": FORMAT_BEST, "epoch": epoch, "acc": acc, "config": dict(config),
            "model": model.inference_state_dict()}


class RunFolder:
    """The files of one run: ``config.json``, the two checkpoints (metrics: ``rsg_fast.metrics.MetricsLog``).

    Writes raise ``checkpoint.WriteError`` (previous files intact) when the disk is full or gone.
    """

    def __init__(self, out: str):
        self.out = out
        self.last = os.path.join(out, ckpt.LAST)
        self.best = os.path.join(out, ckpt.BEST)

    def prepare(self) -> list[str]:
        """Make the folder and remove what killed writes left in it; return those files' names."""
        try:
            os.makedirs(self.out, exist_ok=True)
        except OSError as err:
            raise ckpt.WriteError(err.errno, f"cannot create the run folder {self.out}: {err.strerror}") from err
        return ckpt.remove_temp_files(self.out)

    def write_config(self, config: dict) -> None:
        """``config.json``: ``config`` is ``TrainConfig.to_dict()``."""
        ckpt.atomic_write_text(os.path.join(self.out, "config.json"), json.dumps(config, indent=2) + "\n")

    def save_epoch(self, state: dict, net: nn.Module, *, is_best: bool, acc: float) -> None:
        """The training state of epoch ``state["epoch"]``, then, for a new best, its inference weights
        (this order is what ``restore_best`` relies on; see the module docstring)."""
        ckpt.atomic_save(state, self.last)
        if is_best:
            ckpt.atomic_save(inference_checkpoint(net, state["config"], state["epoch"], acc), self.best)

    def restore_best(self, state: dict, net: nn.Module) -> str | None:
        """After resuming from ``state`` (``net`` holds its weights): rewrite ``checkpoint_best.pt`` if it
        is not the best epoch that ``state`` names and ``state`` holds that epoch's weights. Returns a
        line for the user when the best checkpoint was rewritten or cannot be."""
        best_epoch, acc = int(state["best"]["epoch"]), float(state["best"]["acc"])
        if best_epoch < 0:
            return None
        found = self._best_epoch_on_disk()
        if found == best_epoch:
            return None
        had = "missing" if found is None else f"from epoch {found + 1}"
        if best_epoch == int(state["epoch"]):
            ckpt.atomic_save(inference_checkpoint(net, state["config"], best_epoch, acc), self.best)
            return (f"{ckpt.BEST} was {had} (the previous job stopped while writing it); rewrote it from "
                    f"{ckpt.LAST}: epoch {best_epoch + 1}, top-1 {acc:.2f}%")
        return (f"warning: {self.best} is {had}, but the run's best is epoch {best_epoch + 1} ({acc:.2f}%), "
                f"whose weights this checkpoint does not hold; it is written again when an epoch beats it")

    def _best_epoch_on_disk(self) -> int | None:
        try:
            return int(ckpt.load_checkpoint(self.best)["epoch"])
        except (OSError, ValueError, KeyError, TypeError):  # missing, half-written elsewhere, or foreign
            return None
