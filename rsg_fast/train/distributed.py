"""What differs when ``rsg-fast train`` runs under torchrun: the process's place, its device, how the
data is split, and the collectives. With one process every helper here is a no-op or the identity."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import Sampler

from rsg_fast import checkpoint as ckpt


@dataclass(frozen=True)
class Process:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Process 0 prints and writes the run folder."""
        return self.rank == 0

    @classmethod
    def from_env(cls) -> Process:
        """torchrun's ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``; one process without them."""
        return cls(int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")),
                   int(os.environ.get("LOCAL_RANK", "0")))


def process_device(device: torch.device, proc: Process) -> torch.device:
    """``device`` (already checked by ``resolve_device``), or this process's GPU under torchrun."""
    if device.type == "cuda":
        if proc.world > 1:
            device = torch.device("cuda", proc.local_rank)  # torchrun: one GPU per process
        if device.index is not None:  # set_device refuses a bare "cuda"
            torch.cuda.set_device(device)
    return device


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


def unwrap(model: nn.Module) -> nn.Module:
    """The bare network inside DistributedDataParallel (its keys have no ``module.`` prefix)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def all_reduce(t: torch.Tensor, world: int) -> torch.Tensor:
    """Sum ``t`` over the processes, in place."""
    if world > 1:
        dist.all_reduce(t)
    return t


def broadcast_buffers(model: nn.Module, world: int) -> None:
    """Process 0's buffers (BatchNorm statistics) to every process, in place: DDP broadcasts them at
    each training forward, so after an epoch each process's differ by its own last batch's update."""
    if world > 1:
        for buffer in model.buffers():
            dist.broadcast(buffer, 0)


def gather_rng(world: int) -> list[dict]:
    """Every process's RNG state (each draws its own augmentation), for the checkpoint."""
    state = ckpt.rng_state()
    if world == 1:
        return [state]
    states: list = [None] * world
    dist.all_gather_object(states, state)
    return states
