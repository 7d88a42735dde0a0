"""What ``rsg-fast train`` checks before a run starts, beyond each flag's own parsing: the settings
that cannot work here (refused, ``ValueError`` naming the flags) and those that do nothing or run
slowly (said, as warning lines). ``cli.main`` calls them in order."""
from __future__ import annotations

import os

import torch

from rsg_fast import checkpoint as ckpt
from rsg_fast.backend import resolve_backend, triton_available, triton_interpret
from rsg_fast.cli_args import lacks_bf16
from rsg_fast.data import LIST_DATASETS
from rsg_fast.models import TORCHVISION_ARCHS
from rsg_fast.train.config import TrainConfig


def check_no_run_to_overwrite(out: str, resume: str | None) -> None:
    """``ValueError`` naming ``--out`` when a new run (no ``--resume``) would train over the run that
    ``out`` holds: its checkpoints and metrics would be replaced from the first epoch on."""
    if resume is None and os.path.isfile(os.path.join(out, ckpt.LAST)):
        raise ValueError(f"--out {out} already holds a run ({ckpt.LAST}); continue it with --resume, or start "
                         "a new run in another --out (or remove that folder first)")


def check_rsg_backend(config: TrainConfig) -> None:
    """``ValueError`` naming ``--rsg-backend`` when the fused kernels it asks for cannot run here."""
    if not config.rsg:
        return
    device = torch.device(config.device)
    if config.rsg_backend == "triton":
        if not triton_available():
            raise ValueError("--rsg-backend triton: triton cannot be imported here; use --rsg-backend auto or torch")
        if device.type != "cuda" and not triton_interpret():
            where = "" if torch.cuda.is_available() else " (no CUDA device here)"
            raise ValueError(f"--rsg-backend triton needs a CUDA device, but this run is on {device}{where}; use "
                             "--rsg-backend auto or torch (or set TRITON_INTERPRET=1 to run the kernels in "
                             "Triton's slow interpreter)")
    else:  # "auto" / "torch": only the RSG_FAST_BACKEND override can be wrong, and its message names it
        resolve_backend(config.rsg_backend, device)


def check_amp(config: TrainConfig) -> None:
    """``ValueError`` naming ``--amp`` when bf16 is asked of a CUDA GPU without bf16 arithmetic (before
    Ampere), where torch would emulate it slowly or fail inside a kernel: fp16 is that GPU's format."""
    device = torch.device(config.device)
    if config.amp == "bf16" and lacks_bf16(device):
        name = torch.cuda.get_device_name(device)
        raise ValueError(f"--amp bf16: {name} has no bf16 arithmetic (it needs an Ampere or later GPU); use "
                         "--amp fp16 (autocast with loss scaling) or --amp off")


def check_compile(config: TrainConfig) -> None:
    """``ValueError`` naming ``--channels-last --compile`` for a torchvision network with RSG on the CPU,
    which would fail at the first generation-phase step, after the whole contrastive phase: its 1 x 1
    convolutions after RSG, over the data-dependent number of samples, get other strides from
    inductor's CPU convolution than it predicts for them in channels_last (torch 2.14; the CIFAR
    ResNets, whose shortcuts are not convolutions, are not affected). The library's side of this:
    ``compiling.cpu_channels_last_hazard``, which needs the built network."""
    if (config.compile and config.channels_last and config.rsg and config.arch in TORCHVISION_ARCHS
            and torch.device(config.device).type == "cpu"):
        raise ValueError(f"--channels-last --compile: a compiled {config.arch} in channels_last fails on the CPU "
                         "at RSG's first generation-phase step (torch's inductor mispredicts the strides of its "
                         "1 x 1 convolutions over a data-dependent batch); give one of the two flags")


def unused_workers(config: TrainConfig, args) -> str | None:
    """The note for a ``--workers`` given to a run whose batches no worker process makes."""
    if config.loader != "device" or not args.workers:
        return None
    default = "" if args.loader else f" (the default for --dataset {config.dataset})"
    return (f"--workers {args.workers} is for --loader workers and does nothing with --loader device{default}: the "
            "batches are made on the training device; give --loader workers to use worker processes")


def slow_settings(config) -> list[str]:
    """Accepted settings much slower than the default on this run's device (said, not refused)."""
    if config.amp == "fp16" and torch.device(config.device).type == "cpu":
        return ["--amp fp16 on the CPU: CPUs have no fp16 convolutions, so this run is several times slower "
                "than in fp32 (fp16 is for GPUs; --amp bf16 is the CPU's half precision)"]
    return []


def settings_that_do_nothing(config, stop_after_epoch) -> list[str]:
    """Accepted settings that a run of ``config.epochs`` epochs can never act on (said, not refused:
    a schedule may be set up on purpose for a longer run continued later)."""
    notes = []
    if config.rsg and config.epoch_thresh >= config.epochs - 1:
        notes.append(f"--epoch-thresh {config.epoch_thresh}: RSG generates from epoch index "
                     f"{config.epoch_thresh + 1}, after the last one ({config.epochs - 1} of --epochs "
                     f"{config.epochs}); this run makes no new samples")
    if config.train_rule in ("DRW", "DRS") and config.drw_epoch >= config.epochs:
        notes.append(f"--drw-epoch {config.drw_epoch}: {config.train_rule} switches at epoch index "
                     f"{config.drw_epoch}, after the last one ({config.epochs - 1} of --epochs {config.epochs}); "
                     "this run never re-weights or re-samples")
    if config.lr_milestones and config.warmup_epochs > config.lr_milestones[0]:
        # paper_lr warms up first: a milestone inside the warm-up does not drop the lr there
        notes.append(f"--warmup-epochs {config.warmup_epochs} reaches past the first --lr-milestones "
                     f"{config.lr_milestones[0]}: the lr warms up to --lr until epoch index "
                     f"{config.warmup_epochs - 1} and drops only after it")
    if config.num_classes is not None and config.dataset not in LIST_DATASETS:
        # synthetic-lt's count is --synthetic-classes; CIFAR's is fixed
        what = "--synthetic-classes sets its class count" if config.dataset == "synthetic-lt" else "a fixed count"
        notes.append(f"--num-classes {config.num_classes} is for the list-file datasets and does nothing with "
                     f"--dataset {config.dataset} ({what})")
    lists = [flag for flag, path in (("--train-list", config.train_list), ("--test-list", config.test_list)) if path]
    if lists and config.dataset not in LIST_DATASETS:
        notes.append(f"{' and '.join(lists)} {'are' if len(lists) > 1 else 'is'} for the list-file datasets and "
                     f"{'do' if len(lists) > 1 else 'does'} nothing with --dataset {config.dataset}")
    if stop_after_epoch is not None and stop_after_epoch > config.epochs:
        notes.append(f"--stop-after-epoch {stop_after_epoch} is past --epochs {config.epochs}: the run stops at "
                     f"--epochs")
    return notes
