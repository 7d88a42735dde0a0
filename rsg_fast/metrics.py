"""Accuracy per class and per shot group, and the per-epoch metrics files (JSONL, CSV, TensorBoard)."""
from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
from collections.abc import Callable, Sequence

import torch

from rsg_fast.checkpoint import atomic_write_text

# Many / medium / few shot: > 100, 20-100, < 20 training images (Liu et al., used by the paper).
MANY_SHOT, FEW_SHOT = 100, 20
PER_CLASS_LINE_MAX_CLASSES = 20   # the console prints each class's accuracy up to this many classes


def accuracy_summary(correct: torch.Tensor, total: torch.Tensor, train_counts: Sequence[int]) -> dict:
    """Top-1, many / medium / few-shot and per-class accuracy (%) from per-class (correct, total) counts,
    under the keys metrics.jsonl and ``rsg-fast evaluate --json`` use."""
    class_acc = per_class_accuracy(correct, total)
    shots = shot_accuracy(class_acc, train_counts)
    return {"top1": 100.0 * float(correct.sum()) / max(float(total.sum()), 1.0), "many_acc": shots["many"],
            "medium_acc": shots["medium"], "few_acc": shots["few"], "per_class_acc": class_acc}


def per_class_accuracy(correct: torch.Tensor, total: torch.Tensor) -> list[float | None]:
    """Accuracy (%) of each class; None for a class with no evaluation sample."""
    return [None if int(t) == 0 else 100.0 * float(c) / float(t) for c, t in zip(correct.tolist(), total.tolist())]


def shot_accuracy(class_acc: Sequence[float | None], train_counts: Sequence[int]) -> dict[str, float | None]:
    """Mean per-class accuracy over many- (> 100), medium- (20-100) and few-shot (< 20) classes; None
    for a group without classes (e.g. few-shot on CIFAR-10-LT, whose rarest class has 50 images)."""
    groups: dict[str, list[float]] = {"many": [], "medium": [], "few": []}
    for acc, n in zip(class_acc, train_counts):
        if acc is None:
            continue
        key = "many" if n > MANY_SHOT else ("few" if n < FEW_SHOT else "medium")
        groups[key].append(acc)
    return {k: (sum(v) / len(v) if v else None) for k, v in groups.items()}


def shot_sizes(train_counts: Sequence[int]) -> dict[str, int]:
    return {"many": sum(n > MANY_SHOT for n in train_counts),
            "medium": sum(FEW_SHOT <= n <= MANY_SHOT for n in train_counts),
            "few": sum(n < FEW_SHOT for n in train_counts)}


def format_acc(v: float | None) -> str:
    """An accuracy for a log line: two decimals, or n/a for an empty group."""
    return "n/a" if v is None else f"{v:.2f}"


class MetricsLog:
    """All epochs' records, rewritten atomically to ``metrics.jsonl`` and ``metrics.csv`` after each
    epoch (so a crash never leaves half a line, and a resumed run drops the epochs it re-runs).

    The CSV holds one column per class when there are at most ``max_csv_classes`` classes; the JSONL
    always holds the full per-class list. TensorBoard scalars are written when tensorboard is installed
    and starts; otherwise ``notify`` (default: print to stderr) is told so, once.
    """

    SCALARS = ("epoch", "lr", "loss", "loss_cls", "loss_cesc", "loss_mv", "train_acc", "test_acc", "many_acc",
               "medium_acc", "few_acc", "n_generated", "rsg_phase", "epoch_time_s")

    def __init__(self, out_dir: str, num_classes: int, resume_from_epoch: int | None = None,
                 max_csv_classes: int = 100, tensorboard: bool = True,
                 notify: Callable[[str], None] | None = None):
        self.out_dir = out_dir
        self.jsonl = os.path.join(out_dir, "metrics.jsonl")
        self.csv = os.path.join(out_dir, "metrics.csv")
        self.num_classes = num_classes
        self.class_columns = num_classes <= max_csv_classes
        self.records: list[dict] = []
        if resume_from_epoch is not None and os.path.exists(self.jsonl):
            with open(self.jsonl, encoding="utf-8") as f:
                self.records = [r for r in map(json.loads, filter(str.strip, f)) if r["epoch"] < resume_from_epoch]
        self.notify = notify or (lambda line: print(line, file=sys.stderr, flush=True))
        self.tb = None
        if tensorboard:
            try:  # optional: only when tensorboard is installed
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(os.path.join(out_dir, "tensorboard"), purge_step=resume_from_epoch)
            except Exception as err:  # not installed (ImportError), or it fails to start (e.g. absl missing)
                self._tensorboard_off(err)

    def append(self, record: dict) -> None:
        # A diverged loss (NaN / inf) is written as null / blank: the files stay valid JSON and CSV.
        record = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        self.records.append(record)
        atomic_write_text(self.jsonl, "".join(json.dumps(r, allow_nan=False) + "\n" for r in self.records))
        buf = io.StringIO()
        header = list(self.SCALARS) + ([f"acc_class_{i}" for i in range(self.num_classes)] if self.class_columns else [])
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(header)
        for r in self.records:
            row = [r.get(k) for k in self.SCALARS] + (list(r["per_class_acc"]) if self.class_columns else [])
            w.writerow(["" if v is None else v for v in row])
        atomic_write_text(self.csv, buf.getvalue())
        if self.tb is not None:
            try:
                for k in self.SCALARS[1:]:
                    v = record.get(k)
                    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                        self.tb.add_scalar(k, v, record["epoch"])
                self.tb.flush()
            except Exception as err:  # e.g. its folder became unwritable: the run goes on without it
                self.tb = None
                self._tensorboard_off(err)

    def _tensorboard_off(self, err: Exception) -> None:
        self.notify(f"note: no TensorBoard scalars are written ({type(err).__name__}: {err}); metrics.jsonl "
                    f"and metrics.csv hold every value (`pip install tensorboard` adds the scalars)")

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()

    @staticmethod
    def summary_line(r: dict, epochs: int) -> str:
        return (f"epoch {r['epoch'] + 1}/{epochs} lr {r['lr']:.5f} | loss {r['loss']:.4f} (cls {r['loss_cls']:.4f} "
                f"cesc {r['loss_cesc']:.4g} mv {r['loss_mv']:.4g}) train {r['train_acc']:.2f}% "
                f"+{r['n_generated']} generated | test top-1 {r['test_acc']:.2f}% many {format_acc(r['many_acc'])} "
                f"medium {format_acc(r['medium_acc'])} few {format_acc(r['few_acc'])} | {r['epoch_time_s']:.1f}s")

    @staticmethod
    def per_class_line(r: dict) -> str:
        return "  per-class acc: " + " ".join(format_acc(a) for a in r["per_class_acc"])
