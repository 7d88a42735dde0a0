"""The parameters ``RSG`` and ``ReferenceRSG`` share: the published constructor, parameter names,
shapes and initialisation (so a published state_dict loads into either with ``strict=True``), the
phase rule and the published pairing rule.

Constructor: ``RSG(n_center=3, feature_maps_shape=[32, 16, 16], num_classes=10,
contrastive_module_dim=128, head_class_lists=[], transfer_strength=1.0, epoch_thresh=100)``, plus the
keyword-only ``mv_loss`` ("original", default: the published code's Eq. 6 grouping; "paper": Eq. 6
per spatial location), ``validate`` and ``check_finite``.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from rsg_fast._validation import check_constructor, check_head_classes


def segment_plan(n_head: int, n_tail: int, transfer_strength: float) -> tuple[int, int]:
    """The published pairing rule: (number of segments, pairs per segment), for nh, nt >= 1.

    With nh >= nt each segment pairs nt consecutive heads with all tails, else all heads with
    nh consecutive tails; segment = max(1, int(beta * larger / smaller)), so
    s_new = segment * min(nh, nt) (the paper's s_new = max(floor(beta s_freq / s_rare), 1) s_rare
    when heads outnumber tails).
    """
    if n_head >= n_tail:
        return max(1, int(n_head * transfer_strength / n_tail)), n_tail
    return max(1, int(n_tail * transfer_strength / n_head)), n_head


class RSGParameters(nn.Module):
    """The published RSG's constructor and parameters (names, shapes, initialisation).

    Shared by ``ReferenceRSG`` and ``RSG`` so that a published state_dict loads into either with
    ``strict=True``. ``head_class_lists`` given here is stored but, as in the published code, the
    one passed to ``forward`` is used (``forward`` falls back to it when given ``None``).
    """

    def __init__(self, n_center=3, feature_maps_shape=[32, 16, 16], num_classes=10,  # noqa: B006 (published API)
                 contrastive_module_dim=128, head_class_lists=[], transfer_strength=1.0,  # noqa: B006
                 epoch_thresh=100, *, mv_loss="original", validate=True, check_finite=False):
        super().__init__()
        (C, H, W), heads = check_constructor(n_center, feature_maps_shape, num_classes, contrastive_module_dim,
                                             head_class_lists, transfer_strength, epoch_thresh, mv_loss,
                                             validate, check_finite)
        self.n_center = int(n_center)
        self.feature_maps_shape = [C, H, W]
        self.num_classes = int(num_classes)
        self.contrastive_module_dim = D = int(contrastive_module_dim)
        self.head_class_lists = list(heads)
        self.transfer_strength = float(transfer_strength)
        self.epoch_thresh = epoch_thresh
        self.mv_loss = mv_loss
        self.validate = bool(validate)
        self.check_finite = bool(check_finite)

        # Centre estimation module (Eq. 1): A_l = linear[l] (C x K), b_l = bias[l]; centres C_l^i.
        self.linear = nn.Parameter(torch.randn(num_classes, C, n_center))
        self.bias = nn.Parameter(torch.ones(num_classes, n_center))
        self.centers = nn.Parameter(torch.zeros(num_classes, n_center, C))
        # Vector transformation module T (Eq. 4): one 3x3 convolution, C -> C.
        self.vec_transformation_module = nn.Sequential(nn.Conv2d(C, C, kernel_size=3, padding=1, bias=True))
        # Contrastive module h (Eq. 2), as in the published code: 1x1 conv, ReLU, 3x3 conv, then
        # average pooling and the linear layer A*, b* (contrastive_fc).
        self.contrastive_module = nn.Sequential(
            nn.Conv2d(2 * C, D, kernel_size=1, bias=True),
            nn.ReLU(),
            nn.Conv2d(D, D, kernel_size=3, padding=1, bias=True),
        )
        self.contrastive_fc = nn.Linear(D, 2)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.contrastive_fc.weight)
        nn.init.zeros_(self.contrastive_fc.bias)

    # -- helpers shared by both modules -------------------------------------------------------
    def _phase_is_generation(self, epoch) -> bool:
        """Algorithm 1: contrastive training while epoch <= epoch_thresh, generation after it."""
        return epoch > self.epoch_thresh      # exact for any int (float() overflows above 1e308)

    def _head_classes(self, head_class_lists) -> tuple[int, ...]:
        # None: the module's list, checked here too, since it is a public attribute a caller may have
        # set after construction (a class id past num_classes would otherwise be silently ignored)
        if head_class_lists is None:
            head_class_lists = self.head_class_lists
        if torch.compiler.is_compiling() or type(head_class_lists) not in (list, tuple):
            return check_head_classes(head_class_lists, self.num_classes)
        # eager, plain ints: each distinct list checked once (a list of 1,629 heads, iNaturalist's at a
        # ratio of 0.2, took about 1 ms of every call), the last 16 kept
        key = tuple(head_class_lists)
        if not all(type(c) is int for c in key):
            return check_head_classes(key, self.num_classes)
        checked = self.__dict__.setdefault("_checked_heads", {})
        heads = checked.get(key)
        if heads is None:
            heads = check_head_classes(key, self.num_classes)
            if len(checked) >= 16:
                checked.clear()
            checked[key] = heads
        return heads

    def _segments(self, n_head: int, n_tail: int) -> tuple[int, int]:
        return segment_plan(n_head, n_tail, self.transfer_strength)

    def extra_repr(self) -> str:
        C, H, W = self.feature_maps_shape
        return (f"n_center={self.n_center}, feature_maps_shape=({C}, {H}, {W}), num_classes={self.num_classes}, "
                f"contrastive_module_dim={self.contrastive_module_dim}, transfer_strength={self.transfer_strength}, "
                f"epoch_thresh={self.epoch_thresh}, mv_loss={self.mv_loss!r}")
