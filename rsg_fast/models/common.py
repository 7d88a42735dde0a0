"""What every RSG-carrying model shares: building RSG with an inferred feature-map shape, the
training forward contract, and RSG-free inference state dicts."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn

from rsg_fast._validation import (check_epoch, check_head_classes, check_host_target, check_target,
                                  raise_for_labels, raise_if_labels_differ)

RSG_PREFIX = "rsg."

# RSG's own options a model passes through (everything but the shape and class count it infers).
RSG_OPTIONS = ("n_center", "contrastive_module_dim", "transfer_strength", "epoch_thresh", "mv_loss", "backend",
               "validate", "check_finite")


def make_rsg(feature_shape: Sequence[int], num_classes: int, head_classes: Sequence[int],
             options: dict[str, Any]) -> nn.Module:
    unknown = set(options) - set(RSG_OPTIONS)
    if unknown:
        raise TypeError(f"unknown RSG option(s) {sorted(unknown)}; expected some of {RSG_OPTIONS}")
    import rsg_fast

    return rsg_fast.RSG(feature_maps_shape=[int(s) for s in feature_shape], num_classes=num_classes,
                        head_class_lists=list(head_classes), **options)


class RSGModelMixin:
    """Models that may carry ``self.rsg`` after one stage.

    ``model(x)`` returns logits (RSG never runs). ``model(x, target, epoch)`` returns
    ``(logits, target_out, loss_cesc, loss_mv)``: in training mode RSG runs at its stage and may append
    generated rare-class samples, so ``target_out`` (N + n_new labels) is what the classifier loss must
    use; in eval mode, or without RSG, ``target_out`` is ``target`` and both losses are zero.
    ``model(x, target, epoch, host_target=labels_on_cpu)`` passes RSG the labels the DataLoader gave
    before they went to the GPU, so RSG's forward needs no device-to-host synchronisation.
    """

    rsg: nn.Module | None
    head_classes: list[int]
    rsg_input_size: int          # the image size RSG's feature-map shape was inferred for

    def _rsg_stem(self) -> nn.Module:
        """Everything before RSG, as one module (for the shape inference)."""
        raise NotImplementedError

    def _make_rsg(self, input_size: int, rsg: dict[str, Any]) -> None:
        self.rsg_input_size = input_size
        self._rsg_map_shapes: dict[tuple[int, int], tuple[int, int, int]] = {}   # other input sizes seen
        self.rsg = make_rsg(infer_shape(self._rsg_stem(), input_size), self.num_classes, self.head_classes,
                            dict(rsg))

    def _check_rsg_map_size(self, x: torch.Tensor) -> None:
        """RSG takes maps of the one shape it was built for. Images of another size may still give
        it (e.g. 223 x 223 gives what 224 x 224 does in a torchvision ResNet): the stages before RSG
        are run once per new size, in eval mode without gradients, to find out; an input that gives
        other maps is rejected here, naming ``input_size``, rather than by RSG after them."""
        size = (int(x.shape[2]), int(x.shape[3]))
        if size == (self.rsg_input_size, self.rsg_input_size) or x.shape[1] != 3:
            return                   # the size built for; a bad channel count fails in the first layer
        if size not in self._rsg_map_shapes:
            self._rsg_map_shapes[size] = infer_shape(self._rsg_stem(), size)
        got, expect = self._rsg_map_shapes[size], tuple(self.rsg.feature_maps_shape)
        if got != expect:
            raise ValueError(f"x holds {size[0]} x {size[1]} images, which give RSG {got[0]} x {got[1]} x {got[2]} "
                             f"feature maps; the model was built for input_size={self.rsg_input_size}, "
                             f"which gives {expect[0]} x {expect[1]} x {expect[2]}: train at that size, or build "
                             f"the model for the size you train at")

    def _check_rsg_inputs(self, x: torch.Tensor, target: torch.Tensor | None, epoch, host_target=None):
        """Before the first layer: what RSG would reject after the stages before it, whose BatchNorm
        layers would already have moved their running statistics. The label range only where it costs
        no device synchronisation (labels on the CPU, or ``host_target``), and not under torch.compile
        (there RSG's asynchronous assert checks it). Returns the epoch as a number (read once)."""
        if target is None or self.rsg is None or not self.training:
            return epoch
        if epoch is None:
            raise ValueError("epoch is required when training with RSG: model(x, target, epoch)")
        check_target(target, x, "x")
        epoch = check_epoch(epoch)
        if not torch.compiler.is_compiling() and x.dim() == 4:
            self._check_rsg_map_size(x)
        labels = target if host_target is None else check_host_target(host_target, target)
        if (not torch.compiler.is_compiling() and self.rsg.validate and labels.device.type == "cpu"
                and labels.numel()):
            if host_target is not None and target.device.type == "cpu":
                raise_if_labels_differ(target, labels)
            raise_for_labels(int(labels.min()), int(labels.max()), self.rsg.num_classes)
        return epoch

    def _rsg_step(self, feats: torch.Tensor, target: torch.Tensor | None, epoch, host_target=None):
        if target is None:
            return feats, None
        if self.rsg is not None and self.training:
            extras = {} if host_target is None else {"host_target": host_target}
            feats, cesc, mv, target = self.rsg(feats, self.head_classes, target, epoch, **extras)
            return feats, (target, cesc, mv)
        zero = feats.new_zeros((), dtype=torch.float32)
        return feats, (target, zero, zero)

    @staticmethod
    def _finish(logits: torch.Tensor, extra):
        if extra is None:
            return logits
        target, cesc, mv = extra
        return logits, target, cesc, mv

    def inference_state_dict(self) -> dict[str, torch.Tensor]:
        """The state dict without RSG's keys: it loads strictly into the same model built without RSG."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith(RSG_PREFIX)}

    def set_head_classes(self, head_classes: Sequence[int]) -> None:
        """The head (frequent) class ids RSG is given from the next forward on, checked here as RSG's
        constructor checks them (a bad list would otherwise fail inside RSG, after the stages before
        it had moved their BatchNorm statistics)."""
        self.head_classes = list(check_head_classes(head_classes, self.num_classes, "head_classes"))


@torch.no_grad()
def infer_shape(stem: nn.Module, input_size: int | tuple[int, int], channels: int = 3) -> tuple[int, int, int]:
    """(C, H, W) that ``stem`` produces for one ``channels x input_size x input_size`` image (or
    ``channels x H x W`` for ``input_size = (H, W)``); run in eval mode on a throw-away input so no
    BatchNorm statistic moves."""
    h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
    was_training = stem.training
    stem.eval()
    try:
        param = next(stem.parameters())
        out = stem(torch.zeros(1, channels, h, w, device=param.device, dtype=param.dtype))
    finally:
        stem.train(was_training)
    return tuple(int(s) for s in out.shape[1:])
