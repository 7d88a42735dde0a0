"""Two gloo processes on the CPU through torchrun: DistributedDataParallel with RSG per process,
through both RSG phases (different parameters unused in each)."""
import json
import os
import shutil
import subprocess
import sys

import torch

from rsg_fast import checkpoint as ckpt
from rsg_fast.models import build_model


def _torchrun_train(out: str, *flags: str) -> subprocess.CompletedProcess:
    """``rsg_fast.train`` in two gloo processes on the CPU, writing to ``out``."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "rsg_fast.train", "--device", "cpu", "--no-progress", *flags, "--out", out]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # One retry, for the launcher only: a full local run once saw torchrun exit non-zero where every
    # rerun passed (a rendezvous/port race is the suspect). The first failure is printed, so CI logs
    # keep it; a deterministic bug fails both attempts and the assertions after it are unchanged.
    for attempt in (1, 2):
        shutil.rmtree(out, ignore_errors=True)
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
        if r.returncode == 0:
            break
        print(f"torchrun attempt {attempt} exited {r.returncode}:\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    return r


def test_two_process_gloo_run(tmp_path):
    out = str(tmp_path / "ddp")
    r = _torchrun_train(out, "--arch", "resnet8", "--synthetic-max", "60", "--imb-factor", "0.1", "--synthetic-test",
                        "10", "--batch-size", "32", "--contrastive-dim", "16", "--n-center", "3", "--epochs", "3")
    assert r.stdout.count("epoch 1/3 ") == 1                 # only rank 0 reports
    cfg = json.load(open(os.path.join(out, "config.json")))
    assert cfg["world_size"] == 2
    with open(os.path.join(out, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    assert [r["epoch"] for r in records] == [0, 1, 2]
    assert records[0]["rsg_phase"] == "contrastive" and records[2]["rsg_phase"] == "generation"
    assert records[2]["n_generated"] > 0                       # summed over both processes' local batches
    full = torch.load(os.path.join(out, ckpt.LAST), weights_only=True)
    assert len(full["rng"]) == 2                               # each process's RNG state
    # The checkpoint holds the bare module's keys (no "module." prefix from DDP).
    build_model("resnet8", 10, use_norm=True).load_state_dict(
        torch.load(os.path.join(out, ckpt.BEST), weights_only=True)["model"], strict=True)


def test_two_process_test_accuracy_is_that_of_the_saved_model(tmp_path, capsys):
    """The README's CPU torchrun example. BatchNorm statistics are per process, and each process's
    differed by its last batch: the epoch's test accuracy (both processes' shards, each with its own
    statistics) was not the checkpoint's (process 0's), 39.00 % against 38.80 % here. Every process now
    evaluates process 0's statistics, so `rsg-fast evaluate` of the checkpoint gives the logged numbers."""
    from rsg_fast.train import evaluate_main

    out = str(tmp_path / "ddp-cpu")
    _torchrun_train(out, "--arch", "resnet8", "--epochs", "3")
    with open(os.path.join(out, "metrics.jsonl")) as f:
        last = [json.loads(line) for line in f][-1]
    result = str(tmp_path / "eval.json")
    assert evaluate_main([os.path.join(out, ckpt.LAST), "--device", "cpu", "--json", result]) == 0
    evaluated = json.load(open(result))
    assert (evaluated["top1"], evaluated["per_class_acc"]) == (last["test_acc"], last["per_class_acc"])
