"""RSG inside a torchvision ResNet / ResNeXt (resnet50, resnext50_32x4d, resnet152, ...), built with
``weights=None`` (never downloads). The wrapper registers torchvision's own children under their own
names, so without RSG's keys the state dict is exactly torchvision's and loads into it strictly."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn

from rsg_fast.losses import NormedLinear
from rsg_fast.models.common import RSGModelMixin

TORCHVISION_ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
                     "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2")


def torchvision_backbone(arch: str, num_classes: int, use_norm: bool = False) -> nn.Module:
    """The plain torchvision network (random init), with the cosine classifier when ``use_norm``."""
    import torchvision.models as tvm

    if arch not in TORCHVISION_ARCHS:
        raise ValueError(f"arch must be one of {TORCHVISION_ARCHS} for a torchvision model, got {arch!r}")
    net = getattr(tvm, arch)(weights=None, num_classes=num_classes)
    if use_norm:
        net.fc = NormedLinear(net.fc.in_features, num_classes)
    return net


class TorchvisionRSG(RSGModelMixin, nn.Module):
    """A torchvision ResNet-family network with RSG after ``layer{rsg_stage}`` (1-3; default 3, the
    last stage before the final down-sampling, as with stage 2 of the CIFAR ResNets). The RSG feature
    shape is inferred for ``input_size`` x ``input_size`` inputs (RSG needs that exact map size)."""

    classifier_name = "fc"          # the last layer, whose shape follows the class count

    def __init__(self, arch: str = "resnet50", num_classes: int = 1000, *, use_norm: bool = False,
                 rsg: dict[str, Any] | None = None, rsg_stage: int = 3, head_classes: Sequence[int] = (),
                 input_size: int = 224):
        super().__init__()
        if rsg_stage not in (1, 2, 3):
            raise ValueError(f"rsg_stage must be 1, 2 or 3 (after layer1..layer3), got {rsg_stage!r}")
        net = torchvision_backbone(arch, num_classes, use_norm)
        for name, child in net.named_children():  # same names as torchvision: conv1, bn1, ..., layer4, fc
            self.add_module(name, child)
        self.arch, self.num_classes, self.rsg_stage = arch, num_classes, rsg_stage
        self.set_head_classes(head_classes)
        self.rsg = None
        if rsg is not None:
            self._make_rsg(input_size, rsg)

    def _rsg_stem(self) -> nn.Module:
        return nn.Sequential(self.conv1, self.bn1, self.relu, self.maxpool,
                             *[getattr(self, f"layer{i}") for i in range(1, self.rsg_stage + 1)])

    def forward(self, x: torch.Tensor, target: torch.Tensor | None = None, epoch=None, *,
                host_target: torch.Tensor | None = None):
        epoch = self._check_rsg_inputs(x, target, epoch, host_target)   # before any BatchNorm moves
        out = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        extra = None
        for i in range(1, 5):
            out = getattr(self, f"layer{i}")(out)
            if i == self.rsg_stage:
                out, extra = self._rsg_step(out, target, epoch, host_target)
        out = torch.flatten(self.avgpool(out), 1)
        return self._finish(self.fc(out), extra)
