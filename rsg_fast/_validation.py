"""Argument checks shared by ``RSG`` and ``ReferenceRSG``.

Every check raises ``TypeError``/``ValueError`` naming the argument, what was expected and what came.
Shape, dtype and device checks are host-side and free; the value checks on tensors (label range,
finiteness) need one host synchronisation, which ``RSG`` folds into the one it needs anyway (under
torch.compile they become asynchronous device asserts).
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np
import torch

MV_LOSS_CHOICES = ("paper", "original")


def check_constructor(n_center, feature_maps_shape, num_classes, contrastive_module_dim,
                      head_class_lists, transfer_strength, epoch_thresh, mv_loss, validate=True,
                      check_finite=False):
    """Validate the constructor's arguments; return ``(C, H, W)`` and the head classes as a tuple."""
    for name, flag in (("validate", validate), ("check_finite", check_finite)):
        if not isinstance(flag, (bool, np.bool_)):     # validate="no" would have meant True
            raise TypeError(f"{name} must be True or False, got {flag!r}")
    if isinstance(n_center, bool) or not isinstance(n_center, numbers.Integral) or n_center < 1:
        raise ValueError(f"n_center must be an integer >= 1, got {n_center!r}")
    if isinstance(feature_maps_shape, (np.ndarray, torch.Tensor)) and feature_maps_shape.ndim == 1:
        feature_maps_shape = feature_maps_shape.tolist()          # e.g. np.array([C, H, W])
    if (not isinstance(feature_maps_shape, (Sequence, torch.Size)) or len(feature_maps_shape) != 3
            or not all(isinstance(s, numbers.Integral) and not isinstance(s, bool) and s >= 1
                       for s in feature_maps_shape)):
        raise ValueError(f"feature_maps_shape must be three positive integers (C, H, W), got {feature_maps_shape!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 1:
        raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}")
    if (isinstance(contrastive_module_dim, bool) or not isinstance(contrastive_module_dim, numbers.Integral)
            or contrastive_module_dim < 1):
        raise ValueError(f"contrastive_module_dim must be an integer >= 1, got {contrastive_module_dim!r}")
    if (isinstance(transfer_strength, bool) or not isinstance(transfer_strength, numbers.Real)
            or not 0.0 < float(transfer_strength) <= 1.0):
        raise ValueError(f"transfer_strength must be a number in (0, 1], got {transfer_strength!r}")
    if isinstance(epoch_thresh, bool) or not isinstance(epoch_thresh, numbers.Real):
        raise TypeError(f"epoch_thresh must be a number, got {type(epoch_thresh).__name__}")
    if epoch_thresh != epoch_thresh:   # NaN: generation would never start (not float(): it overflows)
        raise ValueError("epoch_thresh must be a number (inf: never generate), got nan")
    if mv_loss not in MV_LOSS_CHOICES:
        raise ValueError(f"mv_loss must be one of {MV_LOSS_CHOICES}, got {mv_loss!r}")
    heads = check_head_classes(head_class_lists, num_classes)
    return tuple(int(s) for s in feature_maps_shape), heads


def check_head_classes(head_class_lists, num_classes: int, name: str = "head_class_lists") -> tuple[int, ...]:
    """Head (frequent) class ids: integers (0-d integer tensors too) in [0, num_classes), no repeats,
    as a sequence or a 1-D integer tensor or array. Returns a tuple. ``name``: the argument's, for the errors."""
    if isinstance(head_class_lists, (torch.Tensor, np.ndarray)) and torch.compiler.is_compiling():
        # a compiled graph cannot read the class ids out of a tensor (they pick the head table)
        raise TypeError(f"under torch.compile pass {name} as a list, tuple or range of ints, "
                        f"not a {type(head_class_lists).__name__} (a graph cannot read the class ids from it)")
    if isinstance(head_class_lists, torch.Tensor):
        if head_class_lists.dim() > 1 or head_class_lists.is_floating_point() or head_class_lists.is_complex():
            raise TypeError(f"{name} must be a sequence or 1-D integer tensor of class ids, "
                            f"got a {head_class_lists.dim()}-D {head_class_lists.dtype} tensor")
        head_class_lists = head_class_lists.reshape(-1).tolist()
    elif isinstance(head_class_lists, np.ndarray):   # e.g. a top-k of training counts
        if head_class_lists.ndim > 1 or head_class_lists.dtype.kind not in "iu":
            raise TypeError(f"{name} must be a sequence or 1-D integer array of class ids, "
                            f"got a {head_class_lists.ndim}-D {head_class_lists.dtype} array")
        head_class_lists = head_class_lists.tolist()
    elif isinstance(head_class_lists, range):
        head_class_lists = _range_values(head_class_lists, num_classes + 1)
    if isinstance(head_class_lists, (str, bytes)) or not isinstance(head_class_lists, (Sequence, range)):
        raise TypeError(f"{name} must be a sequence of class ids, got {type(head_class_lists).__name__}")
    heads = []
    for c in head_class_lists:
        if (isinstance(c, torch.Tensor) and c.dim() == 0 and not c.is_floating_point() and not c.is_complex()
                and c.dtype != torch.bool):
            c = c.item()      # e.g. list(counts.topk(k).indices), which the published torch.Tensor(...) took
        if isinstance(c, bool) or not isinstance(c, numbers.Integral):
            raise TypeError(f"{name} must hold integer class ids, got {c!r}")
        if not 0 <= int(c) < num_classes:
            raise ValueError(f"{name} holds {int(c)}, outside [0, num_classes={num_classes})")
        heads.append(int(c))
    if torch.compiler.is_compiling():
        # no repeat check here: the ids that changed since an earlier call are symbolic, and a set would
        # hash (specialise the graph on) each, comparing every pair would be n^2 guards; RSG's forward
        # asserts it on the device instead (a repeated id does not change what RSG computes)
        return tuple(heads)
    if len(set(heads)) != len(heads):
        repeated = sorted({c for c in heads if heads.count(c) > 1})
        raise ValueError(f"{name} repeats class ids {repeated}")
    return tuple(heads)


def _range_values(r: range, most: int) -> list:
    """The first ``most`` values of a range (a longer one cannot be distinct class ids: the check after
    rejects it, without first building a list of a billion), stepped by hand: under torch.compile
    dynamo makes the bounds of a range that changed since an earlier call symbolic ints, and cannot
    iterate such a range (a fullgraph error); each comparison here is a guard it can take."""
    values, c = [], r.start
    while ((c < r.stop) if r.step > 0 else (c > r.stop)) and len(values) < most:
        values.append(c)
        c += r.step
    return values


def check_maps_dtype(maps: torch.dtype, params: torch.dtype, device_type: str) -> None:
    """The feature maps' dtype must suit the parameters' (T and the contrastive module are convolutions):
    the same one outside autocast; under autocast, float32 or autocast's dtype (which autocast casts to),
    unless the parameters are float64, which autocast leaves alone."""
    if not torch.is_autocast_enabled(device_type):
        if maps != params:
            raise TypeError(f"feature_maps is {maps} but the RSG parameters are {params}; outside torch.autocast "
                            f"they must match: convert the module (rsg.to({maps})) or run the network under "
                            "torch.autocast")
        return
    cast_to = torch.get_autocast_dtype(device_type)
    allowed = (params,) if params == torch.float64 else (torch.float32, cast_to)
    if maps not in allowed:
        names = " or ".join(dict.fromkeys(str(d) for d in allowed))
        raise TypeError(f"feature_maps is {maps}; under torch.autocast(dtype={cast_to}) with RSG parameters in "
                        f"{params} it must be {names}"
                        + (" (autocast leaves float64 alone)" if params == torch.float64 else ""))


def check_forward_arguments(module, feature_maps, target, epoch):
    """Host-side checks of forward's arguments (always on, even with ``validate=False``): shapes,
    dtypes, devices and the epoch. Returns the epoch as a Python number (a 1-element tensor is read
    once, here); nothing else here reads a tensor's values."""
    if not isinstance(feature_maps, torch.Tensor):
        raise TypeError(f"feature_maps must be a torch.Tensor, got {type(feature_maps).__name__}")
    if feature_maps.dim() != 4:
        raise ValueError(f"feature_maps must be 4-D (N, C, H, W), got shape {tuple(feature_maps.shape)}")
    if tuple(feature_maps.shape[1:]) != tuple(module.feature_maps_shape):
        raise ValueError(f"feature_maps must have (C, H, W) = {tuple(module.feature_maps_shape)} as given to "
                         f"the constructor (feature_maps_shape), got {tuple(feature_maps.shape[1:])}")
    if not feature_maps.is_floating_point():
        raise TypeError(f"feature_maps must be a floating-point tensor, got {feature_maps.dtype}")
    check_target(target, feature_maps)
    param = module.centers
    if feature_maps.device != param.device:
        raise ValueError(f"feature_maps is on {feature_maps.device} but the RSG parameters are on {param.device}; "
                         "move the module with .to(device)")
    if feature_maps.device.type == "meta" and not torch.compiler.is_compiling():
        raise ValueError("RSG's forward cannot run on the meta device: the labels' values decide which samples "
                         "pair up and how many new ones there are (a module on meta is for building and "
                         "loading: to_empty(device=...), then load_state_dict)")
    check_maps_dtype(feature_maps.dtype, param.dtype, feature_maps.device.type)
    return check_epoch(epoch)


def check_target(target, batch: torch.Tensor, batch_name: str = "feature_maps") -> None:
    """``target``: a 1-D integer tensor with one label per sample of ``batch``, on its device."""
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"target must be a torch.Tensor of class labels, got {type(target).__name__}")
    if target.dim() != 1 or target.dtype == torch.bool or target.is_floating_point() or target.is_complex():
        raise TypeError(f"target must be a 1-D integer tensor of class labels, got a {target.dim()}-D "
                        f"{target.dtype} tensor")
    if target.shape[0] != batch.shape[0]:
        raise ValueError(f"target must have one label per sample: {batch_name} has batch {batch.shape[0]}, "
                         f"target has length {target.shape[0]}")
    if target.device != batch.device:
        raise ValueError(f"target is on {target.device} but {batch_name} is on {batch.device}; "
                         "put them on the same device")


def check_epoch(epoch):
    """``epoch`` as a Python number >= 0 (a 1-element tensor or array or a numpy scalar is read once, here)."""
    if isinstance(epoch, torch.Tensor):
        if epoch.numel() != 1:
            raise TypeError(f"epoch must be a number, got a tensor of shape {tuple(epoch.shape)}")
        if epoch.is_floating_point() and torch.compiler.is_compiling():
            # its value would be a symbolic float that dynamo cannot guard on when it compares it with
            # epoch_thresh (fullgraph: "Could not guard on data-dependent expression"); an int tensor's
            # value it can, and a Python float is a graph input
            raise TypeError("epoch as a floating-point tensor cannot pick RSG's phase under torch.compile; "
                            "pass a Python number (e.g. float(epoch)) or an integer tensor")
        epoch = epoch.item()
    elif isinstance(epoch, np.generic):   # numpy scalars: as Python numbers (np.float32('nan') included)
        epoch = epoch.item()
    elif isinstance(epoch, np.ndarray):
        if torch.compiler.is_compiling():   # dynamo traces a numpy scalar as an array: its value not a guardable int
            raise TypeError("epoch as a numpy scalar or array cannot pick RSG's phase under torch.compile; pass a "
                            "Python number (e.g. int(epoch)) or an integer tensor")
        if epoch.size != 1:
            raise TypeError(f"epoch must be a number, got an array of shape {epoch.shape}")
        epoch = epoch.item()
    if isinstance(epoch, bool) or not isinstance(epoch, numbers.Real):
        raise TypeError(f"epoch must be a number, got {type(epoch).__name__}")
    # NaN and inf by comparisons alone (-inf is < 0): under torch.compile a float epoch becomes a
    # dynamic (symbolic) float at its second value, which math.isfinite cannot take, and on torch
    # 2.11 an abs() of it made every new value a graph of its own
    if (isinstance(epoch, float) and (epoch != epoch or epoch == math.inf)) or epoch < 0:
        raise ValueError(f"epoch must be a finite number >= 0, got {epoch}")
    return epoch


def check_host_target(host_target, target) -> torch.Tensor:
    """``forward``'s optional ``host_target``: the same labels as ``target``, held on the CPU, from which
    Algorithm 1's counts are computed without reading the device. Returns them as contiguous int64."""
    if not isinstance(host_target, torch.Tensor):
        raise TypeError(f"host_target must be a CPU torch.Tensor holding the same labels as target, got "
                        f"{type(host_target).__name__}")
    if host_target.device.type != "cpu":
        raise ValueError(f"host_target must be on the CPU (it is there so that RSG need not read target from "
                         f"the device), got a tensor on {host_target.device}; pass the labels before .to(device) "
                         "(DistributedDataParallel(device_ids=[i]) moves every tensor argument to the GPU: build it "
                         "with device_ids=None and move the inputs yourself)")
    if (host_target.dim() != 1 or host_target.dtype == torch.bool or host_target.is_floating_point()
            or host_target.is_complex()):
        raise TypeError(f"host_target must be a 1-D integer tensor of class labels, got a {host_target.dim()}-D "
                        f"{host_target.dtype} tensor")
    if host_target.shape[0] != target.shape[0]:
        raise ValueError(f"host_target must hold the same labels as target: target has length {target.shape[0]}, "
                         f"host_target has length {host_target.shape[0]}")
    return host_target.to(torch.int64).contiguous()


def raise_for_labels(label_min: int, label_max: int, num_classes: int) -> None:
    """Raise for labels outside [0, num_classes) once their range is on the host."""
    if label_min < 0 or label_max >= num_classes:
        bad = label_min if label_min < 0 else label_max
        raise ValueError(f"target holds label {bad}, outside [0, num_classes={num_classes})")


NON_FINITE_MESSAGE = "feature_maps holds NaN or Inf values (check_finite=True)"
HOST_TARGET_MESSAGE = "host_target must hold the same labels as target, in the same order"


def raise_if_labels_differ(labels: torch.Tensor, host_labels: torch.Tensor) -> None:
    """``ValueError`` when ``target``'s labels, on the CPU, differ from ``host_target``'s (int64)."""
    if not torch.equal(labels.long(), host_labels):
        raise ValueError(HOST_TARGET_MESSAGE)
