"""The flags of ``rsg-fast train``, grouped by topic, on the shared parser (``rsg_fast.cli_args``).

Every flag's help shows its real default: the parser appends ``(default: X)`` where the default is a
value; flags whose default is worked out from other settings say how in their help text.
"""
from __future__ import annotations

import argparse

from rsg_fast import checkpoint as ckpt
from rsg_fast.cli_args import (
    Parser, device_name, fraction, in_range, int_at_least, nonneg_float, nonneg_int, positive_float, positive_int,
)
from rsg_fast.data import DATASETS, DEFAULT_SUBSET, IMB_TYPES, SUBSET_RULES, SyntheticLT
from rsg_fast.losses import LOSS_TYPES, TRAIN_RULES
from rsg_fast.models import ARCHS

PROG = "rsg-fast train"
DESCRIPTION = ("Train a long-tailed classifier with RSG inserted in the backbone. The defaults are the paper's "
               "CIFAR recipe (LDAM-DRW + RSG, ResNet-32, 200 epochs) on the offline synthetic-lt data; epochs "
               "count from 0, as in the published scripts. Under torchrun, each process runs RSG on its share "
               "of the batch.")
SEED_MAX = 2**32 - 1  # numpy's seeds are 32-bit


def build_parser() -> Parser:
    p = Parser(prog=PROG, description=DESCRIPTION)

    d = p.add_argument_group("data")
    d.add_argument("--dataset", default="synthetic-lt", choices=DATASETS, help="long-tailed data set")
    d.add_argument("--data-root", default=None, help="CIFAR folder, or the image root of the list files "
                   "(default: none; needed by every dataset but synthetic-lt, and by the list-file ones unless "
                   "--train-list and --test-list hold absolute image paths only)")
    d.add_argument("--download", action="store_true", help="download CIFAR into --data-root (only when asked)")
    d.add_argument("--imb-type", default="exp", choices=IMB_TYPES, help="long-tailed (exp) or step imbalance")
    d.add_argument("--imb-factor", type=fraction("--imb-factor"), default=0.01, help="1/rho (0.01: rho = 100)")
    d.add_argument("--subset", default=DEFAULT_SUBSET, choices=SUBSET_RULES,
                   help="which images of a class to keep: the first n (RSG scripts) or shuffled first (LDAM-DRW)")
    d.add_argument("--train-list", default=None, help="list file (default: the usual name under --data-root)")
    d.add_argument("--test-list", default=None, help="list file (default: the usual name under --data-root)")
    d.add_argument("--input-size", type=positive_int("--input-size"), default=224,
                   help="crop size for the list-file datasets")
    d.add_argument("--num-classes", type=positive_int("--num-classes"), default=None,
                   help="class count of a list-file dataset (default: 1000 ImageNet-LT, 365 Places-LT, "
                        "8142 iNaturalist 2018)")
    d.add_argument("--loader", default=None, choices=("device", "workers"),
                   help="device: the whole dataset on the training device, each batch augmented there in a few "
                        "batched ops (CIFAR and synthetic-lt only); workers: a DataLoader, image by image in "
                        "--workers processes (default: device where it applies, workers for the list-file data)")
    d.add_argument("--workers", type=nonneg_int("--workers"), default=None,
                   help="data-loader processes of --loader workers (default: 0 for synthetic-lt and with --loader "
                        "device; otherwise the CPUs per training process on this machine, less one, 1 to 16)")

    s = p.add_argument_group("synthetic-lt (the offline demo data)")
    s.add_argument("--synthetic-classes", type=positive_int("--synthetic-classes"), default=10, help="classes")
    s.add_argument("--synthetic-max", type=positive_int("--synthetic-max"), default=500,
                   help="training images of the largest class")
    s.add_argument("--synthetic-test", type=positive_int("--synthetic-test"), default=50, help="test images per class")
    # the data set's own limit, checked with the flags (before any data is built) and named by the flag
    s.add_argument("--synthetic-size", type=int_at_least("--synthetic-size", SyntheticLT.MIN_IMAGE_SIZE),
                   default=16, help=f"image side, at least {SyntheticLT.MIN_IMAGE_SIZE}")

    m = p.add_argument_group("network")
    m.add_argument("--arch", default="resnet32", choices=ARCHS, help="backbone (CIFAR ResNets or torchvision's)")
    m.add_argument("--no-rsg", action="store_true", help="the baseline: no RSG")
    # every arch has stages 1..3 before its last: checked here, before any data is read, naming the flag
    m.add_argument("--rsg-stage", type=in_range("--rsg-stage", 1, 3, integer=True), default=None,
                   help="RSG after this stage, 1 to 3 (default: 2 for the CIFAR ResNets, 3 for torchvision's)")
    m.add_argument("--use-norm", default=None, choices=("yes", "no"),
                   help="cosine classifier (default: yes with --loss-type LDAM, no otherwise)")
    m.add_argument("--init-weights", default=None, metavar="FILE",
                   help="start a new run from these weights: a state dict saved with torch.save (e.g. torchvision's "
                        "ImageNet weights for --arch resnet152, to fine-tune as the paper does on Places-LT) or an "
                        "rsg-fast checkpoint; every tensor before the classifier must fit, the classifier is taken "
                        "when its shape fits, RSG starts fresh (default: a random initialisation)")

    r = p.add_argument_group("RSG")
    r.add_argument("--n-center", type=positive_int("--n-center"), default=15, help="K, centres per class")
    r.add_argument("--contrastive-dim", type=positive_int("--contrastive-dim"), default=256,
                   help="D, contrastive module width")
    r.add_argument("--head-ratio", type=fraction("--head-ratio"), default=None,
                   help="alpha, the share of head classes (default: 0.2; with --imb-type step 0.5)")
    r.add_argument("--transfer-strength", type=positive_float("--transfer-strength"), default=None,
                   help="beta (default: 1.0; with --imb-type step 0.01)")
    # an epoch index: a negative one would generate from epoch 0 (RSG's own argument stays unchecked, as published)
    r.add_argument("--epoch-thresh", type=nonneg_int("--epoch-thresh"), default=None,
                   help="RSG generates after this epoch index, 0 or more (default: 160/200 of --epochs - 1, or the "
                        "first --lr-milestones given - 1, at least 0; --drw-epoch does not move it)")
    r.add_argument("--lambda-cesc", type=nonneg_float("--lambda-cesc"), default=0.1, help="lambda1, CESC loss weight")
    r.add_argument("--lambda-mv", type=nonneg_float("--lambda-mv"), default=0.01, help="lambda2, MV loss weight")
    r.add_argument("--mv-loss", default="original", choices=("original", "paper"),
                   help="original: the published code's grouping, which produced the published numbers; "
                        "paper: Eq. 6 as written (per spatial location)")
    r.add_argument("--rsg-backend", default="auto", choices=("auto", "torch", "triton"),
                   help="auto: Triton on CUDA when it imports, else PyTorch")

    o = p.add_argument_group("loss")
    o.add_argument("--loss-type", default="LDAM", choices=LOSS_TYPES, help="classification loss")
    o.add_argument("--train-rule", default="DRW", choices=TRAIN_RULES,
                   help="re-weighting / re-sampling rule (DRW, DRS: deferred, from --drw-epoch)")
    o.add_argument("--drw-epoch", type=nonneg_int("--drw-epoch"), default=None,
                   help="epoch of the DRW/DRS switch (default: the first --lr-milestones given, else 160/200 of "
                        "--epochs)")
    o.add_argument("--cb-beta", type=in_range("--cb-beta", 0, 1, high_open=True), default=0.9999,
                   help="class-balanced weights' beta")
    o.add_argument("--focal-gamma", type=nonneg_float("--focal-gamma"), default=1.0, help="focal loss's gamma")
    o.add_argument("--ldam-max-m", type=positive_float("--ldam-max-m"), default=0.5, help="LDAM's largest margin")
    o.add_argument("--ldam-s", type=positive_float("--ldam-s"), default=30.0, help="LDAM's logit scale")

    t = p.add_argument_group("optimiser and schedule")
    t.add_argument("--epochs", type=positive_int("--epochs"), default=200, help="length of the schedule")
    t.add_argument("--batch-size", type=positive_int("--batch-size"), default=128,
                   help="global batch (split across processes)")
    t.add_argument("--drop-last", action=argparse.BooleanOptionalAction, default=True,
                   help="leave out each epoch's last, smaller batch, as the published scripts (drop_last=True); "
                        "--no-drop-last trains on it too")
    t.add_argument("--lr", type=positive_float("--lr"), default=0.1, help="base learning rate")
    t.add_argument("--momentum", type=in_range("--momentum", 0, 1, high_open=True), default=0.9,
                   help="SGD momentum, in [0, 1) (1 or more diverges)")
    t.add_argument("--weight-decay", type=nonneg_float("--weight-decay"), default=2e-4, help="SGD weight decay")
    t.add_argument("--warmup-epochs", type=nonneg_int("--warmup-epochs"), default=None,
                   help="linear warm-up (default: 5, at most the first milestone - 1)")
    t.add_argument("--lr-milestones", type=nonneg_int("--lr-milestones"), nargs="+", default=None,
                   help="epoch indices where the lr drops (default: 159/200 and 179/200 of --epochs, as the "
                        "published RSG script)")
    t.add_argument("--lr-factors", type=positive_float("--lr-factors"), nargs="+", default=[0.01, 0.0001],
                   help="lr = base lr x factor from each milestone on")

    f = p.add_argument_group("speed (the same training maths, faster on a GPU)")
    f.add_argument("--amp", choices=("off", "bf16", "fp16"), default="off",
                   help="autocast for the forward pass and the losses: bf16 (Ampere and later GPUs, CPUs), or "
                        "fp16 with dynamic loss scaling (torch.amp.GradScaler; any CUDA GPU, e.g. V100 or T4); "
                        "RSG's losses still accumulate in fp32")
    f.add_argument("--channels-last", action="store_true",
                   help="the network and its input batches in channels_last memory format")
    f.add_argument("--compile", action="store_true",
                   help="torch.compile the training step's network, RSG included (the first epoch and the first "
                        "generation epoch compile; the evaluation runs the network uncompiled)")

    u = p.add_argument_group("run")
    u.add_argument("--out", default="runs/rsg", help="run folder: config, metrics, checkpoints")
    u.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CKPT",
                   help=f"continue from CKPT, or from OUT/{ckpt.LAST} when no CKPT is given "
                        "(default: start a new run)")
    u.add_argument("--stop-after-epoch", type=positive_int("--stop-after-epoch"), default=None,
                   help="stop once this many epochs are done, to split a run into jobs; the schedule still "
                        "follows --epochs (default: run to --epochs)")
    u.add_argument("--seed", type=in_range("--seed", 0, SEED_MAX, integer=True), default=0,
                   help="seeds the data (synthetic-lt, subsets), initialisation and data order")
    u.add_argument("--device", type=device_name("--device"), default=None,
                   help="auto, cpu, cuda or cuda:N (default: auto, cuda when available)")
    u.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p
