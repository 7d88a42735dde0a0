"""Batches that arrive on the device the model runs on, with their labels on the host:
``DeviceBatches`` makes those of an in-memory dataset (CIFAR-LT, synthetic-lt) there; ``LoaderOnDevice``
moves a DataLoader's there and finishes them (list-file data: uint8 images normalised there).

A DataLoader makes a CIFAR batch image by image in Python (PIL pad, crop, flip, ToTensor, Normalize:
about 170 us an image, 20 ms a batch of 128 with collation, on one core of a 2-core VM), in worker processes
that must keep up with the GPU, then copies it to the GPU. Here the dataset is copied to the device
once (as uint8: 38 MB for CIFAR-10-LT at rho = 100, 150 MB for all 50 000 CIFAR images), and a batch
is one index gather plus ``CifarAugment.apply``: a handful of kernels, no worker processes, no
per-step copy of images.

The order is the sampler's: the same batches as a DataLoader over that sampler (for a sampler that
draws from torch's global RNG, such as RandomSampler, the same order under the same
``torch.manual_seed`` when the pipeline is random; a DataLoader draws its workers' seed first, as the
random pipeline does). The augmentation's random numbers: see ``DeviceBatches``.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Sampler, Subset

from rsg_fast.data.cifar import ArrayImageDataset
from rsg_fast.data.synthetic import SyntheticLT


def device_batches_supported(dataset: Dataset) -> bool:
    """Whether ``DeviceBatches`` can serve ``dataset``: its images are in memory and its transform has
    a batched form."""
    return isinstance(dataset, SyntheticLT) or (isinstance(dataset, ArrayImageDataset)
                                                and dataset.batch_transform is not None)


class DeviceBatches:
    """Iterates ``(images, labels)`` like ``DataLoader(dataset, batch_size, sampler=sampler,
    drop_last=drop_last)``, with the images already on ``device`` in ``memory_format`` and the labels on
    the host (pinned on CUDA: their copy to the device does not wait, and RSG plans its new samples
    from them without a sync).

    The augmentation's random draws:

    - a sampler with an ``epoch`` (``rsg_fast.train.distributed.EpochSampler``, torch's
      ``DistributedSampler``): keyed by its ``seed``, ``epoch`` and ``rank``, so its ``set_epoch``,
      which you call every epoch, moves both the order and the draws, a resumed run draws what an
      uninterrupted one would, and the draws do not depend on a number of worker processes. A missing
      ``rank`` counts as 0; a missing ``seed`` is drawn once, here, from torch's global RNG.
    - any other sampler (``RandomSampler``, ``SequentialSampler``): a new stream each pass, seeded from
      torch's global RNG as a DataLoader seeds its workers."""

    def __init__(self, dataset: Dataset, sampler: Sampler[int], batch_size: int, *, device: torch.device,
                 drop_last: bool = False, memory_format: torch.memory_format = torch.contiguous_format):
        if not device_batches_supported(dataset):
            hint = ("give the dataset itself, and the subset's indices through the sampler (e.g. "
                    "SubsetRandomSampler)" if isinstance(dataset, Subset) else
                    "a DataLoader's batches reach the device through LoaderOnDevice")
            raise ValueError(f"DeviceBatches needs an in-memory dataset with a batched transform (CIFAR-LT, "
                             f"synthetic-lt), got {type(dataset).__name__}: {hint}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.device = torch.device(device)
        self.sampler, self.batch_size, self.drop_last = sampler, batch_size, drop_last
        self.memory_format = memory_format
        if isinstance(dataset, SyntheticLT):   # float (N, C, H, W), nothing random per batch
            images, self.transform = dataset.data, None
        else:                                  # uint8 (N, H, W, C), the layout the gather reads best
            images, self.transform = torch.from_numpy(np.ascontiguousarray(dataset.data)), dataset.batch_transform
        self.images = images.to(self.device)
        self.targets = torch.as_tensor(dataset.targets, dtype=torch.long)
        self._pin = self.device.type == "cuda"
        keyed = hasattr(sampler, "epoch")
        self._seed = getattr(sampler, "seed", None) if keyed else None
        if keyed and self._seed is None:   # else two runs' draws would agree whatever their torch seed
            self._seed = _global_rng_seed()

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        random = self.transform is not None and self.transform.random
        generator = self.generator() if random else None   # before the sampler's draws, as a DataLoader
        order = torch.as_tensor(list(self.sampler), dtype=torch.long)
        count = len(self) * self.batch_size if self.drop_last else len(order)
        order = order[:count]
        labels = self.targets[order]
        # all the epoch's random draws at once (None when nothing is random): one copy, then views
        params = self.transform.draw(count, generator) if random else None
        if self._pin:
            order, labels = order.pin_memory(), labels.pin_memory()
            params = params.pin_memory() if params is not None else None
        order_dev = order.to(self.device, non_blocking=True)
        params_dev = params.to(self.device, non_blocking=True) if params is not None else None
        for start in range(0, count, self.batch_size):
            batch = slice(start, start + self.batch_size)
            images = self.images[order_dev[batch]]
            if self.transform is None:
                x = images.contiguous(memory_format=self.memory_format)
            else:
                x = self.transform.apply(images, None if params_dev is None else params_dev[batch], self.memory_format)
            yield x, labels[batch]

    def generator(self) -> torch.Generator:
        """The CPU generator a pass draws from: that of the sampler's current (seed, epoch, rank), or one
        seeded from torch's global RNG (which this call advances) for a sampler without an epoch."""
        if self._seed is None:   # no epoch to key by: else the same crops every pass
            return torch.Generator().manual_seed(_global_rng_seed())
        key = [self._seed, self.sampler.epoch, getattr(self.sampler, "rank", 0)]
        # SeedSequence mixes the numbers into one well-spread seed (seed + epoch would make run s's
        # epoch e + 1 repeat run s + 1's epoch e)
        state = np.random.SeedSequence([int(k) % 2**64 for k in key] + [0xC1FA]).generate_state(1, np.uint64)
        return torch.Generator().manual_seed(int(state[0]))


def _global_rng_seed() -> int:
    """A seed drawn from torch's global RNG: a non-negative int64, as a DataLoader draws its base seed."""
    return int(torch.empty((), dtype=torch.int64).random_())


class LoaderOnDevice:
    """Iterates ``loader``'s ``(images, labels)`` with the images on ``device`` in ``memory_format`` and the
    labels on the host (pinned on CUDA), as ``DeviceBatches`` yields them. The images are copied without
    waiting (from pinned memory when the loader pins: ``pin_memory=True``), then finished there by
    ``finish(images, memory_format)``: by default the ``device_transform`` of the loader's dataset
    (``ListFileDataset`` with ``normalize_on_device``), looked up through ``Subset`` and ``ConcatDataset``.
    A uint8 batch scaled and normalised on the GPU crosses PCIe, the worker queue and the pinned copy
    in a quarter of the bytes. uint8 images with nothing to finish them are a ``TypeError`` (pass
    ``finish``; ``finish=lambda x, memory_format: x`` keeps them as they are)."""

    def __init__(self, loader: DataLoader, device: torch.device,
                 memory_format: torch.memory_format = torch.contiguous_format, *, finish=None):
        self.loader, self.device, self.memory_format = loader, torch.device(device), memory_format
        self.finish = finish if finish is not None else _device_transform(loader.dataset)
        self._pin = self.device.type == "cuda"

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for images, labels in self.loader:
            if self.finish is not None:
                images = self.finish(images.to(self.device, non_blocking=True), self.memory_format)
            elif images.dtype == torch.uint8:   # raw pixels: memory_format would take H for the channels
                raise TypeError(f"LoaderOnDevice: the loader gave uint8 images {tuple(images.shape)} and nothing "
                                "finishes them: pass finish= (say the dataset's device_transform, e.g. "
                                "rsg_fast.data.IMAGENET_NORMALIZE)")
            else:
                images = images.to(self.device, non_blocking=True, memory_format=self.memory_format)
            if self._pin and not labels.is_pinned():   # host_target's copy then does not wait
                labels = labels.pin_memory()
            yield images, labels


def _device_transform(dataset: Dataset):
    """A dataset's ``device_transform``, looked up through ``Subset`` and ``ConcatDataset`` (whose parts
    must then agree); None when it has none."""
    if isinstance(dataset, Subset):
        return _device_transform(dataset.dataset)
    if isinstance(dataset, ConcatDataset):
        found = [_device_transform(d) for d in dataset.datasets]
        return found[0] if found and all(f == found[0] for f in found) else None
    return getattr(dataset, "device_transform", None)
