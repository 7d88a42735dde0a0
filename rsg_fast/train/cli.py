"""``rsg-fast train``: the order of a run, and how each kind of failure reaches the user.

1. The command line is parsed and resolved into a ``TrainConfig``; every check that needs no data
   runs here (``checks``: flags, device, RSG backend, whether ``--out`` can be written and holds no run that a new
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
from rsg_fast.cli_args import UsageError, parse_args, usage_error_exit
from rsg_fast.train.arguments import PROG, build_parser
from rsg_fast.train.checks import (check_amp, check_compile, check_no_run_to_overwrite, check_rsg_backend,
                                   settings_that_do_nothing, slow_settings, unused_workers)
from rsg_fast.train.config import resolve_config
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
            for line in settings_that_do_nothing(config, args.stop_after_epoch) + slow_settings(config):
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
                if note := unused_workers(setup.config, args):   # after _resume: it may pick the loader
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
# milestones, DRW epoch, epoch_thresh and warm-up derived from it; the process count moves the data split
CHANGEABLE_KEYS = ("epochs", "epoch_thresh", "lr", "lr_milestones", "lr_factors", "warmup_epochs", "drw_epoch",
                 "train_rule", "loss_type", "batch_size", "transfer_strength", "head_ratio", "lambda_cesc",
                 "lambda_mv", "seed", "loader", "workers", "world_size")


def _changed_settings(theirs: dict, ours: dict) -> str:
    """``key old -> new`` for each of CHANGEABLE_KEYS that differs between two configurations."""
    return ", ".join(f"{k} {theirs[k]} -> {ours[k]}" for k in CHANGEABLE_KEYS
                     if k in theirs and theirs[k] != ours.get(k))
