"""``TrainConfig``: every setting of a training run, typed, resolved once from the command line.

``resolve_config(args, world)`` fills in what the flags leave open (the paper's fractions of
``--epochs``, the step-imbalance values, the device) and checks the settings that depend on each
other, before any data is read. ``TrainConfig.with_data`` then adds what only the data can tell (class
counts, head classes, the image side). ``to_dict()`` is what ``config.json`` and the checkpoints hold:
the field order below is that file's key order: keep it stable, as older run folders hold it.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from rsg_fast.cli_args import resolve_device
from rsg_fast.data import DEFAULT_SUBSET, IN_MEMORY_DATASETS, LTData
from rsg_fast.metrics import shot_sizes
from rsg_fast.models import default_rsg_stage
from rsg_fast.train.workers import default_workers

# Settings that define the network: a checkpoint trained with other values cannot continue in this run.
MODEL_KEYS = ("arch", "num_classes", "use_norm", "rsg", "rsg_stage", "n_center", "contrastive_dim", "input_size")
# ... and the settings a resumed run must not switch silently (mv_loss changes what the loss means;
# its default changed after 0.1.0, so an older run resumed without --mv-loss would otherwise switch).
RESUME_KEYS = MODEL_KEYS + ("mv_loss",)


@dataclass(frozen=True)
class TrainConfig:
    # data
    dataset: str
    data_root: str | None
    download: bool
    imb_type: str
    imb_factor: float
    subset: str
    train_list: str | None
    test_list: str | None
    input_size: int               # the image side the model sees (from the data once known)
    num_classes: int | None       # the --num-classes flag until the data is known, then its class count
    synthetic_classes: int
    synthetic_max: int
    synthetic_test: int
    synthetic_size: int
    loader: str                   # --loader: "device" (DeviceBatches) or "workers" (a DataLoader)
    workers: int
    # network and RSG
    arch: str
    rsg_stage: int
    n_center: int
    contrastive_dim: int
    head_ratio: float
    transfer_strength: float
    epoch_thresh: int
    mv_loss: str
    rsg_backend: str
    use_norm: bool
    init_weights: str | None      # --init-weights: the file a new run started from (absolute path)
    # loss and optimisation
    loss_type: str
    train_rule: str
    drw_epoch: int
    cb_beta: float
    focal_gamma: float
    ldam_max_m: float
    ldam_s: float
    lambda_cesc: float
    lambda_mv: float
    epochs: int
    batch_size: int
    drop_last: bool
    lr: float
    momentum: float
    weight_decay: float
    warmup_epochs: int
    lr_milestones: list[int]
    lr_factors: list[float]
    # run
    out: str
    seed: int
    device: str
    rsg: bool
    # speed: the same maths (checkpoints of runs that predate these say nothing: off)
    amp: str
    channels_last: bool
    compile: bool
    # from the data (None until ``with_data``)
    cls_num_list: list[int] | None = None
    world_size: int | None = None
    head_classes: list[int] | None = None
    shot_sizes: dict[str, int] | None = None
    train_size: int | None = None
    test_size: int | None = None

    def with_data(self, data: LTData, world: int) -> TrainConfig:
        """This configuration completed with what the data tells: class counts, head classes, sizes."""
        return dataclasses.replace(
            self, input_size=data.image_size, num_classes=data.num_classes, cls_num_list=list(data.cls_num_list),
            world_size=world, head_classes=head_classes(data.cls_num_list, self.head_ratio),
            shot_sizes=shot_sizes(data.cls_num_list), train_size=len(data.train), test_size=len(data.test))

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``config.json`` and the checkpoints (``torch.load(weights_only=True)`` reads it)."""
        return dataclasses.asdict(self)

    def rsg_options(self) -> dict[str, Any] | None:
        """Keyword arguments of the RSG module, or None for the baseline (``--no-rsg``)."""
        if not self.rsg:
            return None
        return dict(n_center=self.n_center, contrastive_module_dim=self.contrastive_dim,
                    transfer_strength=self.transfer_strength, epoch_thresh=self.epoch_thresh,
                    mv_loss=self.mv_loss, backend=self.rsg_backend)


def memory_format(config: Mapping[str, Any]) -> torch.memory_format:
    """The memory format of a run's network and batches (``--channels-last``), from its settings as a
    mapping (a checkpoint of a version before the setting: contiguous)."""
    return torch.channels_last if config.get("channels_last") else torch.contiguous_format


def dataset_options(config: Mapping[str, Any]) -> dict[str, Any]:
    """The keywords of ``rsg_fast.data.build_datasets`` that build a run's data (all but ``download`` and
    ``normalize_on_device``), from its settings as a mapping: ``vars`` of a ``TrainConfig``, or the plain
    dict a checkpoint holds (a setting that 0.1's checkpoints lack takes its default)."""
    return dict(root=config.get("data_root"), imb_type=config["imb_type"], imb_factor=config["imb_factor"],
                subset=config.get("subset", DEFAULT_SUBSET), seed=config["seed"],
                train_list=config.get("train_list"), test_list=config.get("test_list"),
                input_size=config["input_size"], num_classes=config.get("num_classes"),
                synthetic=dict(num_classes=config["synthetic_classes"], n_max=config["synthetic_max"],
                               test_per_class=config["synthetic_test"], image_size=config["synthetic_size"]))


def resolve_config(args: argparse.Namespace, world: int = 1) -> TrainConfig:
    """The run's configuration from the parsed flags; ``ValueError`` naming the flags when they disagree."""
    if args.batch_size % world:
        raise ValueError(f"--batch-size {args.batch_size} must be divisible by the {world} processes")
    epochs, step_imbalance = args.epochs, args.imb_type == "step"
    milestones = args.lr_milestones
    if milestones is None:
        # The published RSG CIFAR script drops the lr at epoch indices 159 and 179 (`epoch + 1 > 159`),
        # one epoch before DRW and RSG's generation phase start, at 160: the paper's fractions of 200.
        milestones = [round(epochs * 159 / 200), round(epochs * 179 / 200)]
    if len(milestones) != len(args.lr_factors):
        raise ValueError(f"--lr-milestones ({len(milestones)} values) and --lr-factors ({len(args.lr_factors)} "
                         "values) must have the same length")
    if list(milestones) != sorted(milestones):
        raise ValueError(f"--lr-milestones must be increasing, got {milestones}")
    first = milestones[0] if milestones else epochs
    # DRW/DRS epoch and epoch_thresh + 1: the first milestone if given, else 160/200 of the epochs
    switch = first if args.lr_milestones is not None else round(epochs * 160 / 200)

    def given(value, default):
        return default if value is None else value

    loader = given(args.loader, "device" if args.dataset in IN_MEMORY_DATASETS else "workers")
    if loader == "device" and args.dataset not in IN_MEMORY_DATASETS:
        raise ValueError(f"--loader device: {args.dataset} is read from image files, image by image; it needs "
                         f"--loader workers (device batches serve {', '.join(IN_MEMORY_DATASETS)})")

    def absolute(path):   # saved so: evaluate run from another folder finds the same files
        return os.path.abspath(path) if path else path

    return TrainConfig(
        dataset=args.dataset, data_root=absolute(args.data_root), download=args.download, imb_type=args.imb_type,
        imb_factor=args.imb_factor, subset=args.subset, train_list=absolute(args.train_list),
        test_list=absolute(args.test_list),
        input_size=args.input_size, num_classes=args.num_classes, synthetic_classes=args.synthetic_classes,
        synthetic_max=args.synthetic_max, synthetic_test=args.synthetic_test, synthetic_size=args.synthetic_size,
        loader=loader,
        workers=given(args.workers,
                      0 if args.dataset == "synthetic-lt" or loader == "device" else default_workers(world)),
        arch=args.arch, rsg_stage=given(args.rsg_stage, default_rsg_stage(args.arch)), n_center=args.n_center,
        contrastive_dim=args.contrastive_dim, head_ratio=given(args.head_ratio, 0.5 if step_imbalance else 0.2),
        transfer_strength=given(args.transfer_strength, 0.01 if step_imbalance else 1.0),
        epoch_thresh=given(args.epoch_thresh, max(switch - 1, 0)), mv_loss=args.mv_loss, rsg_backend=args.rsg_backend,
        use_norm=args.loss_type == "LDAM" if args.use_norm is None else args.use_norm == "yes",
        init_weights=absolute(args.init_weights),
        loss_type=args.loss_type, train_rule=args.train_rule, drw_epoch=given(args.drw_epoch, switch),
        cb_beta=args.cb_beta, focal_gamma=args.focal_gamma, ldam_max_m=args.ldam_max_m, ldam_s=args.ldam_s,
        lambda_cesc=args.lambda_cesc, lambda_mv=args.lambda_mv, epochs=epochs, batch_size=args.batch_size,
        drop_last=args.drop_last, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
        warmup_epochs=given(args.warmup_epochs, min(5, max(first - 1, 0))), lr_milestones=list(milestones),
        lr_factors=list(args.lr_factors), out=args.out, seed=args.seed,
        device=str(resolve_device(args.device, "--device")), rsg=not args.no_rsg, amp=args.amp,
        channels_last=args.channels_last, compile=args.compile)


def head_classes(cls_num_list: list[int], ratio: float) -> list[int]:
    """The int(C * ratio) classes with the most training images (ties: the lower id). For CIFAR-LT and
    synthetic-lt, whose counts never increase with the id, that is the published scripts' first
    int(C * ratio) ids."""
    k = int(len(cls_num_list) * ratio)
    order = sorted(range(len(cls_num_list)), key=lambda c: (-cls_num_list[c], c))
    return sorted(order[:k])
