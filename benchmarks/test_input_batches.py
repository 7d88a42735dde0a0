"""One CIFAR training batch (128 augmented 32 x 32 images, CIFAR-10-LT's 12 406 images at rho = 100):
a DataLoader in the main process (torchvision's per-image PIL transform, then collation; worker
processes divide this time by their number at best) against ``DeviceBatches`` on the benchmark's
device (one gather and the batched augmentation), with the batch moved to the device either way."""
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from rsg_fast.data import ArrayImageDataset, CifarAugment, DeviceBatches
from rsg_fast.train.distributed import EpochSampler

IMAGES, BATCH = 12406, 128


def _dataset() -> ArrayImageDataset:
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, (IMAGES, 32, 32, 3), dtype=np.uint8)
    aug = CifarAugment(train=True)
    return ArrayImageDataset(data, rng.integers(0, 10, IMAGES).tolist(), aug.per_image(), aug)


@pytest.mark.parametrize("loader", ["dataloader-main-process", "device-batches"])
def test_cifar_training_batch(benchmark, device, loader):
    dataset = _dataset()
    sampler = EpochSampler(dataset.targets, seed=0)
    if loader == "device-batches":
        batches = DeviceBatches(dataset, sampler, BATCH, device=device, drop_last=True)
    else:
        batches = DataLoader(dataset, batch_size=BATCH, sampler=sampler, drop_last=True,
                             pin_memory=device.type == "cuda")
    state = {"it": iter(batches)}

    def next_batch():
        try:
            x, y = next(state["it"])
        except StopIteration:
            state["it"] = iter(batches)
            x, y = next(state["it"])
        x = x.to(device, non_blocking=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return x

    benchmark.group = "cifar-input-batch"
    benchmark.extra_info.update(device=str(device), threads=torch.get_num_threads(), batch=BATCH, images=IMAGES)
    benchmark.pedantic(next_batch, rounds=30 if loader == "device-batches" else 10, iterations=1, warmup_rounds=2)
