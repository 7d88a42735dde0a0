"""List-file images travel as uint8 and are normalised per batch where the model runs: the same float32
values, bit for bit, as torchvision's per-image ToTensor + Normalize, in training and test, through a
DataLoader with and without worker processes, in both memory formats."""
import os
import re

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image
from torch.utils.data import ConcatDataset, DataLoader, SequentialSampler, Subset

from helpers import requires_cuda

from rsg_fast.data import (
    IMAGENET_NORMALIZE, ArrayImageDataset, CifarAugment, DeviceBatches, ImageNormalize, ListFileDataset,
    LoaderOnDevice, build_datasets, build_test_dataset, imagenet_transforms, normalize_uint8_batch, to_hwc_uint8,
)

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _per_image_reference(images_u8, mean, std):
    """torchvision's ToTensor then Normalize of each (H, W, C) uint8 image, stacked."""
    tf = T.Compose([T.ToTensor(), T.Normalize(mean, std)])
    return torch.stack([tf(Image.fromarray(img.squeeze(-1) if img.shape[-1] == 1 else img)) for img in images_u8])


@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 7, 5), (2, 13, 10)])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_batch_normalisation_is_torchvisions_to_the_bit(shape, memory_format):
    b, h, w = shape
    images = np.random.default_rng(b * h * w).integers(0, 256, (b, h, w, 3), dtype=np.uint8)
    images[0].reshape(-1)[:256] = np.arange(256)[: h * w * 3]   # every byte value the image has room for
    got = normalize_uint8_batch(torch.from_numpy(images), MEAN, STD, memory_format)
    want = _per_image_reference(images, MEAN, STD)
    assert got.dtype == torch.float32 and got.shape == (b, 3, h, w)
    assert got.is_contiguous(memory_format=memory_format)
    assert torch.equal(got, want)
    # one channel (a grey image), its own mean and std
    grey = images[..., :1].copy()
    assert torch.equal(ImageNormalize((0.5,), (0.25,))(torch.from_numpy(grey)), _per_image_reference(grey, (0.5,), (0.25,)))


def test_every_byte_value_in_every_channel_is_torchvisions():
    images = np.broadcast_to(np.arange(256, dtype=np.uint8)[None, :, None, None], (1, 256, 2, 3)).copy()
    for mean, std in ((MEAN, STD), ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)), ((0.5,) * 3, (0.5,) * 3)):
        assert torch.equal(normalize_uint8_batch(torch.from_numpy(images), mean, std),
                           _per_image_reference(images, mean, std))


def test_batch_normalisation_rejects_what_is_not_a_uint8_nhwc_batch():
    good = torch.zeros(2, 4, 4, 3, dtype=torch.uint8)
    for bad in (good.float(), good[0], good.permute(0, 3, 1, 2)[:, :, :, :2]):
        with pytest.raises(ValueError, match=r"images must be \(B, H, W, 3\) uint8"):
            normalize_uint8_batch(bad, MEAN, STD)
    with pytest.raises(ValueError, match=r"images must be \(B, H, W, 1\) uint8"):
        ImageNormalize((0.5,), (0.5,))(good)
    with pytest.raises(ValueError, match=r"mean and std must give one value per channel"):
        ImageNormalize((0.5, 0.5), (0.5,))
    with pytest.raises(ValueError, match=r"std must not hold a zero"):
        ImageNormalize((0.5,), (0.0,))


def test_to_hwc_uint8_keeps_what_to_tensor_reads():
    rgb = np.random.default_rng(1).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    x = to_hwc_uint8(Image.fromarray(rgb))
    assert x.dtype == torch.uint8 and x.shape == (5, 7, 3) and np.array_equal(x.numpy(), rgb)
    grey = to_hwc_uint8(Image.fromarray(rgb[..., 0]))
    assert grey.shape == (5, 7, 1) and np.array_equal(grey[..., 0].numpy(), rgb[..., 0])
    pic = Image.fromarray(rgb)
    x = to_hwc_uint8(pic)
    assert x.numpy().flags.writeable                  # a copy of its own, as ToTensor's (no warning, no aliasing)
    x[0, 0, 0] = 255 - x[0, 0, 0]
    assert np.array_equal(np.asarray(pic), rgb)
    for mode in ("1", "I;16", "F", "RGBA", "P"):       # ToTensor does not read these as 8-bit pixels scaled by 255
        with pytest.raises(ValueError, match=f"to_hwc_uint8 takes images of mode 'L' or 'RGB', got mode '{re.escape(mode)}'"):
            to_hwc_uint8(Image.new(mode, (3, 2)))


@pytest.mark.parametrize("train", [True, False])
def test_imagenet_transform_in_two_halves_is_the_whole_one(train):
    """The uint8 per-image half then the batch half give the whole transform's values; the random draws
    (crop, flip, colour jitter) are the same ones, since scaling draws nothing."""
    rng = np.random.default_rng(2)
    pics = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((45, 37), (29, 61), (40, 40))]
    whole, halves = imagenet_transforms(train, 19), imagenet_transforms(train, 19, uint8=True)
    torch.manual_seed(0)
    want = torch.stack([whole(p) for p in pics])
    torch.manual_seed(0)
    items = torch.stack([halves(p) for p in pics])
    assert items.dtype == torch.uint8 and items.shape == (3, 19, 19, 3)
    assert torch.equal(IMAGENET_NORMALIZE(items), want)


def _write_list_root(root, sizes=((45, 37), (29, 61), (40, 40), (33, 27), (51, 44))):
    """A Places-LT-style root: JPEGs of odd sizes, their train and test lists (two classes)."""
    rng = np.random.default_rng(3)
    os.makedirs(root / "img")
    lines = []
    for i, (h, w) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "img" / f"{i}.jpg", quality=90)
        lines.append(f"img/{i}.jpg {i % 2}")
    for split in ("train", "test"):
        (root / f"Places_LT_{split}.txt").write_text("\n".join(lines) + "\n")


def _batches(loader, seed):
    torch.manual_seed(seed)   # the DataLoader's workers' (or the main process's) draws
    return [(x.clone(), y.clone()) for x, y in loader]


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_list_batches_normalised_on_the_device_are_the_per_image_ones(tmp_path, workers, memory_format):
    _write_list_root(tmp_path)
    options = dict(root=str(tmp_path), input_size=17, num_classes=2)
    per_image = build_datasets("places-lt", **options)
    on_device = build_datasets("places-lt", **options, normalize_on_device=True)
    assert getattr(per_image.train, "device_transform", None) is None
    x, y = on_device.train[1]
    assert x.dtype == torch.uint8 and x.shape == (17, 17, 3) and y == 1   # a quarter of the bytes to move
    for split in ("train", "test"):
        def loader(data):
            return DataLoader(getattr(data, split), batch_size=2, shuffle=split == "train", num_workers=workers)
        want = _batches(loader(per_image), 5)
        got = _batches(LoaderOnDevice(loader(on_device), torch.device("cpu"), memory_format), 5)
        assert len(got) == len(want) == 3
        for (gx, gy), (wx, wy) in zip(got, want):
            assert gx.dtype == torch.float32 and gx.is_contiguous(memory_format=memory_format)
            assert torch.equal(gx, wx) and torch.equal(gy, wy)
    # rsg-fast evaluate's test set alone, the same way
    test, _ = build_test_dataset("places-lt", **options, normalize_on_device=True)
    assert test.device_transform is IMAGENET_NORMALIZE


def test_loader_on_device_finishes_the_batch_on_the_device(tmp_path):
    """The images are moved before they are finished (the "meta" device stands in for a GPU: a batch
    finished on the host would arrive there as a CPU tensor), the labels stay on the host."""
    _write_list_root(tmp_path)
    data = build_datasets("places-lt", root=str(tmp_path), input_size=9, num_classes=2, normalize_on_device=True)
    meta = torch.device("meta")
    finished_on = []
    batches = LoaderOnDevice(DataLoader(data.test, batch_size=2), meta, torch.channels_last,
                             finish=lambda x, fmt: finished_on.append(x.device) or IMAGENET_NORMALIZE(x, fmt))
    for x, y in batches:
        assert finished_on[-1] == meta                   # the uint8 batch reached the device first
        assert x.device == meta and x.dtype == torch.float32 and x.shape[1:] == (3, 9, 9)
        assert x.is_contiguous(memory_format=torch.channels_last)
        assert y.device.type == "cpu"


def test_loader_on_device_finds_the_transform_through_subsets_or_is_told_it(tmp_path):
    """A Subset or ConcatDataset of the dataset: its device_transform is found through them; uint8 images
    with nothing to finish them are a clear TypeError, not pixels whose rows pass for channels; an
    explicit finish wins."""
    _write_list_root(tmp_path)
    data = build_datasets("places-lt", root=str(tmp_path), input_size=9, num_classes=2, normalize_on_device=True)
    cpu = torch.device("cpu")
    want = next(iter(LoaderOnDevice(DataLoader(data.test, batch_size=5), cpu)))[0]
    subset = Subset(data.test, [0, 2, 4])
    x, _ = next(iter(LoaderOnDevice(DataLoader(subset, batch_size=3), cpu)))
    assert torch.equal(x, want[[0, 2, 4]])
    both = ConcatDataset([Subset(data.test, [1]), data.test])
    x, _ = next(iter(LoaderOnDevice(DataLoader(both, batch_size=6), cpu)))
    assert torch.equal(x, torch.cat([want[1:2], want]))
    bare = ListFileDataset(str(tmp_path), str(tmp_path / "Places_LT_test.txt"), imagenet_transforms(False, 9, uint8=True))
    with pytest.raises(TypeError, match=r"LoaderOnDevice: the loader gave uint8 images \(2, 9, 9, 3\) and nothing "
                                        r"finishes them: pass finish="):
        next(iter(LoaderOnDevice(DataLoader(bare, batch_size=2), cpu)))
    x, _ = next(iter(LoaderOnDevice(DataLoader(bare, batch_size=5), cpu, finish=IMAGENET_NORMALIZE)))
    assert torch.equal(x, want)
    raw, _ = next(iter(LoaderOnDevice(DataLoader(bare, batch_size=5), cpu, finish=lambda x, memory_format: x)))
    assert raw.dtype == torch.uint8 and raw.shape == (5, 9, 9, 3)
    # a per-image transform that does not end in uint8 pixels, with a device_transform: the error says so
    wrong = ListFileDataset(str(tmp_path), str(tmp_path / "Places_LT_test.txt"), imagenet_transforms(False, 9),
                            device_transform=IMAGENET_NORMALIZE)
    with pytest.raises(ValueError, match=r"must end in such pixels for its device_transform: to_hwc_uint8"):
        next(iter(LoaderOnDevice(DataLoader(wrong, batch_size=2), cpu)))


def test_device_batches_points_elsewhere_for_what_it_cannot_serve(tmp_path):
    _write_list_root(tmp_path)
    data = build_datasets("places-lt", root=str(tmp_path), input_size=9, num_classes=2, normalize_on_device=True)
    with pytest.raises(ValueError, match=r"got ListFileDataset: a DataLoader's batches reach the device through "
                                         r"LoaderOnDevice"):
        DeviceBatches(data.test, SequentialSampler(data.test), 2, device=torch.device("cpu"))
    images = np.zeros((4, 32, 32, 3), dtype=np.uint8)
    cifar = ArrayImageDataset(images, [0, 1, 0, 1], None, CifarAugment(train=False))
    with pytest.raises(ValueError, match=r"got Subset: give the dataset itself, and the subset's indices through "
                                         r"the sampler \(e.g. SubsetRandomSampler\)"):
        DeviceBatches(Subset(cifar, [0, 1]), SequentialSampler(range(2)), 2, device=torch.device("cpu"))


def test_loader_on_device_moves_a_finished_batch_into_the_memory_format():
    """A dataset without a device_transform (CIFAR with --loader workers) is moved as it is, into the
    memory format; the labels stay on the host; the length is the loader's."""
    images = np.random.default_rng(4).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    data = ArrayImageDataset(images, [0, 1, 2, 3, 4], CifarAugment(train=False).per_image())
    loader = DataLoader(data, batch_size=2)
    batches = list(LoaderOnDevice(loader, torch.device("cpu"), torch.channels_last))
    assert len(LoaderOnDevice(loader, torch.device("cpu"))) == len(batches) == 3
    assert all(x.is_contiguous(memory_format=torch.channels_last) for x, _ in batches)
    assert torch.equal(torch.cat([x for x, _ in batches]), torch.stack([data[i][0] for i in range(5)]))
    assert torch.equal(torch.cat([y for _, y in batches]), torch.arange(5))


@pytest.mark.cuda
@requires_cuda
def test_list_batches_normalised_on_a_gpu_are_the_cpus(tmp_path):
    """CUDA's division by a Python scalar multiplies by its reciprocal; the batch half divides by tensors,
    so the GPU's values are the CPU's (and so torchvision's) to the bit, here through pinned worker
    batches copied without waiting."""
    images = torch.from_numpy(np.random.default_rng(5).integers(0, 256, (4, 13, 10, 3), dtype=np.uint8))
    for memory_format in (torch.contiguous_format, torch.channels_last):
        got = IMAGENET_NORMALIZE(images.cuda(), memory_format)
        assert got.is_contiguous(memory_format=memory_format)
        assert torch.equal(got.cpu(), IMAGENET_NORMALIZE(images))
    _write_list_root(tmp_path)
    options = dict(root=str(tmp_path), input_size=17, num_classes=2)
    per_image = build_datasets("places-lt", **options)
    on_device = build_datasets("places-lt", **options, normalize_on_device=True)
    want = _batches(DataLoader(per_image.train, batch_size=2, shuffle=True, num_workers=2), 6)
    loader = DataLoader(on_device.train, batch_size=2, shuffle=True, num_workers=2, pin_memory=True)
    got = _batches(LoaderOnDevice(loader, torch.device("cuda"), torch.channels_last), 6)
    for (gx, gy), (wx, wy) in zip(got, want, strict=True):
        assert gx.is_cuda and gx.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(gx.cpu(), wx) and torch.equal(gy, wy)
    # the labels are pinned (host_target's copy does not wait), also from a loader that does not pin
    unpinned = DataLoader(on_device.test, batch_size=2)
    assert all(y.is_pinned() for _, y in LoaderOnDevice(unpinned, torch.device("cuda")))
