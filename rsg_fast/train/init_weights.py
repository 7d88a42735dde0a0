"""``--init-weights FILE``: start a new run from another network's weights, e.g. the paper's Places-LT
recipe, which fine-tunes a ResNet-152 pre-trained on ImageNet.

The file is a state dict saved with ``torch.save`` (torchvision's weight files are one), or a dict
holding one under ``"model"`` (an rsg-fast checkpoint) or ``"state_dict"``, with or without the
``module.`` prefix that DataParallel and DistributedDataParallel add. It is read with
``weights_only=True``. Every tensor of the network before its classifier must be in it with the
same shape (BatchNorm's step counters may be absent); the classifier is taken from it only when its
keys and shapes match this network's (another class count, or the cosine classifier of
``--use-norm``, keep a fresh one); RSG's parameters always start fresh (its centres and
transformation belong to a run's classes and stage). Nothing is copied until all of this holds, so a
rejected file leaves the network untouched.
"""
from __future__ import annotations

import os

import torch
import torch.nn as nn

from rsg_fast.checkpoint import load_error_line
from rsg_fast.models.common import RSG_PREFIX
from rsg_fast.train.run_folder import check_format

FLAG = "--init-weights"


def load_init_weights(model: nn.Module, path: str, arch: str) -> str:
    """Copy the weights in ``path`` into ``model`` (see the module's doc); a line saying what was
    loaded and what kept its fresh initialisation. ``ValueError`` / ``FileNotFoundError`` naming the
    flag, the file and the keys that do not fit."""
    theirs = _read_state_dict(path)
    state = model.state_dict()
    ours = {k: v for k, v in state.items() if not k.startswith(RSG_PREFIX)}
    prefix = model.classifier_name + "."
    head = {k for k in ours if k.startswith(prefix)}
    their_head = {k for k in theirs if k.startswith(prefix)}
    theirs = {k: v for k, v in theirs.items() if not k.startswith(RSG_PREFIX)}
    bad = sorted(k for k, v in theirs.items() if not isinstance(v, torch.Tensor))
    if bad:
        raise ValueError(f"{FLAG} {path}: not tensors: {_some(bad)}")

    # BatchNorm's step counter (absent from files saved before PyTorch 0.4.1, e.g. torchvision's ResNet
    # weights) keeps this network's value, as load_state_dict(strict=True) does
    missing = sorted(k for k in ours
                     if k not in head and k not in theirs and not k.endswith(".num_batches_tracked"))
    extra = sorted(k for k in theirs if k not in ours and k not in their_head)
    if missing or extra:
        parts = [f"{what} {_some(keys)}" for what, keys in (("lacks", missing),
                                                              ("has keys this network has not:", extra)) if keys]
        raise ValueError(f"{FLAG} {path}: the file does not fit --arch {arch}: it {'; it '.join(parts)}")
    shapes = [f"{k} {tuple(theirs[k].shape)} (this network: {tuple(ours[k].shape)})" for k in sorted(ours)
              if k not in head and k in theirs and theirs[k].shape != ours[k].shape]
    if shapes:
        raise ValueError(f"{FLAG} {path}: tensors of other shapes: {_some(shapes)}")

    take_head = their_head == head and all(theirs[k].shape == ours[k].shape for k in head)
    loaded = [k for k in ours if k in theirs and (k not in head or take_head)]
    state.update((k, theirs[k]) for k in loaded)
    model.load_state_dict(state, strict=True)
    kept = [] if take_head else [f"the classifier ({model.classifier_name}: {_head_shape(theirs, their_head)} in the "
                                 f"file, {_head_shape(ours, head)} here)"]
    if getattr(model, "rsg", None) is not None:
        kept.append("RSG")
    return f"initialised from {path}: {len(loaded)} tensors" + (f"; fresh: {' and '.join(kept)}" if kept else "")


def _read_state_dict(path: str) -> dict[str, torch.Tensor]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{FLAG}: file not found: {os.path.abspath(path)!r}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"{FLAG} {path}: cannot read it with torch.load(weights_only=True): {load_error_line(err)}") \
            from err
    if isinstance(obj, dict):   # a checkpoint: the first of its usual entries that holds tensors
        try:   # an rsg-fast one of a format this version reads, or none (another program's)
            check_format(obj, path)
        except ValueError as err:
            raise ValueError(f"{FLAG}: {err}") from None
        wrapped = [obj[key] for key in ("model", "state_dict") if isinstance(obj.get(key), dict)]
        tensors = [w for w in wrapped if w and all(isinstance(v, torch.Tensor) for v in w.values())]
        obj = (tensors or wrapped or [obj])[0]
    if not isinstance(obj, dict) or not obj or not all(isinstance(k, str) for k in obj):
        raise ValueError(f"{FLAG} {path}: expected a state dict (a dict of tensors by name, or one under 'model' or "
                         f"'state_dict'), got {type(obj).__name__}")
    if all(k.startswith("module.") for k in obj):   # saved from DataParallel / DistributedDataParallel
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def _some(items: list[str], shown: int = 5) -> str:
    return ", ".join(items[:shown]) + (f" and {len(items) - shown} more" if len(items) > shown else "")


def _head_shape(state: dict, keys: set[str]) -> str:
    return ", ".join(f"{k.rsplit('.', 1)[1]} {tuple(state[k].shape)}" for k in sorted(keys)) or "none"
