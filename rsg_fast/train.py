"""``rsg-fast train`` / ``rsg-fast evaluate``: long-tailed training with RSG, the paper's CIFAR recipe.

Defaults follow the paper (LDAM-DRW + RSG on CIFAR): SGD momentum 0.9, weight decay 2e-4, batch 128,
lr 0.1 with 5 warm-up epochs, x0.01 from epoch 160 and x0.0001 from 180 of 200, DRW from 160,
RSG's generation after ``epoch_thresh`` 159, head ratio 0.2 (step: 0.5), transfer strength 1.0
(step: 0.01), lambda1 0.1, lambda2 0.01, K 15, D 256. Unless given, the milestones, DRW epoch and
``epoch_thresh`` keep those fractions of ``--epochs``, so a short run reaches the generation phase.
Epochs count from 0 (as in the published scripts): "from epoch 160" is the 161st epoch.

Distributed: launch with ``torchrun --nproc_per_node=G -m rsg_fast.train ...``; each process runs RSG
on its local batch (``--batch-size`` is the global batch, split evenly).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import DataLoader, Sampler

from rsg_fast import checkpoint as ckpt
from rsg_fast.data import DATASETS, DEFAULT_SUBSET, IMB_TYPES, SUBSET_RULES, build_datasets
from rsg_fast.losses import LOSS_TYPES, TRAIN_RULES, TrainRule, build_loss, paper_lr
from rsg_fast.metrics import MetricsLog, per_class_accuracy, shot_accuracy, shot_sizes
from rsg_fast.models import ARCHS, CIFAR_ARCHS, build_model

PROG = "rsg-fast train"
# Keys that define the network: a checkpoint with other values cannot be loaded into this run.
MODEL_KEYS = ("arch", "num_classes", "use_norm", "rsg", "rsg_stage", "n_center", "contrastive_dim", "input_size")


# ----------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------
def _positive_int(s: str) -> int:
    v = int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {s}")
    return v


def _nonneg_int(s: str) -> int:
    v = int(s)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {s}")
    return v


def _positive_float(s: str) -> float:
    v = float(s)
    if not v > 0 or not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {s}")
    return v


def _nonneg_float(s: str) -> float:
    v = float(s)
    if not v >= 0 or not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be a non-negative number, got {s}")
    return v


def _fraction(s: str) -> float:
    v = float(s)
    if not 0 < v <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {s}")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    d = p.add_argument_group("data")
    d.add_argument("--dataset", default="synthetic-lt", choices=DATASETS)
    d.add_argument("--data-root", default=None, help="CIFAR folder, or the image root of the list files")
    d.add_argument("--download", action="store_true", help="download CIFAR into --data-root (only when asked)")
    d.add_argument("--imb-type", default="exp", choices=IMB_TYPES, help="long-tailed (exp) or step imbalance")
    d.add_argument("--imb-factor", type=_fraction, default=0.01, help="1/rho (0.01: rho = 100)")
    d.add_argument("--subset", default=DEFAULT_SUBSET, choices=SUBSET_RULES,
                   help="which images of a class to keep: the first n (RSG scripts) or shuffled first (LDAM-DRW)")
    d.add_argument("--train-list", default=None, help="list file (default: the usual name under --data-root)")
    d.add_argument("--test-list", default=None)
    d.add_argument("--input-size", type=_positive_int, default=224, help="crop size for the list-file datasets")
    d.add_argument("--num-classes", type=_positive_int, default=None, help="class count of a list-file dataset "
                   "(default: 1000 ImageNet-LT, 365 Places-LT, 8142 iNaturalist 2018)")
    d.add_argument("--synthetic-classes", type=_positive_int, default=10)
    d.add_argument("--synthetic-max", type=_positive_int, default=500, help="images of the largest class")
    d.add_argument("--synthetic-test", type=_positive_int, default=50, help="test images per class")
    d.add_argument("--synthetic-size", type=_positive_int, default=16, help="image side")
    d.add_argument("--workers", type=_nonneg_int, default=None, help="data-loader processes (default: 0 for "
                   "synthetic-lt, 4 otherwise)")

    m = p.add_argument_group("model")
    m.add_argument("--arch", default="resnet32", choices=ARCHS)
    m.add_argument("--no-rsg", action="store_true", help="the baseline: no RSG")
    m.add_argument("--rsg-stage", type=int, default=None, help="RSG after this stage (default: CIFAR ResNets 2, "
                   "torchvision 3)")
    m.add_argument("--n-center", type=_positive_int, default=15, help="K, centres per class")
    m.add_argument("--contrastive-dim", type=_positive_int, default=256, help="D, contrastive module width")
    m.add_argument("--head-ratio", type=_fraction, default=None, help="alpha (default 0.2; step: 0.5)")
    m.add_argument("--transfer-strength", type=_positive_float, default=None, help="beta (default 1.0; step: 0.01)")
    m.add_argument("--epoch-thresh", type=int, default=None, help="RSG generates after this epoch "
                   "(default: first lr milestone - 1, i.e. 159 of 200)")
    m.add_argument("--mv-loss", default="paper", choices=("paper", "original"), help="Eq. 6 as in the paper, or "
                   "the published code's grouping")
    m.add_argument("--rsg-backend", default="auto", choices=("auto", "torch", "triton"))
    m.add_argument("--use-norm", default=None, choices=("yes", "no"), help="cosine classifier (default: yes "
                   "with LDAM)")

    o = p.add_argument_group("optimisation")
    o.add_argument("--loss-type", default="LDAM", choices=LOSS_TYPES)
    o.add_argument("--train-rule", default="DRW", choices=TRAIN_RULES)
    o.add_argument("--drw-epoch", type=_nonneg_int, default=None, help="DRW/DRS switch (default: first milestone)")
    o.add_argument("--cb-beta", type=float, default=0.9999, help="class-balanced weights' beta")
    o.add_argument("--focal-gamma", type=_nonneg_float, default=1.0)
    o.add_argument("--ldam-max-m", type=_positive_float, default=0.5)
    o.add_argument("--ldam-s", type=_positive_float, default=30.0)
    o.add_argument("--lambda-cesc", type=_nonneg_float, default=0.1, help="lambda1")
    o.add_argument("--lambda-mv", type=_nonneg_float, default=0.01, help="lambda2")
    o.add_argument("--epochs", type=_positive_int, default=200)
    o.add_argument("--batch-size", type=_positive_int, default=128, help="global batch (split across processes)")
    o.add_argument("--lr", type=_positive_float, default=0.1)
    o.add_argument("--momentum", type=_nonneg_float, default=0.9)
    o.add_argument("--weight-decay", type=_nonneg_float, default=2e-4)
    o.add_argument("--warmup-epochs", type=_nonneg_int, default=None, help="linear warm-up (default 5, at most "
                   "first milestone - 1)")
    o.add_argument("--lr-milestones", type=_nonneg_int, nargs="+", default=None,
                   help="epochs where the lr drops (default: 160/200 and 180/200 of --epochs)")
    o.add_argument("--lr-factors", type=_positive_float, nargs="+", default=[0.01, 0.0001],
                   help="lr = base lr x factor from each milestone on")

    r = p.add_argument_group("run")
    r.add_argument("--out", default="runs/rsg", help="run folder: config, metrics, checkpoints")
    r.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CKPT",
                   help=f"continue from CKPT (default: OUT/{ckpt.LAST})")
    r.add_argument("--stop-after-epoch", type=_positive_int, default=None,
                   help="stop once this many epochs are done (split a run into jobs; the schedule still follows "
                        "--epochs)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--device", default=None, help="cuda, cuda:1, cpu, ... (default: cuda when available)")
    r.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    return p


def resolve_config(args: argparse.Namespace, data_image_size: int | None = None) -> dict[str, Any]:
    """Every setting of the run, defaults filled in (the paper's fractions of --epochs), as plain data."""
    c = {k: v for k, v in vars(args).items() if k not in ("resume", "stop_after_epoch", "no_progress")}
    E = args.epochs
    step = args.imb_type == "step"
    ms = args.lr_milestones if args.lr_milestones is not None else [round(E * 160 / 200), round(E * 180 / 200)]
    if len(ms) != len(args.lr_factors):
        raise ValueError(f"--lr-milestones ({len(ms)} values) and --lr-factors ({len(args.lr_factors)} values) "
                         "must have the same length")
    if list(ms) != sorted(ms):
        raise ValueError(f"--lr-milestones must be increasing, got {ms}")
    c["lr_milestones"] = list(ms)
    first = ms[0] if ms else E
    c["warmup_epochs"] = args.warmup_epochs if args.warmup_epochs is not None else min(5, max(first - 1, 0))
    c["epoch_thresh"] = args.epoch_thresh if args.epoch_thresh is not None else first - 1
    c["drw_epoch"] = args.drw_epoch if args.drw_epoch is not None else first
    c["head_ratio"] = args.head_ratio if args.head_ratio is not None else (0.5 if step else 0.2)
    c["transfer_strength"] = args.transfer_strength if args.transfer_strength is not None else (0.01 if step else 1.0)
    c["use_norm"] = (args.use_norm == "yes") if args.use_norm is not None else args.loss_type == "LDAM"
    c["rsg"] = not args.no_rsg
    del c["no_rsg"]
    c["rsg_stage"] = args.rsg_stage if args.rsg_stage is not None else (2 if args.arch in CIFAR_ARCHS else 3)
    c["workers"] = args.workers if args.workers is not None else (0 if args.dataset == "synthetic-lt" else 4)
    c["device"] = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if not 0 <= args.cb_beta < 1:
        raise ValueError(f"--cb-beta must be in [0, 1), got {args.cb_beta}")
    if data_image_size is not None:
        c["input_size"] = data_image_size
    return c


# ----------------------------------------------------------------------------------------------------
# Pieces of the loop
# ----------------------------------------------------------------------------------------------------
class EpochSampler(Sampler[int]):
    """Shuffled (or class-balanced, with replacement) order drawn from (seed, epoch) alone, then split
    across processes: the order needs no saved state to resume, and every process agrees on it."""

    def __init__(self, targets, seed: int, rank: int = 0, world: int = 1):
        self.targets = torch.as_tensor(targets, dtype=torch.long)
        self.seed, self.rank, self.world = seed, rank, world
        self.epoch, self.balanced = 0, False
        self.n = len(self.targets)
        self.per_rank = math.ceil(self.n / world)

    def set_epoch(self, epoch: int, balanced: bool) -> None:
        self.epoch, self.balanced = epoch, balanced

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        if self.balanced:  # LDAM-DRW's ImbalancedDatasetSampler: weight 1 / (class count), with replacement
            counts = torch.bincount(self.targets).float()
            idx = torch.multinomial(1.0 / counts[self.targets], self.n, replacement=True, generator=g)
        else:
            idx = torch.randperm(self.n, generator=g)
        idx = torch.cat([idx, idx[: self.per_rank * self.world - self.n]])  # pad so every process gets as many
        return iter(idx[self.rank::self.world].tolist())

    def __len__(self) -> int:
        return self.per_rank


class ShardSampler(Sampler[int]):
    """Evaluation: every sample exactly once over all processes, in order."""

    def __init__(self, n: int, rank: int = 0, world: int = 1):
        self.idx = list(range(rank, n, world))

    def __iter__(self):
        return iter(self.idx)

    def __len__(self) -> int:
        return len(self.idx)


def head_classes(cls_num_list: list[int], ratio: float, family: str) -> list[int]:
    """CIFAR (class 0 most frequent by construction): the first int(C * ratio) ids, as the published
    scripts; otherwise the int(C * ratio) classes with the most training images (ties: lower id)."""
    k = int(len(cls_num_list) * ratio)
    if family == "cifar":
        return list(range(k))
    order = sorted(range(len(cls_num_list)), key=lambda c: (-cls_num_list[c], c))
    return sorted(order[:k])


def _dist_info() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def _setup_device(name: str, world: int, local_rank: int) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r} is not a device (cpu, cuda, cuda:1, ...)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: CUDA is not available here; use --device cpu")
        if world > 1:
            device = torch.device("cuda", local_rank)  # torchrun: one GPU per process
        if device.index is not None:  # set_device refuses a bare "cuda"
            torch.cuda.set_device(device)
    return device


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _all_reduce(t: torch.Tensor, world: int) -> torch.Tensor:
    if world > 1:
        dist.all_reduce(t)
    return t


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, num_classes: int, device: torch.device, world: int = 1):
    """(correct, total) per class over the loader, summed over processes."""
    model.eval()
    correct = torch.zeros(num_classes, dtype=torch.float64, device=device)
    total = torch.zeros(num_classes, dtype=torch.float64, device=device)
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        pred = model(x).argmax(dim=1)
        # index_add_ instead of bincount/boolean indexing: neither syncs the GPU each batch
        total.index_add_(0, y, torch.ones_like(y, dtype=torch.float64))
        correct.index_add_(0, y, (pred == y).double())
    return _all_reduce(correct, world).cpu(), _all_reduce(total, world).cpu()


def _print(*a, main: bool = True, **k):
    if main:
        print(*a, **k, flush=True)


# ----------------------------------------------------------------------------------------------------
# train
# ----------------------------------------------------------------------------------------------------
def _setup(args: argparse.Namespace, rank: int, world: int, local_rank: int):
    """Everything that can fail on the user's input, before any training: config, data, model, resume."""
    if args.batch_size % world:
        raise ValueError(f"--batch-size {args.batch_size} must be divisible by the {world} processes")
    # Validated before any data is built, so a bad flag fails fast.
    cfg = resolve_config(args)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    synthetic = dict(num_classes=args.synthetic_classes, n_max=args.synthetic_max,
                     test_per_class=args.synthetic_test, image_size=args.synthetic_size)

    def build(download: bool):
        return build_datasets(args.dataset, root=args.data_root, download=download, imb_type=args.imb_type,
                              imb_factor=args.imb_factor, subset=args.subset, seed=args.seed,
                              train_list=args.train_list, test_list=args.test_list, input_size=args.input_size,
                              synthetic=synthetic, num_classes=args.num_classes)

    if args.download and world > 1:
        # One process downloads; the others wait for it (and hear about its failure) before reading.
        box: list = [None]
        if rank == 0:
            try:
                data = build(True)
            except Exception as err:
                box[0] = f"process 0 could not prepare the data: {err}"
                dist.broadcast_object_list(box, src=0)
                raise
        dist.broadcast_object_list(box, src=0)
        if rank != 0:
            if box[0] is not None:
                raise FileNotFoundError(box[0])
            data = build(False)
    else:
        data = build(args.download)
    empty = [c for c, n in enumerate(data.cls_num_list) if n == 0]
    if empty:  # LDAM margins, class-balanced weights and resampling all need every class present
        shown = ", ".join(map(str, empty[:10])) + (", ..." if len(empty) > 10 else "")
        raise ValueError(f"{len(empty)} of {data.num_classes} classes have no training image (ids {shown}); "
                         f"check the training list or set --num-classes")
    cfg = resolve_config(args, data.image_size)
    cfg.update(num_classes=data.num_classes, cls_num_list=data.cls_num_list, world_size=world,
               head_classes=head_classes(data.cls_num_list, cfg["head_ratio"], data.family),
               shot_sizes=shot_sizes(data.cls_num_list), train_size=len(data.train), test_size=len(data.test))
    if cfg["rsg"] and not 0 < len(cfg["head_classes"]) < data.num_classes:
        raise ValueError(f"--head-ratio {cfg['head_ratio']} gives {len(cfg['head_classes'])} head classes of "
                         f"{data.num_classes}; RSG needs at least one head and one tail class")
    device = _setup_device(cfg["device"], world, local_rank)

    rsg_opts = None
    if cfg["rsg"]:
        rsg_opts = dict(n_center=cfg["n_center"], contrastive_module_dim=cfg["contrastive_dim"],
                        transfer_strength=cfg["transfer_strength"], epoch_thresh=cfg["epoch_thresh"],
                        mv_loss=cfg["mv_loss"], backend=cfg["rsg_backend"])
    model = build_model(cfg["arch"], data.num_classes, rsg=rsg_opts, rsg_stage=cfg["rsg_stage"],
                        use_norm=cfg["use_norm"], head_classes=cfg["head_classes"],
                        input_size=cfg["input_size"]).to(device)
    if world > 1:
        # Same initial weights everywhere (DDP broadcasts them anyway), different augmentation per process.
        torch.manual_seed(args.seed + 1_000 * rank)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg["lr"], momentum=cfg["momentum"],
                                weight_decay=cfg["weight_decay"])

    start_epoch, best = 0, {"acc": -1.0, "epoch": -1}
    state = None
    if args.resume is not None:
        path = os.path.join(args.out, ckpt.LAST) if args.resume == "auto" else args.resume
        state = ckpt.load_checkpoint(path)
        if "optimizer" not in state or "config" not in state:
            raise ValueError(f"checkpoint {path!r} is not a training checkpoint (no optimizer state); "
                             f"resume from {ckpt.LAST}")
        for k in MODEL_KEYS:
            if state["config"].get(k) != cfg.get(k):
                raise ValueError(f"checkpoint {path!r} was trained with {k}={state['config'].get(k)!r}, this run "
                                 f"has {k}={cfg.get(k)!r}")
        ckpt.load_state_strict(model, state["model"], path)
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, best = int(state["epoch"]) + 1, dict(state["best"])
    return cfg, data, device, model, optimizer, start_epoch, best, state


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    rank, world, local_rank = _dist_info()
    if world > 1:
        use_cuda = (args.device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
        dist.init_process_group("nccl" if use_cuda else "gloo")
    try:
        try:
            setup = _setup(args, rank, world, local_rank)
        except (ValueError, FileNotFoundError) as err:
            print(f"{PROG}: error: {err}", file=sys.stderr)
            return 2
        return _train(args, *setup, rank=rank, world=world)
    finally:
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _train(args, cfg, data, device, model, optimizer, start_epoch, best, state, *, rank: int, world: int) -> int:
    is_main = rank == 0
    out = args.out
    if is_main:
        os.makedirs(out, exist_ok=True)
        ckpt.atomic_write_text(os.path.join(out, "config.json"), json.dumps(cfg, indent=2) + "\n")
        _print("configuration:\n" + json.dumps(cfg, indent=2), main=is_main)
        if state is not None:
            _print(f"resuming at epoch {start_epoch + 1}/{cfg['epochs']} (best so far {best['acc']:.2f}% at epoch "
                   f"{best['epoch'] + 1})")

    if world > 1:
        # Which RSG parameters get gradients depends on the phase (T only after epoch_thresh; the
        # contrastive module only before it) and on whether a local batch holds both heads and tails,
        # so DDP must look for unused parameters each step instead of waiting for their gradients.
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                                    find_unused_parameters=cfg["rsg"])

    sampler = EpochSampler(data.train.targets, cfg["seed"], rank, world)
    pin = device.type == "cuda"
    train_loader = DataLoader(data.train, batch_size=cfg["batch_size"] // world, sampler=sampler,
                              num_workers=cfg["workers"], pin_memory=pin, persistent_workers=False)
    test_loader = DataLoader(data.test, batch_size=max(cfg["batch_size"] // world, 1) * 2,
                             sampler=ShardSampler(len(data.test), rank, world), num_workers=cfg["workers"],
                             pin_memory=pin)
    rule = TrainRule(cfg["train_rule"], data.cls_num_list, cfg["drw_epoch"], cfg["cb_beta"])
    criterion = build_loss(cfg["loss_type"], data.cls_num_list, focal_gamma=cfg["focal_gamma"],
                           ldam_max_m=cfg["ldam_max_m"], ldam_s=cfg["ldam_s"]).to(device)
    log = MetricsLog(out, data.num_classes, resume_from_epoch=start_epoch) if is_main else None
    if state is not None:
        ckpt.set_rng_state(state["rng"][rank] if rank < len(state["rng"]) else state["rng"][0])

    stop = min(cfg["epochs"], args.stop_after_epoch or cfg["epochs"])
    for epoch in range(start_epoch, stop):
        t0 = time.time()
        lr = paper_lr(epoch, cfg["lr"], cfg["warmup_epochs"], cfg["lr_milestones"], cfg["lr_factors"])
        for group in optimizer.param_groups:
            group["lr"] = lr
        w = rule.weights(epoch)
        criterion.weight = None if w is None else w.to(device)
        sampler.set_epoch(epoch, rule.balanced_sampling(epoch))
        generating = cfg["rsg"] and epoch > cfg["epoch_thresh"]

        model.train()
        sums = torch.zeros(6, dtype=torch.float64, device=device)  # cls, cesc, mv, correct, seen, generated
        steps = torch.zeros(1, dtype=torch.float64, device=device)
        seen = generated = step_count = 0   # host-side counts: no device copy per step
        bar = _progress(train_loader, epoch, cfg["epochs"], enabled=is_main and not args.no_progress)
        for x, y in bar:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            logits, y_out, cesc, mv = model(x, y, epoch)
            loss_cls = criterion(logits, y_out)
            loss = loss_cls + cfg["lambda_cesc"] * cesc + cfg["lambda_mv"] * mv
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            n = y.shape[0]
            with torch.no_grad():
                correct = (logits[:n].argmax(dim=1) == y).sum()
                sums[:4] += torch.stack([loss_cls.detach().double(), cesc.detach().double(), mv.detach().double(),
                                         correct.double()])
            seen, generated, step_count = seen + n, generated + y_out.shape[0] - n, step_count + 1
            if is_main and not args.no_progress and step_count % 10 == 1:  # .item() syncs the GPU: not every step
                bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        sums[4], sums[5], steps[0] = seen, generated, step_count
        _all_reduce(sums, world), _all_reduce(steps, world)
        mean = (sums[:3] / steps.clamp_min(1)).tolist()

        # The bare module: DDP's forward would broadcast buffers, a collective that processes with
        # unequal numbers of test batches would not all reach.
        correct_c, total_c = evaluate(_unwrap(model), test_loader, data.num_classes, device, world)
        class_acc = per_class_accuracy(correct_c, total_c)
        shots = shot_accuracy(class_acc, data.cls_num_list)
        test_acc = 100.0 * float(correct_c.sum()) / max(float(total_c.sum()), 1.0)
        record = {"epoch": epoch, "lr": lr, "loss": mean[0] + cfg["lambda_cesc"] * mean[1] + cfg["lambda_mv"] * mean[2],
                  "loss_cls": mean[0], "loss_cesc": mean[1], "loss_mv": mean[2],
                  "train_acc": 100.0 * float(sums[3]) / max(float(sums[4]), 1.0), "test_acc": test_acc,
                  "many_acc": shots["many"], "medium_acc": shots["medium"], "few_acc": shots["few"],
                  "n_generated": int(sums[5]), "rsg_phase": ("generation" if generating else "contrastive")
                  if cfg["rsg"] else "off", "epoch_time_s": time.time() - t0, "per_class_acc": class_acc}
        is_best = test_acc > best["acc"]
        if is_best:
            best = {"acc": test_acc, "epoch": epoch}
        if is_main:
            _print(MetricsLog.summary_line(record, cfg["epochs"]))
            if data.num_classes <= 20:
                _print(MetricsLog.per_class_line(record))
            log.append(record)
        # Every process's RNG state travels in the checkpoint (each draws its own augmentation).
        rngs = _gather_rng(world)
        if is_main:
            net = _unwrap(model)
            full = {"format": "rsg_fast.train/1", "epoch": epoch, "config": cfg, "model": net.state_dict(),
                    "optimizer": optimizer.state_dict(), "best": best, "rng": rngs,
                    "sampler": {"seed": cfg["seed"], "epoch": epoch + 1},
                    "scheduler": {"name": "paper_lr", "next_epoch": epoch + 1}}
            ckpt.atomic_save(full, os.path.join(out, ckpt.LAST))
            if is_best:
                ckpt.atomic_save(inference_checkpoint(net, cfg, epoch, test_acc), os.path.join(out, ckpt.BEST))
    if is_main:
        log.close()
        last = log.records[-1] if log.records else None
        if last is not None:
            _print(f"done: best top-1 {best['acc']:.2f}% at epoch {best['epoch'] + 1}; last epoch top-1 "
                   f"{last['test_acc']:.2f}%, many {_f(last['many_acc'])} medium {_f(last['medium_acc'])} "
                   f"few {_f(last['few_acc'])}; run folder {out}")
    return 0


def _f(v):
    return "n/a" if v is None else f"{v:.2f}"


def _progress(loader, epoch: int, epochs: int, enabled: bool):
    if not enabled:
        return loader
    from tqdm import tqdm

    return tqdm(loader, desc=f"epoch {epoch + 1}/{epochs}", leave=False, dynamic_ncols=True, mininterval=0.5)


def _gather_rng(world: int) -> list[dict]:
    state = ckpt.rng_state()
    if world == 1:
        return [state]
    states: list = [None] * world
    dist.all_gather_object(states, state)
    return states


def inference_checkpoint(model: nn.Module, cfg: dict, epoch: int, acc: float) -> dict:
    """The network without RSG (its keys dropped): loads strictly into ``build_model(arch, C, rsg=None)``."""
    return {"format": "rsg_fast.inference/1", "epoch": epoch, "acc": acc, "config": dict(cfg),
            "model": model.inference_state_dict()}


# ----------------------------------------------------------------------------------------------------
# evaluate
# ----------------------------------------------------------------------------------------------------
def build_eval_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rsg-fast evaluate", description="Evaluate a checkpoint (RSG is not used at "
                                "test time): top-1, per-class and many/medium/few-shot accuracy.")
    p.add_argument("checkpoint", help=f"{ckpt.BEST} (inference) or {ckpt.LAST} (training) of a run")
    p.add_argument("--arch", default=None, choices=ARCHS, help="must match the checkpoint's (default: its own)")
    p.add_argument("--dataset", default=None, choices=DATASETS, help="default: the checkpoint's")
    p.add_argument("--data-root", default=None)
    p.add_argument("--test-list", default=None)
    p.add_argument("--batch-size", type=_positive_int, default=256)
    p.add_argument("--workers", type=_nonneg_int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    return p


def evaluate_main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_eval_parser().parse_args(argv)
    try:
        state = ckpt.load_checkpoint(args.checkpoint)
        if "model" not in state or "config" not in state:
            raise ValueError(f"{args.checkpoint!r} is not an rsg-fast checkpoint (no 'model' / 'config')")
        cfg = state["config"]
        if args.arch is not None and args.arch != cfg["arch"]:
            raise ValueError(f"checkpoint {args.checkpoint!r} holds a {cfg['arch']} model, not --arch {args.arch}")
        dataset = args.dataset or cfg["dataset"]
        # The test split is rebuilt from the run's own data settings (synthetic-lt: the same seed and shape).
        data = build_datasets(dataset, root=args.data_root or cfg.get("data_root"), imb_type=cfg["imb_type"],
                              imb_factor=cfg["imb_factor"], subset=cfg.get("subset", DEFAULT_SUBSET),
                              seed=cfg["seed"], test_list=args.test_list, input_size=cfg["input_size"],
                              synthetic=dict(num_classes=cfg["synthetic_classes"], n_max=cfg["synthetic_max"],
                                             test_per_class=cfg["synthetic_test"], image_size=cfg["synthetic_size"]),
                              num_classes=cfg.get("num_classes") if dataset == cfg["dataset"] else None)
        if data.num_classes != cfg["num_classes"]:
            raise ValueError(f"checkpoint has {cfg['num_classes']} classes, dataset {dataset} has {data.num_classes}")
        device = _setup_device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"), 1, 0)
        model = build_model(cfg["arch"], cfg["num_classes"], use_norm=cfg["use_norm"], input_size=cfg["input_size"])
        weights = {k: v for k, v in state["model"].items() if not k.startswith("rsg.")}
        ckpt.load_state_strict(model, weights, args.checkpoint)
    except (ValueError, FileNotFoundError) as err:
        print(f"rsg-fast evaluate: error: {err}", file=sys.stderr)
        return 2
    model.to(device)
    loader = DataLoader(data.test, batch_size=args.batch_size, shuffle=False, num_workers=args.workers)
    correct, total = evaluate(model, loader, data.num_classes, device)
    class_acc = per_class_accuracy(correct, total)
    shots = shot_accuracy(class_acc, cfg.get("cls_num_list", data.cls_num_list))
    result = {"checkpoint": args.checkpoint, "epoch": state.get("epoch"), "dataset": dataset,
              "top1": 100.0 * float(correct.sum()) / max(float(total.sum()), 1.0), "many_acc": shots["many"],
              "medium_acc": shots["medium"], "few_acc": shots["few"], "per_class_acc": class_acc}
    print(f"{args.checkpoint}: top-1 {result['top1']:.2f}% | many {_f(shots['many'])} medium {_f(shots['medium'])} "
          f"few {_f(shots['few'])} ({len(data.test)} test images)")
    if data.num_classes <= 20:
        print("  per-class acc: " + " ".join(_f(a) for a in class_acc))
    if args.json:
        ckpt.atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
