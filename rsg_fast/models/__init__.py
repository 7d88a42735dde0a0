"""Models with RSG inserted: CIFAR ResNets (RSG after stage 2, as in the paper) and torchvision
ResNet/ResNeXt at a chosen stage. ``build_model`` picks by name; ``plain=True`` (``rsg=None``) gives
the backbone that RSG-free inference checkpoints load into."""
from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch.nn as nn

from rsg_fast.models.cifar_resnet import CifarResNet, resnet32, resnet56, resnet110
from rsg_fast.models.common import RSG_OPTIONS, RSG_PREFIX, RSGModelMixin
from rsg_fast.models.torchvision_rsg import TORCHVISION_ARCHS, TorchvisionRSG, torchvision_backbone

CIFAR_ARCHS = ("resnet8", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110")
ARCHS = CIFAR_ARCHS + TORCHVISION_ARCHS

__all__ = ["ARCHS", "CIFAR_ARCHS", "TORCHVISION_ARCHS", "RSG_OPTIONS", "RSG_PREFIX", "CifarResNet",
           "RSGModelMixin", "TorchvisionRSG", "build_model", "default_rsg_stage", "resnet32", "resnet56",
           "resnet110", "torchvision_backbone"]


def default_rsg_stage(arch: str) -> int:
    """Where the paper puts RSG: before the last down-sampling (CIFAR: after stage 2; torchvision: after layer3)."""
    return 2 if arch in CIFAR_ARCHS else 3


def build_model(arch: str, num_classes: int, *, rsg: dict[str, Any] | None = None, rsg_stage: int | None = None,
                use_norm: bool = False, head_classes: Sequence[int] = (), input_size: int | None = None) -> nn.Module:
    """``arch`` from ``ARCHS``; ``rsg`` None builds the plain network (same keys, minus ``rsg.*``)."""
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
    stage = default_rsg_stage(arch) if rsg_stage is None else rsg_stage
    if arch in CIFAR_ARCHS:
        depth = int(re.fullmatch(r"resnet(\d+)", arch).group(1))
        return CifarResNet(depth, num_classes, use_norm=use_norm, rsg=rsg, rsg_stage=stage,
                           head_classes=head_classes, input_size=input_size or 32)
    return TorchvisionRSG(arch, num_classes, use_norm=use_norm, rsg=rsg, rsg_stage=stage,
                          head_classes=head_classes, input_size=input_size or 224)
