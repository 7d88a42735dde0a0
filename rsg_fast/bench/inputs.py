"""Rotated benchmark inputs: a timed loop never reuses cache-hot tensors.

``InputPool`` holds several input sets on one device (feature maps, labels, lazily CIFAR images)
and hands out the next one on every call. Together the sets exceed the caches (``default_rotations``),
and every set's labels are a permutation of the same long-tailed multiset, so each call pairs the
same number of samples.
"""
from __future__ import annotations

import itertools
import math

import torch

from rsg_fast.bench.settings import Setting, label_counts

# Input bytes the rotations must cover: beyond a server CPU's last-level cache, and beyond twice a
# Hopper GPU's L2 (50-60 MB), so that a replayed CUDA graph does not run from L2 either.
ROTATION_BYTES = {"cpu": 64 << 20, "cuda": 256 << 20}
MAX_ROTATIONS = {"cpu": 8, "cuda": 32}


def default_rotations(setting: Setting, device, dtype_size: int = 4) -> int:
    """Enough input sets that their feature maps exceed the caches (at least 2)."""
    return rotations_for(setting.batch * setting.channels * setting.height * setting.width * dtype_size, device)


def rotations_for(nbytes: int, device) -> int:
    """How many copies of an input of ``nbytes`` together exceed the caches (at least 2)."""
    kind = torch.device(device).type
    target, cap = ROTATION_BYTES.get(kind, ROTATION_BYTES["cpu"]), MAX_ROTATIONS.get(kind, MAX_ROTATIONS["cpu"])
    return max(2, min(cap, math.ceil(target / max(nbytes, 1))))


class InputPool:
    """Rotated inputs on one device: feature maps in ``dtype`` (leaf tensors that require grad, as a
    backbone's output would), labels (permutations of one long-tailed multiset) and, lazily, CIFAR
    images (fp32).
    ``next()`` / ``next_images()`` cycle through them; ``host_labels_of(y)`` is ``y`` on the CPU."""

    def __init__(self, setting: Setting, device, rotations: int | None = None, seed: int = 0,
                 dtype: torch.dtype = torch.float32):
        self.setting, self.device, self.dtype = setting, torch.device(device), dtype
        self.rotations = rotations or default_rotations(setting, self.device, dtype.itemsize)
        gen = torch.Generator().manual_seed(seed)
        counts = label_counts(setting)
        base = torch.repeat_interleave(torch.arange(setting.num_classes), torch.tensor(counts))
        # the labels on the host too, as a DataLoader gives them (RSG's host_target; pinned on CUDA,
        # as a DataLoader with pin_memory=True gives them)
        self.host_labels = [base[torch.randperm(setting.batch, generator=gen)] for _ in range(self.rotations)]
        if self.device.type == "cuda":
            self.host_labels = [y.pin_memory() for y in self.host_labels]
        self.labels = [y.to(self.device) for y in self.host_labels]
        self._seed = seed
        self._maps: list[torch.Tensor] | None = None
        self._images: list[torch.Tensor] | None = None
        self._grads: dict[tuple, torch.Tensor] = {}
        self._i = itertools.count()
        self._j = itertools.count()

    def randn(self, shape, salt: int, dtype: torch.dtype | None = None) -> torch.Tensor:
        """A seeded normal tensor on the pool's device (drawn on the CPU, so every device sees the same values)."""
        gen = torch.Generator().manual_seed(self._seed * 1000 + salt)
        return torch.randn(tuple(shape), generator=gen).to(device=self.device, dtype=dtype or self.dtype)

    @property
    def maps(self) -> list[torch.Tensor]:
        if self._maps is None:
            s = self.setting
            self._maps = [self.randn((s.batch, *s.maps), r).requires_grad_(True) for r in range(self.rotations)]
        return self._maps

    @property
    def images(self) -> list[torch.Tensor]:
        if self._images is None:
            n, size = self.setting.batch, self.setting.image_size or 32
            # fp32 in any pool, as a data loader gives them (autocast casts them at the first convolution)
            self._images = [self.randn((n, 3, size, size), 500 + r, dtype=torch.float32)
                            for r in range(self.rotations)]
        return self._images

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next (feature maps, labels); the maps' gradient from the previous use is dropped."""
        r = next(self._i) % self.rotations
        x = self.maps[r]
        x.grad = None
        return x, self.labels[r]

    def next_images(self) -> tuple[torch.Tensor, torch.Tensor]:
        r = next(self._j) % self.rotations
        return self.images[r], self.labels[r]

    def host_labels_of(self, labels: torch.Tensor) -> torch.Tensor:
        """The CPU copy of a label tensor ``next()`` / ``next_images()`` returned (made once, not per call)."""
        for device_labels, host in zip(self.labels, self.host_labels):
            if device_labels is labels:
                return host
        raise ValueError("host_labels_of takes labels this pool returned")

    def grad_like(self, t: torch.Tensor) -> torch.Tensor:
        """A fixed random upstream gradient for an output of ``t``'s shape (made once per shape)."""
        key = (tuple(t.shape), t.dtype)
        g = self._grads.get(key)
        if g is None:
            g = self._grads[key] = self.randn(t.shape, 900 + len(self._grads), dtype=t.dtype)
        return g

    def clear_grads(self) -> None:
        for x in self._maps or ():
            x.grad = None
