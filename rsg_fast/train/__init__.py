"""``rsg-fast train`` / ``rsg-fast evaluate``: long-tailed training with RSG, the paper's CIFAR recipe.

Defaults follow the paper (LDAM-DRW + RSG on CIFAR): SGD momentum 0.9, weight decay 2e-4, batch 128,
lr 0.1 with 5 warm-up epochs, x0.01 from epoch 159 and x0.0001 from 179 of 200 (as the published RSG
script, one epoch before DRW), DRW from 160, RSG's generation after ``epoch_thresh`` 159, head ratio
0.2 (step: 0.5), transfer strength 1.0 (step: 0.01), lambda1 0.1, lambda2 0.01, K 15, D 256, the
published code's MV-loss grouping. Unless
given, the milestones, DRW epoch and ``epoch_thresh`` keep those fractions of ``--epochs``, so a short
run reaches the generation phase. Epochs count from 0 (as in the published scripts): "from epoch 160"
is the 161st epoch.

Distributed: launch with ``torchrun --nproc_per_node=G -m rsg_fast.train ...``; each process runs RSG
on its local batch (``--batch-size`` is the global batch, split evenly).

One job per module, in the order a run uses them:

- ``arguments``: the command line's flags, grouped by topic;
- ``config``: ``TrainConfig``, the typed configuration, resolved once from the flags;
- ``run_folder``: ``--out`` checked up front, and the order its checkpoints are written in;
- ``setup``: data, device, model, optimiser and resumed state, as one ``TrainSetup``;
- ``init_weights``: ``--init-weights``, a pre-trained state dict taken into a new run's network;
- ``distributed``: what differs under torchrun (process, samplers, collectives);
- ``workers``: the default number of DataLoader worker processes;
- ``loop``: the epochs (``progress``: its progress bar); ``evaluation``: test accuracy and the test
  batches;
- ``checks``: the settings refused before a run starts, and those it warns about;
- ``cli``: ``main``, the order of the above and how failures reach the user;
- ``evaluate_cli``: ``rsg-fast evaluate``, a checkpoint on its run's test split.
"""
from rsg_fast.train.arguments import PROG, build_parser
from rsg_fast.train.cli import main
from rsg_fast.train.config import MODEL_KEYS, TrainConfig, head_classes, resolve_config
from rsg_fast.train.distributed import EpochSampler, ShardSampler
from rsg_fast.train.evaluate_cli import build_eval_parser, evaluate_main
from rsg_fast.train.evaluation import evaluate
from rsg_fast.train.run_folder import inference_checkpoint
from rsg_fast.train.setup import TrainSetup, build_setup

__all__ = ["PROG", "MODEL_KEYS", "EpochSampler", "ShardSampler", "TrainConfig", "TrainSetup", "build_eval_parser",
           "build_parser", "build_setup", "evaluate", "evaluate_main", "head_classes", "inference_checkpoint",
           "main", "resolve_config"]
