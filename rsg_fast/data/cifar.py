"""Imbalanced CIFAR-10/100 on top of torchvision's CIFAR (local files unless ``download=True``)."""
from __future__ import annotations

import os

import numpy as np
import torch
from torch.utils.data import Dataset

from rsg_fast.data.imbalance import DEFAULT_SUBSET, img_num_per_cls, select_indices

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
_FOLDERS = {10: "cifar-10-batches-py", 100: "cifar-100-python"}


def cifar_transforms(train: bool):
    """The basic augmentation of He et al. used by the paper: pad 4, random 32x32 crop, flip."""
    import torchvision.transforms as T

    norm = [T.ToTensor(), T.Normalize(CIFAR_MEAN, CIFAR_STD)]
    if train:
        return T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), *norm])
    return T.Compose(norm)


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
            f"CIFAR-{num_classes} not found (or corrupted) at {path!r}; point --data-root at the folder "
            f"that holds {_FOLDERS[num_classes]!r}, or pass --download to fetch it there") from err


class ArrayImageDataset(Dataset):
    """uint8 HWC images + int labels, with an optional torchvision transform (PIL in, tensor out)."""

    def __init__(self, data: np.ndarray, targets, transform=None):
        self.data = data
        self.targets = [int(t) for t in targets]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i):
        from PIL import Image

        img = Image.fromarray(self.data[i])
        img = self.transform(img) if self.transform is not None else torch.from_numpy(np.array(img))
        return img, self.targets[i]


def imbalance_subset(data: np.ndarray, targets, num_classes: int, imb_type: str, imb_factor: float,
                     subset: str = DEFAULT_SUBSET, seed: int = 0) -> tuple[np.ndarray, list[int], list[int]]:
    """(data, targets, per-class counts) of the long-tailed subset; n_max = len(data) / num_classes."""
    counts = img_num_per_cls(len(data) / num_classes, num_classes, imb_type, imb_factor)
    idx = select_indices(targets, counts, subset, seed)
    return data[idx], [int(targets[i]) for i in idx], counts


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
    train = ArrayImageDataset(data, targets, cifar_transforms(train=augment))
    test = ArrayImageDataset(np.asarray(base_test.data), base_test.targets, cifar_transforms(train=False))
    return train, test, counts
