"""Classification losses and re-balancing rules used with RSG (as in LDAM-DRW, Cao et al. 2019).

- ``cross_entropy`` / ``FocalLoss`` (gamma 1 in the paper) / ``LDAMLoss`` (max margin 0.5, scale 30,
  to be used with the cosine classifier ``NormedLinear``);
- ``class_balanced_weights``: Cui et al.'s effective-number weights (beta 0.9999);
- ``TrainRule``: None, Resample, Reweight, DRW (deferred re-weighting) and DRS (deferred re-sampling),
  giving per epoch the loss weights and whether to sample class-balanced.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

LOSS_TYPES = ("CE", "Focal", "LDAM")
TRAIN_RULES = ("None", "Resample", "Reweight", "DRW", "DRS")


def _check_counts(cls_num_list: Sequence[int]) -> list[int]:
    counts = [int(n) for n in cls_num_list]
    if not counts or min(counts) < 1:
        raise ValueError(f"cls_num_list must hold a positive count for every class, got {list(cls_num_list)!r}")
    return counts


class NormedLinear(nn.Module):
    """Cosine classifier: logits = normalize(x) @ normalize(W) (columns), in [-1, 1]; LDAM scales them by s."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(in_features, out_features))
        # LDAM-DRW's initialisation: uniform, then every column renormed to unit length.
        self.weight.data.uniform_(-1, 1).renorm_(2, 1, 1e-5).mul_(1e5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1).mm(F.normalize(self.weight, dim=0))


class FocalLoss(nn.Module):
    """Focal loss as LDAM-DRW implements it (the code RSG's numbers come from):
    ce = cross_entropy(x, y, weight, reduction='none'); p = exp(-ce); loss = mean((1 - p)^gamma * ce).
    Without weights p is the true-class probability, giving the textbook -(1 - p)^gamma log p."""

    def __init__(self, weight: torch.Tensor | None = None, gamma: float = 1.0):
        super().__init__()
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma!r}")
        self.gamma = float(gamma)
        self.weight = weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        ce = F.cross_entropy(logits, target, weight=self.weight, reduction="none")
        p = torch.exp(-ce)
        return ((1 - p) ** self.gamma * ce).mean()


class LDAMLoss(nn.Module):
    """Label-distribution-aware margin loss: subtract m_y = C / n_y^(1/4) (largest margin = max_m) from the
    true-class logit, scale by s, cross-entropy (optionally weighted, e.g. by DRW)."""

    def __init__(self, cls_num_list: Sequence[int], max_m: float = 0.5, weight: torch.Tensor | None = None,
                 s: float = 30.0):
        super().__init__()
        counts = _check_counts(cls_num_list)
        if max_m <= 0 or s <= 0:
            raise ValueError(f"max_m and s must be positive, got max_m={max_m!r}, s={s!r}")
        m = 1.0 / np.sqrt(np.sqrt(np.asarray(counts, dtype=np.float64)))
        m = m * (max_m / m.max())
        self.register_buffer("m_list", torch.tensor(m, dtype=torch.float32), persistent=False)
        self.s = float(s)
        self.weight = weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        margin = self.m_list.to(logits.device, logits.dtype)[target]
        onehot = F.one_hot(target, logits.shape[1]).to(torch.bool)
        adjusted = torch.where(onehot, logits - margin[:, None], logits)
        return F.cross_entropy(self.s * adjusted, target, weight=self.weight)


class CrossEntropy(nn.Module):
    def __init__(self, weight: torch.Tensor | None = None):
        super().__init__()
        self.weight = weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, target, weight=self.weight)


def class_balanced_weights(cls_num_list: Sequence[int], beta: float = 0.9999) -> torch.Tensor:
    """Cui et al.: w_c = (1 - beta) / (1 - beta^n_c), normalised to sum to the number of classes.
    beta = 0 gives all-ones weights."""
    counts = _check_counts(cls_num_list)
    if not 0 <= beta < 1:
        raise ValueError(f"beta must be in [0, 1), got {beta!r}")
    effective = 1.0 - np.power(beta, np.asarray(counts, dtype=np.float64))
    w = (1.0 - beta) / effective
    w = w / w.sum() * len(counts)
    return torch.tensor(w, dtype=torch.float32)


def build_loss(loss_type: str, cls_num_list: Sequence[int], *, focal_gamma: float = 1.0, ldam_max_m: float = 0.5,
               ldam_s: float = 30.0) -> nn.Module:
    """A loss whose ``.weight`` the training loop sets each epoch (None or per-class weights)."""
    if loss_type == "CE":
        return CrossEntropy()
    if loss_type == "Focal":
        return FocalLoss(gamma=focal_gamma)
    if loss_type == "LDAM":
        return LDAMLoss(cls_num_list, max_m=ldam_max_m, s=ldam_s)
    raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")


class TrainRule:
    """Per-epoch loss weights and sampling of a re-balancing rule.

    None: plain; Reweight: class-balanced weights throughout; Resample: class-balanced sampling
    throughout; DRW: plain until ``defer_epoch``, then class-balanced weights; DRS: plain until
    ``defer_epoch``, then class-balanced sampling. Epochs count from 0, so with defer_epoch = 160
    the switch happens at the 161st epoch, as LDAM-DRW's ``epoch // 160``.
    """

    def __init__(self, rule: str, cls_num_list: Sequence[int], defer_epoch: int = 160, beta: float = 0.9999):
        if rule not in TRAIN_RULES:
            raise ValueError(f"train_rule must be one of {TRAIN_RULES}, got {rule!r}")
        if defer_epoch < 0:
            raise ValueError(f"defer_epoch must be >= 0, got {defer_epoch!r}")
        self.rule, self.counts, self.defer_epoch, self.beta = rule, _check_counts(cls_num_list), defer_epoch, beta

    def weights(self, epoch: int) -> torch.Tensor | None:
        if self.rule == "Reweight" or (self.rule == "DRW" and epoch >= self.defer_epoch):
            return class_balanced_weights(self.counts, self.beta)
        return None

    def balanced_sampling(self, epoch: int) -> bool:
        return self.rule == "Resample" or (self.rule == "DRS" and epoch >= self.defer_epoch)


def paper_lr(epoch: int, base_lr: float, warmup_epochs: int, milestones: Sequence[int],
             factors: Sequence[float]) -> float:
    """The CIFAR schedule of LDAM-DRW / RSG (epochs from 0): linear warm-up to base_lr over the first
    ``warmup_epochs`` epochs, then base_lr * factors[i] from epoch milestones[i] on (the largest passed)."""
    if epoch < warmup_epochs:
        return base_lr * (epoch + 1) / warmup_epochs
    lr = base_lr
    for m, f in zip(milestones, factors):
        if epoch >= m:
            lr = base_lr * f
    return lr


__all__ = ["LOSS_TYPES", "TRAIN_RULES", "CrossEntropy", "FocalLoss", "LDAMLoss", "NormedLinear", "TrainRule",
           "build_loss", "class_balanced_weights", "paper_lr"]
