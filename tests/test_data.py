"""Long-tailed data: the published per-class counts, both subset rules, list files, synthetic-lt, errors."""
import os

import numpy as np
import pytest
import torch

from rsg_fast.data import (
    LIST_DATASETS, ListFileDataset, SyntheticLT, build_datasets, build_test_dataset, class_counts, img_num_per_cls,
    select_indices,
)
from helpers import fake_cifar10


def formula(n_max, C, imb_type, rho):
    if imb_type == "exp":
        return [int(n_max * (1 / rho) ** (i / (C - 1))) for i in range(C)]
    return [int(n_max)] * (C // 2) + [int(n_max / rho)] * (C - C // 2)


@pytest.mark.parametrize("C", [10, 100])
@pytest.mark.parametrize("rho", [100, 50])
@pytest.mark.parametrize("imb_type", ["exp", "step"])
def test_counts_match_formula(C, rho, imb_type):
    counts = img_num_per_cls(50000 / C, C, imb_type, 1 / rho)
    assert counts == formula(50000 / C, C, imb_type, rho)
    assert counts[0] == 50000 // C
    assert counts[-1] == 50000 // C // rho


def test_counts_known_totals():
    # The training-set sizes every long-tailed CIFAR paper reports (int truncation included).
    assert img_num_per_cls(5000.0, 10, "exp", 0.01) == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    assert sum(img_num_per_cls(5000.0, 10, "exp", 0.02)) == 13996
    assert sum(img_num_per_cls(500.0, 100, "exp", 0.01)) == 10847
    assert sum(img_num_per_cls(500.0, 100, "exp", 0.02)) == 12608
    assert img_num_per_cls(5000.0, 10, "step", 0.01) == [5000] * 5 + [50] * 5


def test_subset_rules_on_stand_in_targets():
    rng = np.random.RandomState(1)
    targets = rng.permutation(np.repeat(np.arange(10), 100)).tolist()
    counts = img_num_per_cls(100, 10, "exp", 0.01)
    first = select_indices(targets, counts, "first")
    assert class_counts([targets[i] for i in first], 10) == counts
    for c in range(10):  # "first": the first n of the class in dataset order
        expected = [i for i, t in enumerate(targets) if t == c][:counts[c]]
        assert [i for i in first if targets[i] == c] == expected
    shuf = select_indices(targets, counts, "shuffle", seed=3)
    assert class_counts([targets[i] for i in shuf], 10) == counts
    assert not np.array_equal(np.sort(first), np.sort(shuf))
    assert np.array_equal(shuf, select_indices(targets, counts, "shuffle", seed=3))  # seeded
    # LDAM-DRW's construction, written out.
    np.random.seed(3)
    ldam = []
    for c, n in enumerate(counts):
        idx = np.where(np.asarray(targets) == c)[0]
        np.random.shuffle(idx)
        ldam.append(idx[:n])
    assert np.array_equal(shuf, np.concatenate(ldam))


def test_count_errors_name_the_argument():
    with pytest.raises(ValueError, match="imb_type"):
        img_num_per_cls(100, 10, "linear", 0.01)
    with pytest.raises(ValueError, match="imb_factor"):
        img_num_per_cls(100, 10, "exp", 100)
    with pytest.raises(ValueError, match="subset"):
        select_indices([0, 1], [1, 1], "random")
    with pytest.raises(ValueError, match="class 1"):
        select_indices([0, 1], [1, 2])


@pytest.mark.parametrize("imb_type,rho", [("exp", 100), ("step", 50)])
def test_imbalanced_cifar_from_torchvision_format(tmp_path, monkeypatch, imb_type, rho):
    labels = fake_cifar10(str(tmp_path), monkeypatch)
    d = build_datasets("cifar10", root=str(tmp_path), imb_type=imb_type, imb_factor=1 / rho)
    assert d.cls_num_list == formula(100, 10, imb_type, rho)
    assert class_counts(d.train.targets, 10) == d.cls_num_list
    assert len(d.test) == 50 and class_counts(d.test.targets, 10) == [5] * 10
    x, y = d.train[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y == 0
    # Default subset rule is "first" (RSG scripts): class 0's first images in file order.
    firsts = [i for i, t in enumerate(labels) if t == 0][:d.cls_num_list[0]]
    assert d.train.targets[:len(firsts)] == [0] * len(firsts)


def test_missing_cifar_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py") as err:
        build_datasets("cifar10", root=str(tmp_path / "nowhere"))
    assert str(tmp_path / "nowhere") in str(err.value) and "--download" in str(err.value)
    with pytest.raises(ValueError, match="--data-root"):
        build_datasets("cifar100")
    with pytest.raises(ValueError, match="dataset must be one of"):
        build_datasets("mnist-lt")


def test_list_file_dataset(tmp_path):
    from PIL import Image

    os.makedirs(tmp_path / "train" / "a b")
    lines = []
    for i in range(6):
        p = f"train/a b/img {i}.png"
        Image.fromarray(np.full((40, 30, 3), i * 40, dtype=np.uint8)).save(tmp_path / p)
        lines.append(f"{p} {i % 3}")
    (tmp_path / "ImageNet_LT_train.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "ImageNet_LT_test.txt").write_text("\n".join(lines[:3]) + "\n")
    d = build_datasets("imagenet-lt", root=str(tmp_path), input_size=32)
    assert d.num_classes == LIST_DATASETS["imagenet-lt"][0] and len(d.train) == 6 and len(d.test) == 3
    assert d.cls_num_list[:4] == [2, 2, 2, 0]
    x, y = d.test[1]
    assert x.shape == (3, 32, 32) and y == 1
    (tmp_path / "bad.txt").write_text("train/x.png 0\nno_label_here\n")
    with pytest.raises(ValueError, match="bad.txt:2"):
        ListFileDataset(str(tmp_path), str(tmp_path / "bad.txt"))
    (tmp_path / "negative.txt").write_text("train/x.png -1\n")
    with pytest.raises(ValueError, match=r"negative.txt:1: label -1 is negative"):   # no class count to quote
        ListFileDataset(str(tmp_path), str(tmp_path / "negative.txt"))
    with pytest.raises(ValueError, match=r"negative.txt:1: label -1 outside \[0, 4\)"):
        ListFileDataset(str(tmp_path), str(tmp_path / "negative.txt"), num_classes=4)
    with pytest.raises(FileNotFoundError, match="list file not found"):
        ListFileDataset(str(tmp_path), str(tmp_path / "missing.txt"))
    with pytest.raises(FileNotFoundError, match="image root not found"):
        build_datasets("places-lt", root=str(tmp_path / "nope"))
    # a root one folder off: the lists' paths do not start there (was a traceback at the first batch)
    with pytest.raises(FileNotFoundError, match=r"its first image 'train/a b/img 0.png' is not under the image "
                                                r"root .*/train'; set root \(--data-root\)"):
        ListFileDataset(str(tmp_path / "train"), str(tmp_path / "ImageNet_LT_train.txt"))
    # absolute paths are read as they are, whatever the root: a missing one is not a --data-root matter
    (tmp_path / "absolute.txt").write_text(f"{tmp_path / 'train/a b/img 1.png'} 1\n")
    d = ListFileDataset(str(tmp_path / "train"), str(tmp_path / "absolute.txt"))
    assert d[0][0].size == (30, 40) and d[0][1] == 1
    missing = str(tmp_path / "elsewhere" / "img.png")
    (tmp_path / "absolute.txt").write_text(f"{missing} 1\n")
    with pytest.raises(FileNotFoundError) as err:
        ListFileDataset(str(tmp_path), str(tmp_path / "absolute.txt"))
    assert f"its first image, the absolute path {missing!r}, does not exist" in str(err.value)
    assert "set root" not in str(err.value)


def test_list_files_of_absolute_paths_need_no_data_root(tmp_path):
    """Lists given with train_list / test_list whose paths are all absolute need no root (it had to be an
    existing folder, although nothing is read under it); a default list or a relative path still does."""
    from PIL import Image

    lines = []
    for i in range(4):
        path = tmp_path / "imgs" / f"{i}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(np.full((20, 20, 3), i * 60, dtype=np.uint8)).save(path)
        lines.append(f"{path} {i % 2}")
    (tmp_path / "train.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "test.txt").write_text("\n".join(lines[:2]) + "\n")
    lists = dict(train_list=str(tmp_path / "train.txt"), test_list=str(tmp_path / "test.txt"))
    d = build_datasets("places-lt", **lists, input_size=16, num_classes=2)
    assert len(d.train) == 4 and d.cls_num_list == [2, 2] and d.test[1][0].shape == (3, 16, 16)
    test, num_classes = build_test_dataset("places-lt", test_list=lists["test_list"], input_size=16, num_classes=2)
    assert len(test) == 2 and num_classes == 2 and test[0][1] == 0
    # a default list lies under the root: still required, and named with the flag that avoids it
    with pytest.raises(ValueError, match=r"root \(--data-root\) is required for places-lt.*or give test_list \(--test-list\)"):
        build_datasets("places-lt", train_list=lists["train_list"], num_classes=2)
    with pytest.raises(ValueError, match=r"root \(--data-root\) is required for places-lt.*or give train_list \(--train-list\)"):
        build_datasets("places-lt", test_list=lists["test_list"], num_classes=2)
    with pytest.raises(ValueError, match=r"root \(--data-root\) is required for places-lt.*or give test_list \(--test-list\)"):
        build_test_dataset("places-lt", num_classes=2)
    # a relative path is read under the root
    (tmp_path / "mixed.txt").write_text(f"{lines[0]}\nimgs/1.png 1\n")
    with pytest.raises(ValueError, match=r"mixed.txt: 'imgs/1.png' is relative to the image root; set root \(--data-root\)"):
        build_test_dataset("places-lt", test_list=str(tmp_path / "mixed.txt"), num_classes=2)
    test, _ = build_test_dataset("places-lt", root=str(tmp_path), test_list=str(tmp_path / "mixed.txt"),
                                 input_size=16, num_classes=2)
    assert test[1][0].shape == (3, 16, 16)


def test_synthetic_lt_is_seeded_long_tailed_and_balanced_at_test():
    d = build_datasets("synthetic-lt", seed=5)
    counts = d.cls_num_list
    assert counts == img_num_per_cls(500, 10, "exp", 0.01)
    assert any(n > 100 for n in counts) and any(20 <= n <= 100 for n in counts) and any(n < 20 for n in counts)
    assert class_counts(d.test.targets, 10) == [50] * 10
    again = build_datasets("synthetic-lt", seed=5)
    assert torch.equal(d.train.data, again.train.data) and d.train.targets == again.train.targets
    assert not torch.equal(d.train.data, build_datasets("synthetic-lt", seed=6).train.data)
    x, y = d.train[0]
    assert x.shape == (3, 16, 16) and torch.isfinite(x).all() and y == 0
    step = SyntheticLT(True, imb_type="step", imb_factor=0.1, n_max=200)
    assert step.counts == [200] * 5 + [20] * 5
    with pytest.raises(ValueError, match="image_size"):
        SyntheticLT(True, image_size=4)
