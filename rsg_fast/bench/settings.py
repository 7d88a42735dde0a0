"""The benchmark settings: RSG's shapes and the long-tailed label mix of one batch.

- ``SETTINGS``: the paper's shapes (CIFAR-10/100 after stage 2 of ResNet-32, ImageNet-LT and
  iNaturalist 2018 after stage 3 of ResNet-50) plus a hidden ``tiny`` one for tests and dry runs.
- ``label_counts``: how many samples of each class one batch holds (the exponential profile).
- ``pair_count``: how many new samples RSG makes from such a batch after the threshold.
- ``phase_epoch``: the epoch that puts RSG in its contrastive or its generation phase.

Nothing here imports torch, so ``rsg-fast bench --help`` stays quick.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

PHASES = ("contrastive", "generation")


@dataclass(frozen=True)
class Setting:
    """One benchmark shape: RSG's inputs (N x C x H x W maps, labels) and its constructor arguments."""

    name: str
    batch: int
    channels: int
    height: int
    width: int
    centers: int            # K, n_center
    dim: int                # D, contrastive_module_dim
    num_classes: int
    head_classes: tuple[int, ...]
    rho: float              # imbalance ratio of the label distribution (largest / smallest class)
    epoch_thresh: int
    transfer_strength: float = 1.0
    image_size: int | None = 32   # CIFAR images for the ResNet-32 step; None: no step rows
    where: str = ""          # where RSG sits, for the report

    @property
    def maps(self) -> tuple[int, int, int]:
        return (self.channels, self.height, self.width)

    @property
    def has_step(self) -> bool:
        """The ResNet-32 training step exists only where RSG's maps are ResNet-32's stage-2 maps."""
        return self.image_size == 32 and self.maps == (32, 16, 16)

    def describe(self) -> dict:
        """The setting as JSON-ready values (head classes compacted, maps as ``CxHxW``)."""
        d = dataclasses.asdict(self)
        d["head_classes"] = _compact_ids(self.head_classes)
        d["maps"] = "x".join(str(s) for s in self.maps)
        return d

    def to_json(self) -> dict:
        """Every field, lossless (``Setting.from_json`` rebuilds it): the memory probe's spec uses it."""
        return dataclasses.asdict(self) | {"head_classes": list(self.head_classes)}

    @classmethod
    def from_json(cls, d: dict) -> Setting:
        return cls(**(d | {"head_classes": tuple(d["head_classes"])}))

    def override(self, *, batch=None, maps=None, centers=None, dim=None, num_classes=None) -> Setting:
        """A copy with some sizes changed (name gets a suffix); head classes are re-derived as the
        first 20 % of the classes when ``num_classes`` changes."""
        changes, suffix = {}, []
        if batch is not None and batch != self.batch:
            changes["batch"] = batch
            suffix.append(f"n{batch}")
        if maps is not None and tuple(maps) != self.maps:
            changes.update(channels=maps[0], height=maps[1], width=maps[2])
            suffix.append("x".join(str(s) for s in maps))
        if centers is not None and centers != self.centers:
            changes["centers"] = centers
            suffix.append(f"k{centers}")
        if dim is not None and dim != self.dim:
            changes["dim"] = dim
            suffix.append(f"d{dim}")
        if num_classes is not None and num_classes != self.num_classes:
            changes["num_classes"] = num_classes
            changes["head_classes"] = tuple(range(max(1, int(num_classes * 0.2))))
            suffix.append(f"c{num_classes}")
        if not changes:
            return self
        return dataclasses.replace(self, name="-".join([self.name, *suffix]), **changes)


def _compact_ids(ids: Sequence[int]) -> str:
    ids = list(ids)
    if ids and ids == list(range(ids[0], ids[0] + len(ids))) and len(ids) > 3:
        return f"{ids[0]}..{ids[-1]}"
    return ",".join(str(i) for i in ids)


def _heads(num_classes: int, alpha: float = 0.2) -> tuple[int, ...]:
    """The paper's head classes: the first int(num_classes * alpha) ids (class 0 most frequent)."""
    return tuple(range(int(num_classes * alpha)))


SETTINGS: dict[str, Setting] = {
    # The paper's CIFAR setting: ResNet-32, RSG after stage 2, batch 128, K = 15, D = 256.
    "cifar10": Setting("cifar10", 128, 32, 16, 16, 15, 256, 10, _heads(10), 100.0, 159,
                       where="ResNet-32 stage 2"),
    "cifar100": Setting("cifar100", 128, 32, 16, 16, 15, 256, 100, _heads(100), 100.0, 159,
                        where="ResNet-32 stage 2"),
    # ResNet-50 before its last down-sampling layer (stage 3): 1024 x 14 x 14 maps for 224 x 224 images.
    "imagenet-lt": Setting("imagenet-lt", 256, 1024, 14, 14, 15, 256, 1000, _heads(1000), 256.0, 79,
                           image_size=None, where="ResNet-50 stage 3"),
    "inat2018": Setting("inat2018", 256, 1024, 14, 14, 15, 256, 8142, _heads(8142), 500.0, 139,
                        image_size=None, where="ResNet-50 stage 3"),
    # For tests and dry runs only (hidden from --help): CIFAR maps, a tiny batch and contrastive module.
    "tiny": Setting("tiny", 8, 32, 16, 16, 3, 16, 10, _heads(10), 10.0, 1, where="ResNet-32 stage 2"),
}
PUBLIC_SHAPES = ("cifar10", "cifar100", "imagenet-lt", "inat2018")


def phase_epoch(setting: Setting, phase: str) -> int:
    """Algorithm 1: 'contrastive' while epoch <= epoch_thresh, 'generation' after it."""
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
    return setting.epoch_thresh if phase == "contrastive" else setting.epoch_thresh + 1


def label_counts(setting: Setting) -> list[int]:
    """How many samples of each class one batch holds: the batch split over the classes in
    proportion to the exponential long-tailed profile n_i ~ rho^(-i / (classes - 1)), by largest
    remainders (deterministic), with at least one head and one tail sample so generation runs."""
    C, N = setting.num_classes, setting.batch
    weights = [setting.rho ** (-i / (C - 1)) if C > 1 else 1.0 for i in range(C)]
    total = sum(weights)
    exact = [N * w / total for w in weights]
    counts = [int(e) for e in exact]
    order = sorted(range(C), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[:N - sum(counts)]:
        counts[i] += 1
    heads = set(setting.head_classes)
    tail_ids = [i for i in range(C) if i not in heads]
    if heads and tail_ids and N >= 2:
        if sum(counts[i] for i in tail_ids) == 0:          # move one sample to the largest tail class
            donor = max(heads, key=lambda i: counts[i])
            counts[donor] -= 1
            counts[tail_ids[0]] += 1
        if sum(counts[i] for i in heads) == 0:
            donor = max(tail_ids, key=lambda i: counts[i])
            counts[donor] -= 1
            counts[min(heads)] += 1
    return counts


def pair_count(setting: Setting) -> int:
    """New samples per batch in the generation phase (the library's pairing rule)."""
    from rsg_fast.parameters import segment_plan   # the one copy of the published pairing rule

    counts = label_counts(setting)
    nh = sum(counts[i] for i in setting.head_classes)
    nt = setting.batch - nh
    if nh == 0 or nt == 0:
        return 0
    segments, pairs = segment_plan(nh, nt, setting.transfer_strength)
    return segments * pairs
