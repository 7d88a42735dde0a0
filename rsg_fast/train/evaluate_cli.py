"""``rsg-fast evaluate CKPT``: a run's checkpoint evaluated on its test split (rebuilt from the run's own
data settings), printed and optionally written as JSON."""
from __future__ import annotations

import json
import os
import sys

from rsg_fast import checkpoint as ckpt
from rsg_fast.cli_args import Parser, UsageError, device_name, nonneg_int, parse_args, positive_int, \
    resolve_device, usage_error_exit
from rsg_fast.data import DATASETS, LIST_DATASETS, build_datasets, build_test_dataset, device_batches_supported
from rsg_fast.metrics import PER_CLASS_LINE_MAX_CLASSES, MetricsLog, accuracy_summary, format_acc
from rsg_fast.models import ARCHS, RSG_PREFIX, build_model
from rsg_fast.train.config import dataset_options, memory_format
from rsg_fast.train.evaluation import eval_batches, evaluate
from rsg_fast.train.run_folder import check_format, check_writable
from rsg_fast.train.workers import default_workers

PROG = "rsg-fast evaluate"


def build_eval_parser() -> Parser:
    p = Parser(prog=PROG, description="Evaluate a checkpoint (RSG is not used at test time): top-1, per-class "
                                      "and many/medium/few-shot accuracy.")
    p.add_argument("checkpoint", help=f"{ckpt.BEST} (inference) or {ckpt.LAST} (training) of a run")
    p.add_argument("--arch", default=None, choices=ARCHS, help="must match the checkpoint's (default: its own)")
    p.add_argument("--dataset", default=None, choices=DATASETS, help="(default: the checkpoint's)")
    p.add_argument("--data-root", default=None, help="(default: the checkpoint's)")
    p.add_argument("--test-list", default=None,
                   help="(default: the run's own --test-list when --dataset is the run's and it gave one; "
                        "else, or with --test-list '', the usual name under --data-root)")
    p.add_argument("--batch-size", type=positive_int("--batch-size"), default=256)
    p.add_argument("--workers", type=nonneg_int("--workers"), default=None,
                   help="data-loader processes of the list-file datasets (default: as rsg-fast train's, from the "
                        "CPUs this process may use); CIFAR and synthetic-lt batches are made on the device")
    p.add_argument("--device", type=device_name("--device"), default=None,
                   help="auto, cpu, cuda or cuda:N (default: auto, cuda when available)")
    p.add_argument("--json", default=None, metavar="PATH",
                   help="also write the results to this JSON file (default: none)")
    return p


def _saved_path_missing(what: str, flag: str, path: str) -> FileNotFoundError:
    """The error for a data path saved in the checkpoint that is not here (a path not typed here: say
    where it came from). rsg-fast 0.1 saved paths as typed: a relative one is read from this folder."""
    relative = "" if os.path.isabs(path) else (f" as {path!r}, relative to the folder that run was started in, "
                                               "as versions before 0.2 saved it; run evaluate from there")
    return FileNotFoundError(f"the run's {what} {os.path.abspath(path)!r} (its {flag}, saved in the "
                             f"checkpoint{relative}) is not found; give {flag}")


def evaluate_main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(build_eval_parser(), argv)
        if args.json:   # before the evaluation, which can take long: a bad path would lose its result
            if os.path.isdir(args.json):
                raise ValueError(f"--json {args.json} is a folder; give a file name, e.g. "
                                 f"{os.path.join(args.json, 'evaluation.json')}")
            check_writable(os.path.dirname(args.json) or ".", f"--json {args.json}: its folder")
    except UsageError as err:
        return usage_error_exit(err)
    except ValueError as err:
        return usage_error_exit(UsageError(PROG, str(err)))
    try:
        state = ckpt.load_checkpoint(args.checkpoint)
        check_format(state, args.checkpoint)
        if "model" not in state or "config" not in state:
            raise ValueError(f"{args.checkpoint!r} is not an rsg-fast checkpoint (no 'model' / 'config')")
        # The run's settings as saved; checkpoints of older versions may lack the newer keys.
        cfg = state["config"]
        if args.arch is not None and args.arch != cfg["arch"]:
            raise ValueError(f"checkpoint {args.checkpoint!r} holds a {cfg['arch']} model, not --arch {args.arch}")
        dataset = args.dataset or cfg["dataset"]
        runs_data = dataset == cfg["dataset"]
        # The test split is rebuilt from the run's own data settings (synthetic-lt: the same seed and shape),
        # its own test list included: the usual name under --data-root may be another list, or none. An
        # empty --test-list is no list, as in train; CIFAR and synthetic-lt read none (train saves one given).
        use_saved = runs_data and dataset in LIST_DATASETS and args.test_list is None
        saved_list = cfg.get("test_list") if use_saved else None
        if saved_list and not os.path.isfile(saved_list):
            raise _saved_path_missing("test list", "--test-list", saved_list)
        reads_root = runs_data and dataset != "synthetic-lt" and args.data_root is None
        saved_root = cfg.get("data_root") if reads_root else None
        if saved_root and not os.path.isabs(saved_root) and not os.path.isdir(saved_root):
            raise _saved_path_missing("data root", "--data-root", saved_root)
        # the run's data settings, less the ones that name its own data when another dataset is evaluated
        # (and the training list: only counted again, below, for a config without counts, from the usual one)
        options = {**dataset_options(cfg), "root": args.data_root or cfg.get("data_root"),
                   "test_list": args.test_list or saved_list,
                   "num_classes": cfg.get("num_classes") if runs_data else None, "normalize_on_device": True}
        del options["train_list"]
        # The shot groups take the training counts the run saved, so a list-file dataset's training list
        # and images need not be there; a config without them (rsg-fast always wrote them) counts them again.
        cls_num_list = cfg.get("cls_num_list")
        if cls_num_list is None:
            data = build_datasets(dataset, **options)
            test, num_classes, cls_num_list = data.test, data.num_classes, data.cls_num_list
        else:
            test, num_classes = build_test_dataset(dataset, **options)
        if num_classes != cfg["num_classes"]:
            raise ValueError(f"checkpoint has {cfg['num_classes']} classes, dataset {dataset} has {num_classes}")
        device = resolve_device(args.device, "--device")
        model = build_model(cfg["arch"], cfg["num_classes"], use_norm=cfg["use_norm"], input_size=cfg["input_size"])
        weights = {k: v for k, v in state["model"].items() if not k.startswith(RSG_PREFIX)}
        ckpt.load_state_strict(model, weights, args.checkpoint)
    except (ValueError, FileNotFoundError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    # the network and its batches in the run's memory format, whose convolutions training ran
    layout = memory_format(cfg)
    model.to(device, memory_format=layout)
    if args.workers and device_batches_supported(test):
        print(f"{PROG}: warning: --workers {args.workers} does nothing with --dataset {dataset}: its batches are made "
              "on the device", file=sys.stderr, flush=True)
    workers = args.workers if args.workers is not None else default_workers()
    batches = eval_batches(test, args.batch_size, device, workers, layout)
    correct, total = evaluate(model, batches, num_classes, device)
    result = {"checkpoint": args.checkpoint, "epoch": state.get("epoch"), "dataset": dataset,
              **accuracy_summary(correct, total, cls_num_list)}
    # which epoch, counted from 1 as the training console does (the JSON holds the index)
    when = f" (epoch {state['epoch'] + 1}/{cfg['epochs']})" if isinstance(state.get("epoch"), int) else ""
    print(f"{args.checkpoint}{when}: top-1 {result['top1']:.2f}% | many {format_acc(result['many_acc'])} medium "
          f"{format_acc(result['medium_acc'])} few {format_acc(result['few_acc'])} ({len(test)} test images)")
    if num_classes <= PER_CLASS_LINE_MAX_CLASSES:
        print(MetricsLog.per_class_line(result))
    if args.json:
        try:
            ckpt.atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
        except ckpt.WriteError as err:
            print(f"{PROG}: error: {err.strerror}", file=sys.stderr)
            return 1
    return 0
