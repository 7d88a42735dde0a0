"""Set-up of a run, everything that can still fail on the user's input: data, device, model,
optimiser and the resumed state. ``build_setup`` returns them as one ``TrainSetup``."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from rsg_fast import checkpoint as ckpt
from rsg_fast import optim
from rsg_fast.data import LTData, build_datasets
from rsg_fast.models import build_model
from rsg_fast.train.config import RESUME_KEYS, TrainConfig, dataset_options
from rsg_fast.train.distributed import Process, process_device
from rsg_fast.train.init_weights import load_init_weights
from rsg_fast.train.run_folder import check_format


@dataclass
class TrainSetup:
    config: TrainConfig              # completed with the data's facts
    data: LTData
    device: torch.device             # this process's device
    model: nn.Module                 # with RSG unless --no-rsg; resumed weights loaded
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler     # fp16's loss scaling; disabled (a pass-through) otherwise
    start_epoch: int = 0             # first epoch to train (0, or the one after the resumed checkpoint)
    best_acc: float = -1.0           # best test top-1 so far, and its epoch (-1: none yet)
    best_epoch: int = -1
    resumed: dict | None = None      # the checkpoint resumed from (RNG states, its own config)
    init_note: str | None = None     # what --init-weights loaded (a new run's)


def resume_path(out: str, resume: str | None) -> str | None:
    """The checkpoint ``--resume`` names: its CKPT, or the run folder's last checkpoint."""
    if resume is None:
        return None
    return os.path.join(out, ckpt.LAST) if resume == "auto" else resume


def build_setup(config: TrainConfig, proc: Process, resume: str | None = None, *,
                not_given: frozenset[str] = frozenset()) -> TrainSetup:
    """This process's run: seeds the RNGs, builds the data, the model (on its device, in its memory
    format), the optimiser and the loss scaler, and loads ``resume``'s checkpoint when given. List-file
    datasets are built with ``normalize_on_device``: their images are uint8, for ``LoaderOnDevice``.
    ``ValueError`` / ``FileNotFoundError`` with a message for the user when the input does not fit.
    ``not_given``: the settings among ``loader`` and ``workers`` that the command line left to their
    defaults, which a resumed run takes from its checkpoint instead."""
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    data = _build_data(config, proc)
    empty = [c for c, n in enumerate(data.cls_num_list) if n == 0]
    if empty:  # LDAM margins, class-balanced weights and resampling all need every class present
        shown = ", ".join(map(str, empty[:10])) + (", ..." if len(empty) > 10 else "")
        raise ValueError(f"{len(empty)} of {data.num_classes} classes have no training image (ids {shown}); "
                         f"check the training list or set --num-classes")
    config = config.with_data(data, proc.world)
    per_process = -(-len(data.train) // proc.world)        # what each process's sampler yields
    if config.drop_last and per_process < config.batch_size // proc.world:
        raise ValueError(f"--batch-size {config.batch_size} is larger than the training set ({len(data.train)} "
                         f"images{f' over {proc.world} processes' if proc.world > 1 else ''}): with --drop-last "
                         f"(the default, as the published scripts) no batch is left; give a smaller --batch-size "
                         f"or --no-drop-last")
    if config.rsg and not 0 < len(config.head_classes) < data.num_classes:
        raise ValueError(f"--head-ratio {config.head_ratio} gives {len(config.head_classes)} head classes of "
                         f"{data.num_classes}; RSG needs at least one head and one tail class")
    device = process_device(torch.device(config.device), proc)
    model = build_model(config.arch, data.num_classes, rsg=config.rsg_options(), rsg_stage=config.rsg_stage,
                        use_norm=config.use_norm, head_classes=config.head_classes,
                        input_size=config.input_size).to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    # a resumed run's weights are its checkpoint's (it started from the file, if any: _resume checks)
    init_note = None
    if config.init_weights and resume is None:
        init_note = load_init_weights(model, config.init_weights, config.arch)
    if proc.world > 1:
        # Same initial weights everywhere (DDP broadcasts them anyway), different augmentation per process.
        torch.manual_seed(config.seed + 1_000 * proc.rank)
    # fp16 gradients underflow without loss scaling; bf16 has fp32's exponent range and needs none
    loss_scaling = config.amp == "fp16"
    optimizer = optim.sgd(model.parameters(), lr=config.lr, momentum=config.momentum,
                          weight_decay=config.weight_decay, loss_scaling=loss_scaling)
    scaler = torch.amp.GradScaler(device.type, enabled=loss_scaling)
    setup = TrainSetup(config, data, device, model, optimizer, scaler, init_note=init_note)
    if resume is not None:
        _resume(setup, resume, not_given)
    return setup


def _build_data(config: TrainConfig, proc: Process) -> LTData:
    def build(download: bool) -> LTData:
        return build_datasets(config.dataset, download=download, normalize_on_device=True,   # list-file data
                              **dataset_options(vars(config)))

    if not (config.download and proc.world > 1):
        return build(config.download)
    # One process downloads; the others wait for it (and hear about its failure) before reading.
    box: list = [None]
    if proc.is_main:
        try:
            data = build(True)
        except Exception as err:
            box[0] = f"process 0 could not prepare the data: {err}"
            dist.broadcast_object_list(box, src=0)
            raise
    dist.broadcast_object_list(box, src=0)
    if not proc.is_main:
        if box[0] is not None:
            raise FileNotFoundError(box[0])
        data = build(False)
    return data


def _resume(setup: TrainSetup, path: str, not_given: frozenset[str] = frozenset()) -> None:
    """Load a training checkpoint into ``setup``: the model, optimiser, loss scaler and RNG states, and
    from its configuration the run's ``--init-weights`` record and, unless the command line chose them,
    its loader and worker count. A checkpoint trained with other network settings is refused."""
    state = ckpt.load_checkpoint(path)
    check_format(state, path)
    if "optimizer" not in state or "config" not in state:
        raise ValueError(f"checkpoint {path!r} is not a training checkpoint (no optimizer state); "
                         f"resume from {ckpt.LAST}")
    saved = state["config"]
    for key in RESUME_KEYS:
        theirs, ours = saved.get(key), getattr(setup.config, key)
        if theirs != ours:
            hint = f" (give --mv-loss {theirs} to continue it)" if key == "mv_loss" else ""
            raise ValueError(f"checkpoint {path!r} was trained with {key}={theirs!r}, this run has "
                             f"{key}={ours!r}{hint}")
    started_from = saved.get("init_weights")
    if setup.config.init_weights is None:   # resumed without the flag: config.json keeps the run's record
        setup.config = dataclasses.replace(setup.config, init_weights=started_from)
    elif setup.config.init_weights != started_from:
        raise ValueError(f"--init-weights {setup.config.init_weights}: the run in checkpoint {path!r} started from "
                         f"{started_from or 'its own random initialisation'}; --init-weights is for a new run (give "
                         "the run's own, or none, with --resume)")
    # the batches the run was made with, unless --loader chooses (a DataLoader before --loader existed);
    # a checkpoint's "device" needs no switch: that is the default wherever it can run
    made_by_workers = saved.get("loader", "workers") == "workers"
    if "loader" in not_given and made_by_workers:
        setup.config = dataclasses.replace(setup.config, loader="workers")
    # ... and a DataLoader's worker count, unless --workers chooses: each worker draws its own crops, so
    # the count is part of the augmentation's random stream (and its default depends on the machine)
    if "workers" in not_given and made_by_workers and setup.config.loader == "workers" and "workers" in saved:
        setup.config = dataclasses.replace(setup.config, workers=saved["workers"])
    ckpt.load_state_strict(setup.model, state["model"], path)
    optim.load_state(setup.optimizer, state["optimizer"])
    if setup.scaler.is_enabled() and state.get("scaler"):   # absent or empty: the run was not fp16 until now
        setup.scaler.load_state_dict(state["scaler"])
    setup.start_epoch = int(state["epoch"]) + 1
    setup.best_acc, setup.best_epoch = float(state["best"]["acc"]), int(state["best"]["epoch"])
    setup.resumed = state
