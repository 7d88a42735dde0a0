"""Long-tailed datasets: imbalanced CIFAR-10/100, list-file ImageNet-LT / Places-LT / iNaturalist 2018,
and the offline ``synthetic-lt`` (the default of ``rsg-fast train``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch.utils.data import Dataset

from rsg_fast.data.cifar import ArrayImageDataset, BatchAugment, CifarAugment, imbalanced_cifar
from rsg_fast.data.device_batches import DeviceBatches, LoaderOnDevice, device_batches_supported
from rsg_fast.data.imbalance import (
    DEFAULT_SUBSET, IMB_TYPES, SUBSET_RULES, class_counts, imbalance_subset, img_num_per_cls, select_indices,
)
from rsg_fast.data.listfile import (
    IMAGENET_NORMALIZE, LIST_DATASETS, ListFileDataset, imagenet_transforms, list_datasets, list_test_dataset,
    read_list_file,
)
from rsg_fast.data.normalize import ImageNormalize, normalize_uint8_batch, to_hwc_uint8
from rsg_fast.data.synthetic import SyntheticLT

DATASETS = ("synthetic-lt", "cifar10", "cifar100", *LIST_DATASETS)
IN_MEMORY_DATASETS = ("synthetic-lt", "cifar10", "cifar100")   # DeviceBatches can serve these

__all__ = [
    "DATASETS", "DEFAULT_SUBSET", "IMAGENET_NORMALIZE", "IN_MEMORY_DATASETS", "IMB_TYPES", "SUBSET_RULES",
    "LIST_DATASETS", "LTData", "ArrayImageDataset", "BatchAugment", "CifarAugment", "DeviceBatches", "ImageNormalize",
    "ListFileDataset", "LoaderOnDevice", "SyntheticLT", "build_datasets", "build_test_dataset", "class_counts",
    "device_batches_supported", "imagenet_transforms", "imbalance_subset", "imbalanced_cifar", "img_num_per_cls",
    "list_datasets", "list_test_dataset", "normalize_uint8_batch", "read_list_file", "select_indices",
    "to_hwc_uint8",
]


@dataclass
class LTData:
    train: Dataset
    test: Dataset
    num_classes: int
    cls_num_list: list[int]   # training images per class
    image_size: int           # square input side the model sees


def build_datasets(name: str, *, root: str | None = None, download: bool = False, imb_type: str = "exp",
                   imb_factor: float = 0.01, subset: str = DEFAULT_SUBSET, seed: int = 0,
                   train_list: str | None = None, test_list: str | None = None, input_size: int = 224,
                   augment: bool = True, synthetic: dict[str, Any] | None = None,
                   num_classes: int | None = None, normalize_on_device: bool = False) -> LTData:
    """The train/test pair of dataset ``name`` (one of ``DATASETS``) and its per-class training counts.
    ``augment`` is the training split's random crop and flip (CIFAR and the list files; synthetic-lt's
    images are drawn already varied and have none); ``num_classes`` overrides the class count of the
    list-file datasets (e.g. for a subset of a list);
    ``normalize_on_device`` makes their images uint8, finished per batch on the device (``list_datasets``;
    the other datasets ignore it: their items are float already, and ``DeviceBatches`` makes their batches
    on the device from the raw images)."""
    if name == "synthetic-lt":
        kw = dict(synthetic or {})
        train = SyntheticLT(True, imb_type=imb_type, imb_factor=imb_factor, seed=seed, **kw)
        test = SyntheticLT(False, imb_type=imb_type, imb_factor=imb_factor, seed=seed, **kw)
        return LTData(train, test, train.num_classes, list(train.counts), train.data.shape[-1])
    if name in ("cifar10", "cifar100"):
        if root is None:
            raise ValueError(f"root (--data-root) is required for {name}: the folder holding the CIFAR files")
        num_classes = 10 if name == "cifar10" else 100
        train, test, counts = imbalanced_cifar(num_classes, root, imb_type=imb_type, imb_factor=imb_factor,
                                               subset=subset, seed=seed, download=download, augment=augment)
        return LTData(train, test, num_classes, counts, 32)
    if name in LIST_DATASETS:   # the root may be None: lists given, of absolute paths alone
        train, test, num_classes = list_datasets(name, root, train_list, test_list, input_size, augment, num_classes,
                                                 normalize_on_device=normalize_on_device)
        return LTData(train, test, num_classes, class_counts(train.targets, num_classes), input_size)
    raise ValueError(f"dataset must be one of {DATASETS}, got {name!r}")


def build_test_dataset(name: str, *, root: str | None = None, imb_type: str = "exp", imb_factor: float = 0.01,
                       subset: str = DEFAULT_SUBSET, seed: int = 0, test_list: str | None = None,
                       input_size: int = 224, synthetic: dict[str, Any] | None = None,
                       num_classes: int | None = None, normalize_on_device: bool = False) -> tuple[Dataset, int]:
    """(test split, class count) of dataset ``name``, to evaluate a trained model. A list-file dataset
    reads its test list alone (neither the training list nor its images need be there); CIFAR's one
    download holds both splits and synthetic-lt is generated, so those are built as ``build_datasets``.
    ``normalize_on_device`` as there (list-file datasets only)."""
    if name in LIST_DATASETS:
        return list_test_dataset(name, root, test_list, input_size, num_classes,
                                 normalize_on_device=normalize_on_device)
    data = build_datasets(name, root=root, imb_type=imb_type, imb_factor=imb_factor, subset=subset, seed=seed,
                          test_list=test_list, input_size=input_size, synthetic=synthetic, num_classes=num_classes)
    return data.test, data.num_classes
