"""``rsg-fast train``: the order of a run, and how each kind of failure reaches the user.

1. The command line is parsed and resolved into a ``TrainConfig``; every check that needs no data
   runs here (flags, device, RSG backend, whether ``--out`` can be written and holds no run that a new
   one would overwrite, the resume checkpoint exists). A failure is ``rsg-fast train: error: ...`` with
   exit status 2, and nothing is written.
2. Set-up (data, model, resume) can still fail on the input: the same error, status 2, nothing written.
3. A resumed run that is already complete says so and exits 0 without training.
4. Training; a run folder that stops accepting writes (a full disk) ends it with status 1 and a
   message, the files written before intact.
"""
from __future__ import annotations

import json
import os
import sys

import torch
import torch.distributed as dist

from rsg_fast import checkpoint as ckpt
from rsg_fast.backend import resolve_backend, triton_available, triton_interpret
from rsg_fast.cli_args import UsageError, lacks_bf16, parse_args, usage_error_exit
from rsg_fast.data import LIST_DATASETS
from rsg_fast.models import TORCHVISION_ARCHS
from rsg_fast.train.arguments import PROG, build_parser
from rsg_fast.train.config import TrainConfig, resolve_config
from rsg_fast.train.distributed import Process
from rsg_fast.train.loop import train
from rsg_fast.train.run_folder import RunFolder, check_writable
from rsg_fast.train.setup import TrainSetup, build_setup, resume_path


def main(argv: list[str] | None = None) -> int:
    proc = Process.from_env()
    try:
        args = parse_args(build_parser(), argv)
        config = resolve_config(args, proc.world)
        check_rsg_backend(config)
        check_amp(config)
        check_compile(config)
        resume = resume_path(config.out, args.resume)
        if proc.is_main:
            check_writable(config.out)
            check_no_run_to_overwrite(config.out, resume)
        if resume is not None and os.path.isdir(resume):   # the run folder instead of its checkpoint
            raise ValueError(f"--resume {resume} is a folder; give its {ckpt.LAST} (--resume "
                             f"{os.path.join(resume, ckpt.LAST)}), or --resume alone with --out {resume}")
        if resume is not None and not os.path.isfile(resume):
            raise ValueError(f"--resume: checkpoint not found: {os.path.abspath(resume)!r}")
        if config.init_weights is not None and resume is None and not os.path.isfile(config.init_weights):
            raise ValueError(f"--init-weights: file not found: {config.init_weights!r}")
        if proc.is_main:
            for line in _settings_that_do_nothing(config, args.stop_after_epoch) + _slow_settings(config):
                print(f"{PROG}: warning: {line}", file=sys.stderr)
    except UsageError as err:
        return usage_error_exit(err)
    except ValueError as err:
        return usage_error_exit(UsageError(PROG, str(err)))

    if proc.world > 1:
        dist.init_process_group("nccl" if torch.device(config.device).type == "cuda" else "gloo")
    try:
        try:
            not_given = frozenset(name for name in ("loader", "workers") if getattr(args, name) is None)
            setup = build_setup(config, proc, resume, not_given=not_given)
        except (ValueError, FileNotFoundError) as err:
            print(f"{PROG}: error: {err}", file=sys.stderr)
            return 2
        stop = min(config.epochs, args.stop_after_epoch or config.epochs)
        try:
            if proc.is_main:
                if note := _unused_workers(setup.config, args):   # after _resume: it may pick the loader
                    print(f"{PROG}: warning: {note}", file=sys.stderr, flush=True)
                _report_start(setup, stop)
            if setup.start_epoch >= stop:  # nothing to train; process 0 said why
                return 0
            train(setup, proc, stop=stop, progress=not args.no_progress)
        except ckpt.WriteError as err:
            print(f"{PROG}: error: {err.strerror}; the run stopped here. Once the run folder can be written "
                  f"again, continue with --resume", file=sys.stderr)
            return 1
        return 0
    finally:
        if proc.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


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
    generates = config.epoch_thresh < config.epochs - 1
    if (config.compile and config.channels_last and config.rsg and generates and config.arch in TORCHVISION_ARCHS
            and torch.device(config.device).type == "cpu"):
        raise ValueError(f"--channels-last --compile: a compiled {config.arch} in channels_last fails on the CPU "
                         "at RSG's first generation-phase step (torch's inductor mispredicts the strides of its "
                         "1 x 1 convolutions over a data-dependent batch); give one of the two flags")


def _report_start(setup: TrainSetup, stop: int) -> None:
    """Prepare the run folder and print the configuration, or say why there is nothing to train."""
    cfg, folder = setup.config, RunFolder(setup.config.out)
    for name in folder.prepare():
        print(f"removed {os.path.join(cfg.out, name)}, left by a job that was killed while writing", flush=True)
    if setup.resumed is not None:
        note = folder.restore_best(setup.resumed, setup.model)
        if note:
            print(note, flush=True)
        best = f"best so far {setup.best_acc:.2f}% at epoch {setup.best_epoch + 1}"
        if setup.start_epoch >= cfg.epochs:
            print(f"the run in {cfg.out} is already complete ({cfg.epochs}/{cfg.epochs} epochs, {best}); "
                  "nothing to train", flush=True)
            return
        if setup.start_epoch >= stop:
            print(f"{setup.start_epoch} of {cfg.epochs} epochs are done, as many as --stop-after-epoch {stop} "
                  f"asks ({best}); nothing to train", flush=True)
            return
    config = cfg.to_dict()
    folder.write_config(config)
    print("configuration:\n" + json.dumps(config, indent=2), flush=True)
    if setup.init_note:
        print(setup.init_note, flush=True)
    if setup.resumed is not None:
        print(f"resuming at epoch {setup.start_epoch + 1}/{cfg.epochs} ({best})", flush=True)
        changed = _changed_settings(setup.resumed["config"], config)
        if changed:   # accepted (e.g. more --epochs), but the derived schedule moves with it: said
            print(f"{PROG}: warning: the checkpoint's run had other training settings: {changed}; this run "
                  "continues with the new ones (not what an uninterrupted run of either would do)",
                  file=sys.stderr, flush=True)


# settings a resumed run may change (the network's are refused, RESUME_KEYS); --epochs moves the
# milestones, DRW epoch, epoch_thresh and warm-up derived from it
CHANGEABLE_KEYS = ("epochs", "epoch_thresh", "lr", "lr_milestones", "lr_factors", "warmup_epochs", "drw_epoch",
                 "train_rule", "loss_type", "batch_size", "transfer_strength", "head_ratio", "lambda_cesc",
                 "lambda_mv", "seed", "loader", "workers")


def _changed_settings(theirs: dict, ours: dict) -> str:
    """``key old -> new`` for each of CHANGEABLE_KEYS that differs between two configurations."""
    return ", ".join(f"{k} {theirs[k]} -> {ours[k]}" for k in CHANGEABLE_KEYS
                     if k in theirs and theirs[k] != ours.get(k))


def _unused_workers(config: TrainConfig, args) -> str | None:
    """The note for a ``--workers`` given to a run whose batches no worker process makes."""
    if config.loader != "device" or not args.workers:
        return None
    default = "" if args.loader else f" (the default for --dataset {config.dataset})"
    return (f"--workers {args.workers} is for --loader workers and does nothing with --loader device{default}: the "
            "batches are made on the training device; give --loader workers to use worker processes")


def _slow_settings(config) -> list[str]:
    """Accepted settings much slower than the default on this run's device (said, not refused)."""
    if config.amp == "fp16" and torch.device(config.device).type == "cpu":
        return ["--amp fp16 on the CPU: CPUs have no fp16 convolutions, so this run is several times slower "
                "than in fp32 (fp16 is for GPUs; --amp bf16 is the CPU's half precision)"]
    return []


def _settings_that_do_nothing(config, stop_after_epoch) -> list[str]:
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
