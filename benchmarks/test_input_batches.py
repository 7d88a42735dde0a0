"""Input batches, made and moved to the benchmark's device.

- One CIFAR training batch (128 augmented 32 x 32 images, CIFAR-10-LT's 12 406 images at rho = 100): a
  DataLoader in the main process (torchvision's per-image PIL transform, then collation; worker
  processes divide this time by their number at best) against ``DeviceBatches`` (one gather and the
  batched augmentation on the device).
- One ImageNet-LT training batch (64 JPEGs of 500 x 375 decoded, random-resized-cropped to 224, flipped
  and colour-jittered with PIL, in the main process): normalised per image as float32, against uint8
  images normalised per batch on the device (``normalize_on_device``, which ``rsg-fast train`` uses).
"""
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from rsg_fast.data import ArrayImageDataset, CifarAugment, DeviceBatches, LoaderOnDevice, build_datasets
from rsg_fast.train.distributed import EpochSampler

IMAGES, BATCH = 12406, 128
LIST_IMAGES, LIST_BATCH = 64, 64


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
    benchmark.group = "cifar-input-batch"
    benchmark.extra_info.update(device=str(device), threads=torch.get_num_threads(), batch=BATCH, images=IMAGES)
    benchmark.pedantic(_next_batch_of(batches, device), rounds=30 if loader == "device-batches" else 10,
                       iterations=1, warmup_rounds=2)


@pytest.fixture(scope="module")
def list_root(tmp_path_factory):
    """A Places-LT-style root of 500 x 375 JPEGs (smooth gradients and noise, quality 90: about 95 kB,
    ImageNet's typical size) and its lists."""
    root = tmp_path_factory.mktemp("list-root")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:375, 0:500]
    lines = []
    for i in range(LIST_IMAGES):
        pixels = np.stack([xx * 255 / 500, yy * 255 / 375, (xx + yy + 7 * i) % 256], -1)
        pixels = pixels + rng.normal(0, 20, pixels.shape)
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(root / f"{i}.jpg", quality=90)
        lines.append(f"{i}.jpg {i % 10}")
    for split in ("train", "test"):
        (root / f"Places_LT_{split}.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.mark.parametrize("normalize", ["per-image-float32", "on-device-uint8"])
def test_list_file_training_batch(benchmark, device, list_root, normalize):
    data = build_datasets("places-lt", root=str(list_root), num_classes=10,
                          normalize_on_device=normalize == "on-device-uint8")
    loader = DataLoader(data.train, batch_size=LIST_BATCH, shuffle=True, drop_last=True,
                        pin_memory=device.type == "cuda")
    benchmark.group = "list-file-input-batch"
    benchmark.extra_info.update(device=str(device), threads=torch.get_num_threads(), batch=LIST_BATCH,
                                image_size=224)
    benchmark.pedantic(_next_batch_of(LoaderOnDevice(loader, device), device), rounds=10, iterations=1,
                       warmup_rounds=1)


def _next_batch_of(batches, device):
    """The timed call: the next batch (a new pass at the end of one), on the device."""
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

    return next_batch
