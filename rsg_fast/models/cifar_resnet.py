"""CIFAR ResNets (He et al. 2016, option-A shortcuts), as LDAM-DRW and RSG used them, with RSG
optionally after one stage (the paper: after stage 2, 32 x 16 x 16 maps for 32 x 32 inputs)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from rsg_fast.losses import NormedLinear
from rsg_fast.models.common import RSGModelMixin


class _PadShortcut(nn.Module):
    """Option A: subsample by 2 and zero-pad the new channels (no parameters)."""

    def __init__(self, planes: int):
        super().__init__()
        self.pad = planes // 4

    def forward(self, x):
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _PadShortcut(planes) if stride != 1 or in_planes != planes else nn.Identity()

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(RSGModelMixin, nn.Module):
    """ResNet-(6n+2) for 32 x 32 inputs: 16/32/64 channels in three stages of n blocks.

    rsg: None for the plain network, else a dict of RSG options (n_center, contrastive_module_dim,
    transfer_strength, epoch_thresh, mv_loss, backend, ...); RSG runs after stage ``rsg_stage`` and
    its feature-map shape is inferred from ``input_size``. use_norm: cosine classifier (for LDAM).
    """

    classifier_name = "linear"      # the last layer, whose shape follows the class count

    def __init__(self, depth: int = 32, num_classes: int = 10, *, use_norm: bool = False,
                 rsg: dict[str, Any] | None = None, rsg_stage: int = 2, head_classes: Sequence[int] = (),
                 input_size: int = 32):
        super().__init__()
        if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
            raise ValueError(f"depth must be 6n + 2 (8, 20, 32, 44, 56, 110, ...), got {depth!r}")
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
        if rsg_stage not in (1, 2, 3):
            raise ValueError(f"rsg_stage must be 1, 2 or 3 for a CIFAR ResNet, got {rsg_stage!r}")
        n = (depth - 2) // 6
        self.depth, self.num_classes, self.rsg_stage = depth, num_classes, rsg_stage
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._stage(16, 16, n, 1)
        self.layer2 = self._stage(16, 32, n, 2)
        self.layer3 = self._stage(32, 64, n, 2)
        self.linear = NormedLinear(64, num_classes) if use_norm else nn.Linear(64, num_classes)
        for m in self.modules():  # LDAM-DRW's initialisation, applied before RSG exists (RSG keeps its own)
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                nn.init.kaiming_normal_(m.weight)
        self.set_head_classes(head_classes)
        self.rsg = None
        if rsg is not None:
            self._make_rsg(input_size, rsg)

    @staticmethod
    def _stage(in_planes: int, planes: int, n: int, stride: int) -> nn.Sequential:
        blocks = [BasicBlock(in_planes, planes, stride)] + [BasicBlock(planes, planes) for _ in range(n - 1)]
        return nn.Sequential(*blocks)

    def _rsg_stem(self) -> nn.Module:
        layers = [self.conv1, self.bn1, nn.ReLU(), self.layer1, self.layer2, self.layer3][:3 + self.rsg_stage]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, target: torch.Tensor | None = None, epoch=None, *,
                host_target: torch.Tensor | None = None):
        epoch = self._check_rsg_inputs(x, target, epoch, host_target)   # before any BatchNorm moves
        out = F.relu(self.bn1(self.conv1(x)))
        extra = None
        for i, layer in enumerate((self.layer1, self.layer2, self.layer3), 1):
            out = layer(out)
            if i == self.rsg_stage:
                out, extra = self._rsg_step(out, target, epoch, host_target)
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self._finish(self.linear(out), extra)


def resnet32(num_classes: int = 10, **kwargs) -> CifarResNet:
    """CIFAR ResNet-32; without ``rsg=...`` a plain network whose ``model(x)`` returns logits."""
    return CifarResNet(32, num_classes, **kwargs)


def resnet56(num_classes: int = 10, **kwargs) -> CifarResNet:
    return CifarResNet(56, num_classes, **kwargs)


def resnet110(num_classes: int = 10, **kwargs) -> CifarResNet:
    return CifarResNet(110, num_classes, **kwargs)
