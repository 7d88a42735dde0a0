"""``CifarAugment``'s batched form against torchvision's per-image transform, and ``DeviceBatches``
against a DataLoader over the same sampler: the same values bit for bit, the same batches in the same
order, random draws fixed by (seed, epoch, rank) alone."""
import numpy as np
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from torch.utils.data import DataLoader, SequentialSampler

from helpers import fake_cifar10, requires_cuda
from rsg_fast.data import ArrayImageDataset, CifarAugment, DeviceBatches, SyntheticLT, build_datasets
from rsg_fast.train.distributed import EpochSampler, ShardSampler

FORMATS = [torch.contiguous_format, torch.channels_last]


def per_image(aug: CifarAugment, image: np.ndarray, params) -> torch.Tensor:
    """torchvision's pipeline on one HWC uint8 image, its random choices given as ``params``."""
    img = Image.fromarray(image)
    if params is not None:
        h, w = image.shape[:2]
        img = TF.crop(TF.pad(img, aug.pad), int(params[0]), int(params[1]), h, w)
        if params[2]:
            img = TF.hflip(img)
    return T.Compose([T.ToTensor(), T.Normalize(aug.mean, aug.std)])(img)


@pytest.mark.parametrize("memory_format", FORMATS)
@pytest.mark.parametrize("n,h,w", [(1, 32, 32), (37, 32, 32), (5, 7, 13)])
def test_batched_augmentation_is_torchvisions_bit_for_bit(n, h, w, memory_format):
    """Every image of the batch is torchvision's pad, crop, flip, ToTensor, Normalize with the drawn
    offsets and flips, exactly (same operations, same float32 rounding), at odd sizes and N = 1."""
    aug = CifarAugment(train=True, size=(h, w))
    images = torch.randint(0, 256, (n, h, w, 3), dtype=torch.uint8)
    params = aug.draw(n, torch.Generator().manual_seed(n + h))
    assert params[:, 2].any() or n == 1                    # flips among the draws
    got = aug.apply(images, params, memory_format)
    assert got.shape == (n, 3, h, w) and got.dtype == torch.float32
    assert got.is_contiguous(memory_format=memory_format)
    for k in range(n):
        assert torch.equal(got[k], per_image(aug, images[k].numpy(), params[k])), k
    test_aug = CifarAugment(train=False, size=(h, w))
    assert test_aug.draw(n, torch.Generator()) is None
    plain = test_aug.apply(images, None, memory_format)
    assert all(torch.equal(plain[k], per_image(test_aug, images[k].numpy(), None)) for k in range(n))


@pytest.mark.parametrize("size", [(32, 32), (7, 13)])
def test_batched_augmentation_is_the_per_image_pipeline_it_replaces(size):
    """``per_image()`` (the DataLoader path) and ``apply`` agree: torchvision's RandomCrop draws the row
    then the column offset, RandomHorizontalFlip one uniform number, from the global RNG, so replaying
    those draws gives ``apply`` the same params."""
    aug = CifarAugment(train=True, size=size)
    pipeline = aug.per_image()
    images = torch.randint(0, 256, (12, *size, 3), dtype=torch.uint8)
    for k in range(len(images)):
        torch.manual_seed(k)
        expected = pipeline(Image.fromarray(images[k].numpy()))
        torch.manual_seed(k)
        span = 2 * aug.pad + 1
        i, j = (int(torch.randint(0, span, size=(1,))) for _ in range(2))
        flip = int(torch.rand(1) < 0.5)
        assert torch.equal(aug.apply(images[k:k + 1], torch.tensor([[i, j, flip]]))[0], expected), k


def test_the_draws_cover_every_crop_and_flip_evenly_and_repeat_per_seed():
    aug = CifarAugment(train=True)
    params = aug.draw(20000, torch.Generator().manual_seed(0))
    assert params.dtype == torch.int64 and params.shape == (20000, 3)
    for col in (0, 1):   # RandomCrop: every offset 0 .. 8 of the padded 40 x 40, about equally often
        counts = torch.bincount(params[:, col], minlength=9)
        assert len(counts) == 9 and counts.min() > 20000 / 9 * 0.9 and counts.max() < 20000 / 9 * 1.1
    assert set(params[:, 2].tolist()) == {0, 1} and abs(params[:, 2].float().mean() - 0.5) < 0.02
    assert torch.equal(params, aug.draw(20000, torch.Generator().manual_seed(0)))
    assert not torch.equal(params, aug.draw(20000, torch.Generator().manual_seed(1)))


def test_a_pipeline_refuses_images_that_are_not_hwc_uint8():
    aug = CifarAugment(train=False)
    with pytest.raises(ValueError, match=r"images must be \(B, H, W, 3\) uint8, got \(2, 3, 8, 8\)"):
        aug.apply(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), None)
    with pytest.raises(ValueError, match="torch.float32"):
        aug.apply(torch.zeros(2, 8, 8, 3), None)
    with pytest.raises(ValueError, match=r"images must be 32 x 32 \(this pipeline's size\), got 8 x 9"):
        aug.apply(torch.zeros(2, 8, 9, 3, dtype=torch.uint8), None)


def _loader_batches(dataset, sampler, batch_size, drop_last):
    return list(DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last))


@pytest.mark.parametrize("memory_format", FORMATS)
@pytest.mark.parametrize("batch_size,drop_last", [(7, False), (7, True), (1000, False), (1, True)])
def test_synthetic_batches_equal_a_dataloaders(batch_size, drop_last, memory_format):
    """Nothing is random per batch in synthetic-lt: the same tensors as a DataLoader over the sampler."""
    data = SyntheticLT(True, n_max=40, imb_factor=0.1, image_size=9)
    sampler = EpochSampler(data.targets, seed=3)
    sampler.set_epoch(2, balanced=False)
    batches = DeviceBatches(data, sampler, batch_size, device=torch.device("cpu"), drop_last=drop_last,
                            memory_format=memory_format)
    got, expected = list(batches), _loader_batches(data, sampler, batch_size, drop_last)
    assert len(got) == len(expected) == len(batches) > 0
    for (x, y), (x_ref, y_ref) in zip(got, expected):
        assert torch.equal(x, x_ref) and x.is_contiguous(memory_format=memory_format)
        assert torch.equal(y, y_ref) and y.dtype == torch.int64 and y.device.type == "cpu"


@pytest.fixture
def cifar(tmp_path, monkeypatch):
    fake_cifar10(str(tmp_path), monkeypatch, per_class_train=30, per_class_test=3)
    return build_datasets("cifar10", root=str(tmp_path), imb_factor=0.1)


def test_cifar_test_batches_equal_a_dataloaders(cifar):
    test = cifar.test
    sampler = ShardSampler(len(test), rank=1, world=3)   # a shard: not every index, not from 0
    got = list(DeviceBatches(test, sampler, 4, device=torch.device("cpu")))
    expected = _loader_batches(test, sampler, 4, False)
    assert len(got) == len(expected) == 3 and got[-1][0].shape[0] == 2   # 10 of the 30
    for (x, y), (x_ref, y_ref) in zip(got, expected):
        assert torch.equal(x, x_ref) and torch.equal(y, y_ref)


def test_cifar_training_batches_follow_the_sampler_and_torchvisions_transform(cifar):
    """The sampler's order and labels; each image torchvision's transform of its own file image with
    the offsets and flip DeviceBatches drew for it; the draws keyed by the sampler's (seed, epoch, rank)."""
    train = cifar.train
    sampler = EpochSampler(train.targets, seed=5)
    sampler.set_epoch(1, balanced=True)   # with replacement: an image may come twice, cropped differently
    batches = DeviceBatches(train, sampler, 16, device=torch.device("cpu"), drop_last=True)
    order = list(sampler)
    params = train.batch_transform.draw(len(batches) * 16, batches.generator())
    got = list(batches)
    assert len(got) == len(order) // 16
    for b, (x, y) in enumerate(got):
        for k in range(16):
            i = order[b * 16 + k]
            assert y[k] == train.targets[i]
            assert torch.equal(x[k], per_image(train.batch_transform, train.data[i], params[b * 16 + k]))
    again = list(batches)   # the same (seed, epoch, rank): the same batches, as a resumed run needs
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(got, again))
    def draws(of: DeviceBatches) -> torch.Tensor:
        return train.batch_transform.draw(64, of.generator())

    for seed, rank in ((6, 0), (5, 1)):      # another seed, another process: other draws
        other = EpochSampler(train.targets, seed=seed, rank=rank, world=2)
        other.set_epoch(1, balanced=True)
        assert not torch.equal(draws(DeviceBatches(train, other, 16, device=torch.device("cpu"))), params[:64])
    sampler.set_epoch(2, balanced=True)      # the next epoch: another order and other draws
    assert not torch.equal(draws(batches), params[:64])


def test_a_sampler_without_an_epoch_draws_anew_each_pass_from_the_global_rng(cifar):
    """A sampler without an epoch (torch's RandomSampler, SequentialSampler) would otherwise key every
    pass the same: the same crop of each image in every epoch."""
    train = cifar.train
    batches = DeviceBatches(train, SequentialSampler(train), 64, device=torch.device("cpu"))
    torch.manual_seed(0)
    first, second = next(iter(batches))[0], next(iter(batches))[0]
    assert not torch.equal(first, second)               # the same images, other crops
    torch.manual_seed(0)
    assert torch.equal(next(iter(batches))[0], first)   # seeded as a DataLoader: torch.manual_seed
    state = torch.get_rng_state()                       # nothing random: the global RNG untouched
    list(DeviceBatches(cifar.test, SequentialSampler(cifar.test), 64, device=torch.device("cpu")))
    assert torch.equal(torch.get_rng_state(), state)


def test_a_random_sampler_gives_a_dataloaders_order_and_other_samplers_are_keyed(cifar):
    """RandomSampler: the DataLoader's order under the same torch.manual_seed (both draw the pass's
    seed before the sampler draws). DistributedSampler: keyed by its seed, epoch and rank, as
    EpochSampler. A sampler with an epoch but no seed: a seed drawn from torch's RNG at construction."""
    from torch.utils.data import DistributedSampler, RandomSampler

    train = cifar.train
    torch.manual_seed(3)
    got = [y for _, y in DeviceBatches(train, RandomSampler(train), 16, device=torch.device("cpu"))]
    torch.manual_seed(3)
    expected = [y for _, y in DataLoader(train, batch_size=16, sampler=RandomSampler(train))]
    assert all(torch.equal(a, b) for a, b in zip(got, expected)) and len(got) == len(expected)

    def first_batch(sampler):
        return next(iter(DeviceBatches(train, sampler, 16, device=torch.device("cpu"))))[0]

    sampler = DistributedSampler(train, num_replicas=2, rank=1, shuffle=False, seed=4)
    torch.manual_seed(0)
    a = first_batch(sampler)
    torch.manual_seed(1)
    assert torch.equal(first_batch(sampler), a)                 # the global RNG plays no part
    sampler.set_epoch(1)
    assert not torch.equal(first_batch(sampler), a)
    sampler.set_epoch(0)

    def key(sampler):
        return DeviceBatches(train, sampler, 16, device=torch.device("cpu")).generator().initial_seed()

    assert key(sampler) != key(DistributedSampler(train, num_replicas=2, rank=0, shuffle=False, seed=4))  # rank
    assert key(sampler) != key(DistributedSampler(train, num_replicas=2, rank=1, shuffle=False, seed=5))  # seed

    class EpochOnly(SequentialSampler):
        epoch = 0

    torch.manual_seed(0)
    a = DeviceBatches(train, EpochOnly(train), 16, device=torch.device("cpu"))
    assert torch.equal(next(iter(a))[0], next(iter(a))[0])       # keyed: the same epoch, the same draws
    torch.manual_seed(1)
    assert not torch.equal(first_batch(EpochOnly(train)), next(iter(a))[0])   # another run's seed


def test_an_empty_shard_gives_no_batches_and_unsupported_data_is_refused(cifar):
    empty = DeviceBatches(cifar.test, ShardSampler(0), 4, device=torch.device("cpu"))
    assert len(empty) == 0 and list(empty) == []
    plain = ArrayImageDataset(cifar.train.data, cifar.train.targets, cifar.train.transform)   # no batched form
    with pytest.raises(ValueError, match="in-memory dataset with a batched transform.*got ArrayImageDataset"):
        DeviceBatches(plain, SequentialSampler(plain), 4, device=torch.device("cpu"))
    with pytest.raises(ValueError, match="batch_size must be a positive int, got 0"):
        DeviceBatches(cifar.test, SequentialSampler(cifar.test), 0, device=torch.device("cpu"))


@pytest.mark.cuda
@requires_cuda
@pytest.mark.parametrize("memory_format", FORMATS)
def test_cuda_batches_equal_the_cpus(cifar, memory_format):
    """On the GPU (divisions by tensors, not by Python scalars, which CUDA turns into multiplications)
    the same values as on the CPU, bit for bit; labels pinned on the host."""
    train = cifar.train
    sampler = EpochSampler(train.targets, seed=1)
    on = {d: DeviceBatches(train, sampler, 32, device=torch.device(d), memory_format=memory_format)
          for d in ("cpu", "cuda")}
    for (x, y), (xc, yc) in zip(on["cpu"], on["cuda"]):
        assert xc.device.type == "cuda" and xc.is_contiguous(memory_format=memory_format)
        assert yc.device.type == "cpu" and yc.is_pinned()
        assert torch.equal(xc.cpu(), x) and torch.equal(yc, y)


@pytest.mark.cuda
@requires_cuda
def test_cuda_batches_do_not_make_the_host_wait_for_the_gpu(cifar):
    from helpers import host_waits_for_gpu

    sampler = EpochSampler(cifar.train.targets, seed=0)
    batches = DeviceBatches(cifar.train, sampler, 16, device=torch.device("cuda"))
    list(batches)                        # the first epoch: pinned host blocks allocated, then cached
    torch.cuda.synchronize()
    assert not host_waits_for_gpu(lambda: [x.sum() for x, _ in batches])


@settings(deadline=None, max_examples=40, print_blob=True)
@given(n_max=st.integers(1, 30), size=st.integers(8, 11), batch=st.integers(1, 40), drop_last=st.booleans(),
       world=st.integers(1, 3), data=st.data())
def test_device_batches_are_a_dataloaders_for_any_split(n_max, size, batch, drop_last, world, data):
    """Property: for synthetic-lt (nothing random per batch) DeviceBatches gives a DataLoader's
    batches, tensor for tensor, whatever the set size (down to 10 images), batch size (past the set's),
    drop_last, process count and rank, balanced or shuffled epoch."""
    rank = data.draw(st.integers(0, world - 1))
    dataset = SyntheticLT(True, n_max=n_max, imb_factor=1.0, image_size=size)
    sampler = EpochSampler(dataset.targets, seed=data.draw(st.integers(0, 99)), rank=rank, world=world)
    sampler.set_epoch(data.draw(st.integers(0, 5)), balanced=data.draw(st.booleans()))
    got = list(DeviceBatches(dataset, sampler, batch, device=torch.device("cpu"), drop_last=drop_last))
    expected = _loader_batches(dataset, sampler, batch, drop_last)
    assert len(got) == len(expected)
    for (x, y), (x_ref, y_ref) in zip(got, expected):
        assert torch.equal(x, x_ref) and torch.equal(y, y_ref)
