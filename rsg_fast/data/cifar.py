"""Imbalanced CIFAR-10/100 on top of torchvision's CIFAR (local files unless ``download=True``)."""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch.utils.data import Dataset

from rsg_fast.data.imbalance import DEFAULT_SUBSET, imbalance_subset
from rsg_fast.data.normalize import check_uint8_nhwc, normalize_uint8_batch

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
_FOLDERS = {10: "cifar-10-batches-py", 100: "cifar-100-python"}


@dataclass(frozen=True)
class CifarAugment:
    """The paper's CIFAR input pipeline (the basic augmentation of He et al.) in two forms that give the
    same values bit for bit: torchvision's per-image transform (``per_image``, for DataLoader workers), and
    batched tensor ops that run where the images are (``draw`` then ``apply``, for ``DeviceBatches``).

    Training: zero-pad ``pad`` pixels, a random crop of ``size`` (the images' (height, width)), a
    horizontal flip with probability 1/2; then every pixel ``(u8 / 255 - mean) / std``. Test
    (``train=False``): the scaling and normalisation only."""

    train: bool
    pad: int = 4
    size: tuple[int, int] = (32, 32)
    mean: tuple[float, float, float] = CIFAR_MEAN
    std: tuple[float, float, float] = CIFAR_STD

    def per_image(self):
        import torchvision.transforms as T

        norm = [T.ToTensor(), T.Normalize(self.mean, self.std)]
        if self.train:
            return T.Compose([T.RandomCrop(self.size, padding=self.pad), T.RandomHorizontalFlip(), *norm])
        return T.Compose(norm)

    @property
    def random(self) -> bool:
        """Whether ``draw`` draws anything (the training pipeline)."""
        return self.train

    def draw(self, n: int, generator: torch.Generator) -> torch.Tensor | None:
        """(n, 3) int64 CPU tensor of each image's crop offsets (row, column, in the padded image, each
        uniform in 0 .. 2 pad, as RandomCrop's) and flip (0 or 1); None for the test pipeline."""
        if not self.train:
            return None
        offsets = torch.randint(0, 2 * self.pad + 1, (n, 2), generator=generator)
        flips = (torch.rand(n, generator=generator) < 0.5).long()   # RandomHorizontalFlip: rand < p
        return torch.cat([offsets, flips[:, None]], dim=1)

    def apply(self, images: torch.Tensor, params: torch.Tensor | None,
              memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
        """(B, H, W, 3) uint8 images, (H, W) = ``size``, and ``draw``'s (B, 3) params on the same device
        -> (B, 3, H, W) float32 in ``memory_format``. A zero-padded copy, then one gather crops and flips:
        O(B H W) bytes."""
        check_uint8_nhwc(images, len(self.mean))   # before the size is read from its shape
        if tuple(images.shape[1:3]) != tuple(self.size):
            raise ValueError(f"images must be {self.size[0]} x {self.size[1]} (this pipeline's size), got "
                             f"{images.shape[1]} x {images.shape[2]}")
        b, h, w, _ = images.shape
        if params is not None:
            p = self.pad
            padded = torch.nn.functional.pad(images, (0, 0, p, p, p, p))   # zeros, as RandomCrop's fill
            batch, row, col, col_flipped = _index_ranges(b, h, w, images.device)
            rows = params[:, 0:1] + row                                                       # (B, H)
            cols = params[:, 1:2] + torch.where(params[:, 2:3] == 1, col_flipped, col)        # (B, W)
            images = padded[batch, rows[:, :, None], cols[:, None, :]]
        return normalize_uint8_batch(images, self.mean, self.std, memory_format)


@functools.lru_cache(maxsize=16)
def _index_ranges(b: int, h: int, w: int, device: torch.device):
    """The batch's (B, 1, 1) image index, the (H,) row range and the (W,) column range forwards and
    flipped, on ``device``: made once per batch shape instead of four small kernels every batch."""
    col = torch.arange(w, device=device)
    return torch.arange(b, device=device)[:, None, None], torch.arange(h, device=device), col, w - 1 - col


def _load_cifar(num_classes: int, root: str, train: bool, download: bool):
    import torchvision.datasets as tvd

    cls = {10: tvd.CIFAR10, 100: tvd.CIFAR100}[num_classes]
    try:
        return cls(root=root, train=train, download=download)
    except (RuntimeError, OSError) as err:  # torchvision: "Dataset not found or corrupted"; no network
        path = os.path.join(os.path.abspath(root), _FOLDERS[num_classes])
        if download:
            raise FileNotFoundError(f"could not download CIFAR-{num_classes} to {path!r}: {err}") from err
        raise FileNotFoundError(
            f"CIFAR-{num_classes} not found (or corrupted) at {path!r}; point root (--data-root) at the folder "
            f"that holds {_FOLDERS[num_classes]!r}, or pass download=True (--download) to fetch it there") from err


class BatchAugment(Protocol):
    """The whole augmentation of an in-memory dataset as batched tensor ops, which ``DeviceBatches`` runs
    where the model is (``CifarAugment`` is one)."""

    @property
    def random(self) -> bool:
        """Whether ``draw`` draws anything."""

    def draw(self, n: int, generator: torch.Generator) -> torch.Tensor | None:
        """The CPU params of n images (None when nothing is random)."""

    def apply(self, images: torch.Tensor, params: torch.Tensor | None,
              memory_format: torch.memory_format) -> torch.Tensor:
        """(B, H, W, C) uint8 images and their params -> (B, C, H, W) float in ``memory_format``."""


class ArrayImageDataset(Dataset):
    """uint8 HWC images + int labels, with an optional torchvision transform (PIL in, tensor out).
    ``batch_transform``, when given, is the same transform as batched tensor ops (a ``BatchAugment``,
    such as ``CifarAugment``): ``DeviceBatches`` then makes the batches where the model runs. (A list-file
    dataset's ``device_transform`` is another thing: only the last, deterministic step of its per-image
    transform, which ``LoaderOnDevice`` applies to a DataLoader's batch.)"""

    def __init__(self, data: np.ndarray, targets, transform=None, batch_transform: BatchAugment | None = None):
        self.data = data
        self.targets = [int(t) for t in targets]
        self.transform = transform
        self.batch_transform = batch_transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i):
        from PIL import Image

        img = Image.fromarray(self.data[i])
        img = self.transform(img) if self.transform is not None else torch.from_numpy(np.array(img))
        return img, self.targets[i]


def imbalanced_cifar(num_classes: int, root: str, *, imb_type: str = "exp", imb_factor: float = 0.01,
                     subset: str = DEFAULT_SUBSET, seed: int = 0, download: bool = False,
                     augment: bool = True):
    """(train, test, per-class training counts) for CIFAR-10-LT / CIFAR-100-LT; test stays balanced."""
    if num_classes not in _FOLDERS:
        raise ValueError(f"num_classes must be 10 or 100 for CIFAR, got {num_classes!r}")
    base_train = _load_cifar(num_classes, root, True, download)
    base_test = _load_cifar(num_classes, root, False, download)
    data, targets, counts = imbalance_subset(np.asarray(base_train.data), list(base_train.targets), num_classes,
                                             imb_type, imb_factor, subset, seed)
    train_pipeline, test_pipeline = CifarAugment(train=augment), CifarAugment(train=False)
    train = ArrayImageDataset(data, targets, train_pipeline.per_image(), train_pipeline)
    test = ArrayImageDataset(np.asarray(base_test.data), base_test.targets, test_pipeline.per_image(), test_pipeline)
    return train, test, counts
