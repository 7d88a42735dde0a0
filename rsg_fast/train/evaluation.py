"""Accuracy of a network over a test set's batches: per-class (correct, total), summed over processes
(``evaluate``, which the training loop and ``rsg-fast evaluate`` use), and a test set's batches made
on the device in order (``eval_batches``, ``rsg-fast evaluate``'s; the loop shards its own)."""
from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, SequentialSampler

from rsg_fast.data import DeviceBatches, LoaderOnDevice, device_batches_supported
from rsg_fast.train.distributed import all_reduce


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, num_classes: int, device: torch.device, world: int = 1):
    """(correct, total) per class over the ``(images, labels)`` batches of ``loader`` (float images: a
    DataLoader of normalised images, or ``eval_batches``' batches already on the device), summed over
    processes."""
    model.eval()
    correct = torch.zeros(num_classes, dtype=torch.float64, device=device)
    total = torch.zeros(num_classes, dtype=torch.float64, device=device)
    for x, y in loader:
        if x.dtype == torch.uint8:   # a normalize_on_device dataset's raw pixels: not the network's input
            raise TypeError("evaluate: the loader gave uint8 images; finish them on the device first (wrap the "
                            "DataLoader in rsg_fast.data.LoaderOnDevice, with finish= if its dataset hides its "
                            "device_transform, or use rsg_fast.train.evaluation.eval_batches)")
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        pred = model(x).argmax(dim=1)
        # index_add_ instead of bincount/boolean indexing: neither syncs the GPU each batch
        total.index_add_(0, y, torch.ones_like(y, dtype=torch.float64))
        correct.index_add_(0, y, (pred == y).double())
    return all_reduce(correct, world).cpu(), all_reduce(total, world).cpu()


def eval_batches(test: Dataset, batch_size: int, device: torch.device, workers: int = 0,
                 memory_format: torch.memory_format = torch.contiguous_format):
    """The test set's batches in order, made on ``device`` in ``memory_format``: ``DeviceBatches`` for
    in-memory data, else a DataLoader with ``workers`` processes through ``LoaderOnDevice`` (which
    finishes uint8 images there)."""
    if device_batches_supported(test):
        return DeviceBatches(test, SequentialSampler(test), batch_size, device=device, memory_format=memory_format)
    loader = DataLoader(test, batch_size=batch_size, shuffle=False, num_workers=workers,
                        pin_memory=device.type == "cuda")
    return LoaderOnDevice(loader, device, memory_format)
