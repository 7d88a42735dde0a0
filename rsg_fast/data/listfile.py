"""ImageNet-LT, Places-LT and iNaturalist 2018: an image root plus ``relative/path label`` list files."""
from __future__ import annotations

import os

from torch.utils.data import Dataset

from rsg_fast.data.normalize import ImageNormalize, to_hwc_uint8

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_NORMALIZE = ImageNormalize(IMAGENET_MEAN, IMAGENET_STD)

# name -> (number of classes, default train list, default test list), the files of the usual releases
# (Liu et al. OLTR for ImageNet-LT / Places-LT, Kang et al. for iNaturalist 2018).
LIST_DATASETS = {
    "imagenet-lt": (1000, "ImageNet_LT_train.txt", "ImageNet_LT_test.txt"),
    "places-lt": (365, "Places_LT_train.txt", "Places_LT_test.txt"),
    "inat2018": (8142, "iNaturalist18_train.txt", "iNaturalist18_val.txt"),
}


def read_list_file(list_file: str, num_classes: int | None = None) -> tuple[list[str], list[int]]:
    """Parse ``path label`` lines (blank lines ignored); errors name the file and line."""
    if not os.path.isfile(list_file):
        raise FileNotFoundError(f"list file not found: {os.path.abspath(list_file)!r}")
    paths, labels = [], []
    with open(list_file, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.rsplit(maxsplit=1)  # paths may hold spaces; the label is the last field
            try:
                path, label = parts[0].strip(), int(parts[1])
            except (IndexError, ValueError):
                raise ValueError(f"{list_file}:{lineno}: expected 'path label', got {line.rstrip()!r}") from None
            if label < 0 or (num_classes is not None and label >= num_classes):
                allowed = f"outside [0, {num_classes})" if num_classes is not None else "is negative"
                raise ValueError(f"{list_file}:{lineno}: label {label} {allowed}")
            paths.append(path)
            labels.append(label)
    if not paths:
        raise ValueError(f"list file {list_file!r} holds no samples")
    return paths, labels


def imagenet_transforms(train: bool, size: int = 224, *, uint8: bool = False):
    """Random-resized crop + flip (+ colour jitter, as in Kang et al.) for training; resize + centre crop for
    test; then ToTensor + Normalize, or with ``uint8`` the (H, W, 3) uint8 pixels ToTensor would read
    (``IMAGENET_NORMALIZE`` finishes a batch of them with the same values)."""
    import torchvision.transforms as T

    norm = [to_hwc_uint8] if uint8 else [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    if train:
        return T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(),
                          T.ColorJitter(0.4, 0.4, 0.4, 0), *norm])
    return T.Compose([T.Resize(int(round(size * 256 / 224))), T.CenterCrop(size), *norm])


class ListFileDataset(Dataset):
    """Images under ``root`` listed in ``list_file`` as ``relative/path label`` (an absolute path is read
    as it is; a list of absolute paths alone needs no ``root``: None). ``device_transform``, when given,
    finishes each batch where the model runs (``LoaderOnDevice`` calls ``device_transform(images,
    memory_format)`` on the collated batch): ``transform`` then ends in uint8 pixels, e.g.
    ``imagenet_transforms(..., uint8=True)`` with ``IMAGENET_NORMALIZE``."""

    def __init__(self, root: str | None, list_file: str, transform=None, num_classes: int | None = None,
                 device_transform: ImageNormalize | None = None):
        self.paths, self.targets = read_list_file(list_file, num_classes)
        relative = next((p for p in self.paths if not os.path.isabs(p)), None)
        if relative is not None:   # string tests only: a list of absolute paths never reads under the root
            if root is None:
                raise ValueError(f"{list_file}: {relative!r} is relative to the image root; set root (--data-root)")
            _check_root(root)
        self.root = root or ""     # os.path.join("", path) is the absolute path itself
        self.transform, self.device_transform = transform, device_transform
        # one look at the first image catches the usual mistake, a --data-root one folder off, now
        # rather than as a traceback at the first batch (checking every image would cost a pass)
        first = self.paths[0]
        if os.path.isabs(first):   # read as it is (os.path.join drops the root): --data-root cannot help
            if not os.path.isfile(first):
                raise FileNotFoundError(f"{list_file}: its first image, the absolute path {first!r}, does not "
                                        "exist; absolute paths are read as they are, not under root (--data-root)")
        elif not os.path.isfile(os.path.join(root, first)):
            raise FileNotFoundError(f"{list_file}: its first image {first!r} is not under the image root "
                                    f"{os.path.abspath(root)!r}; set root (--data-root) to the folder its paths start from")

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i):
        from PIL import Image

        with Image.open(os.path.join(self.root, self.paths[i])) as im:
            img = im.convert("RGB")
        if self.transform is not None:
            img = self.transform(img)
        return img, self.targets[i]


def _check_root(root: str) -> None:
    if not os.path.isdir(root):
        raise FileNotFoundError(f"image root not found: {os.path.abspath(root)!r} (set root (--data-root))")


def _list_under_root(name: str, root: str | None, given: str | None, default: str, flag: str) -> str:
    """The list file: ``given``, else the usual name ``default`` under ``root`` (which must then exist)."""
    if given:   # an empty --train-list / --test-list means the usual name
        return given
    if root is None:
        raise ValueError(f"root (--data-root) is required for {name}: the image root, which holds its {default} "
                         f"(or give {flag})")
    _check_root(root)
    return os.path.join(root, default)


def _classes_and_lists(name: str, num_classes: int | None) -> tuple[int, str, str]:
    if name not in LIST_DATASETS:
        raise ValueError(f"dataset must be one of {sorted(LIST_DATASETS)}, got {name!r}")
    default_classes, default_train, default_test = LIST_DATASETS[name]
    return num_classes or default_classes, default_train, default_test


def _list_dataset(root: str | None, list_file: str, train: bool, size: int, num_classes: int,
                  normalize_on_device: bool) -> ListFileDataset:
    return ListFileDataset(root, list_file, imagenet_transforms(train, size, uint8=normalize_on_device), num_classes,
                           IMAGENET_NORMALIZE if normalize_on_device else None)


def list_test_dataset(name: str, root: str | None, test_list: str | None = None, size: int = 224,
                      num_classes: int | None = None, *, normalize_on_device: bool = False):
    """(test, num_classes) of one of LIST_DATASETS alone, for evaluating a trained model: the training
    list and its images are not read. Defaults as ``list_datasets``."""
    num_classes, _, default_test = _classes_and_lists(name, num_classes)
    test_list = _list_under_root(name, root, test_list, default_test, "test_list (--test-list)")
    return _list_dataset(root, test_list, False, size, num_classes, normalize_on_device), num_classes


def list_datasets(name: str, root: str | None, train_list: str | None = None, test_list: str | None = None,
                  size: int = 224, augment: bool = True, num_classes: int | None = None, *,
                  normalize_on_device: bool = False):
    """(train, test, num_classes) for one of LIST_DATASETS; list files default to ``root/<usual name>``;
    ``num_classes`` defaults to the dataset's (1000, 365, 8142). ``root`` may be None when both lists
    are given and hold absolute paths only. With ``normalize_on_device`` the images are (H, W, 3) uint8
    and each dataset's ``device_transform`` scales and normalises a batch of them (``LoaderOnDevice``)."""
    num_classes, default_train, _ = _classes_and_lists(name, num_classes)
    train_list = _list_under_root(name, root, train_list, default_train, "train_list (--train-list)")
    train = _list_dataset(root, train_list, augment, size, num_classes, normalize_on_device)
    test, _ = list_test_dataset(name, root, test_list, size, num_classes, normalize_on_device=normalize_on_device)
    return train, test, num_classes
