"""Per-class counts and subsets of the usual long-tailed CIFAR construction (LDAM-DRW / RSG scripts)."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

IMB_TYPES = ("exp", "step")
SUBSET_RULES = ("first", "shuffle")
# The RSG scripts take the first n images of each class (their shuffle is commented out); we follow
# them by default, since RSG's published numbers came from those subsets.
DEFAULT_SUBSET = "first"


def img_num_per_cls(n_max: float, num_classes: int, imb_type: str = "exp", imb_factor: float = 0.01) -> list[int]:
    """Training images per class, exactly as the published scripts compute them.

    exp:  n_i = int(n_max * imb_factor ** (i / (C - 1)))      (imb_factor = 1 / rho)
    step: int(n_max) for the first C // 2 classes, int(n_max * imb_factor) for the rest.
    ``int()`` truncates, as in the scripts (CIFAR-10, rho = 100, exp: 5000, 2997, ..., 50).
    """
    if not isinstance(num_classes, (int, np.integer)) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if imb_type not in IMB_TYPES:
        raise ValueError(f"imb_type must be one of {IMB_TYPES}, got {imb_type!r}")
    if not (isinstance(imb_factor, (int, float)) and 0 < imb_factor <= 1):
        raise ValueError(f"imb_factor (1/rho) must be in (0, 1], got {imb_factor!r}")
    if not n_max > 0:
        raise ValueError(f"n_max must be positive, got {n_max!r}")
    if imb_type == "exp":
        if num_classes == 1:
            return [int(n_max)]
        return [int(n_max * imb_factor ** (i / (num_classes - 1.0))) for i in range(num_classes)]
    half = num_classes // 2
    return [int(n_max)] * half + [int(n_max * imb_factor)] * (num_classes - half)


def select_indices(targets: Sequence[int], counts: Sequence[int], subset: str = DEFAULT_SUBSET,
                   seed: int = 0) -> np.ndarray:
    """Indices of the long-tailed subset: ``counts[c]`` images of each class c.

    subset="first": the first counts[c] images of class c in dataset order (RSG scripts).
    subset="shuffle": ``np.random.seed(seed)``, then each class's indices are shuffled with
    ``np.random.shuffle`` in class order before taking the first counts[c] (LDAM-DRW, BBN).
    Returned in class order, as both scripts build them.
    """
    if subset not in SUBSET_RULES:
        raise ValueError(f"subset must be one of {SUBSET_RULES}, got {subset!r}")
    targets_np = np.asarray(targets, dtype=np.int64)
    if subset == "shuffle":
        np.random.seed(seed)  # the scripts seed numpy's global RNG; kept so the subsets match theirs
    chosen = []
    for c, n in enumerate(counts):
        idx = np.where(targets_np == c)[0]
        if n > len(idx):
            raise ValueError(f"class {c} has {len(idx)} images but the imbalance asks for {n}")
        if subset == "shuffle":
            np.random.shuffle(idx)
        chosen.append(idx[:n])
    return np.concatenate(chosen) if chosen else np.zeros(0, dtype=np.int64)


def class_counts(targets: Sequence[int], num_classes: int) -> list[int]:
    """Number of samples of each class id in ``targets``."""
    return np.bincount(np.asarray(targets, dtype=np.int64), minlength=num_classes)[:num_classes].tolist()


def imbalance_subset(data: np.ndarray, targets, num_classes: int, imb_type: str, imb_factor: float,
                     subset: str = DEFAULT_SUBSET, seed: int = 0) -> tuple[np.ndarray, list[int], list[int]]:
    """(data, targets, per-class counts) of the long-tailed subset; n_max = len(data) / num_classes."""
    counts = img_num_per_cls(len(data) / num_classes, num_classes, imb_type, imb_factor)
    idx = select_indices(targets, counts, subset, seed)
    return data[idx], [int(targets[i]) for i in idx], counts
