"""The training optimiser of ``rsg-fast train`` and the bench's training step: SGD as in the published
scripts; under fp16 loss scaling, torch's fused SGD kernel, so that no step waits for the GPU.

``torch.amp.GradScaler`` skips the step whose gradients overflowed. With a plain optimiser it reads
the overflow flag on the host first (``.item()``: one device-to-host synchronisation per step, which
stops the CPU from queueing the next step ahead of the GPU). ``SGD(fused=True)`` takes the flag (and
the scale) into its kernel instead and skips the update on the device.

Torch's fused SGD (2.9 to 2.14 at least) has two hazards, which ``_fit_momentum_buffers`` removes
(it also lays loaded buffers out as their parameters, which the fused kernel needs):
- on its first step it fills the absent momentum buffers with ``torch.empty_like`` and then, when
  that step overflowed (usual for fp16's first steps at the initial scale 2**16), returns without
  writing them, so the next step adds uninitialised memory to the weights;
- a parameter whose first gradient comes after the others' (RSG's transformation T, trained only
  after the threshold) has no buffer among theirs, and the step raises a ``TypeError``.
Zero buffers from the start change nothing else: with dampening 0 the kernel's ``momentum * 0 +
grad`` is ``grad``, the buffer a first step sets. With them the fused steps equal the plain ones to
float32 rounding (the kernel contracts multiply-adds), overflowed steps included
(``tests/test_optim.py``).
"""
from __future__ import annotations

from collections.abc import Iterable

import torch


def sgd(params: Iterable[torch.nn.Parameter], *, lr: float, momentum: float, weight_decay: float,
        loss_scaling: bool) -> torch.optim.SGD:
    """SGD with momentum and weight decay; ``loss_scaling`` (fp16 with a GradScaler): the fused kernel."""
    optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                                fused=True if loss_scaling else None)
    _fit_momentum_buffers(optimizer)
    return optimizer


def load_state(optimizer: torch.optim.SGD, state: dict) -> None:
    """``optimizer.load_state_dict(state)``, keeping this optimiser's kernel (fused or not) rather than
    the checkpoint's: a run continued with another ``--amp`` steps as this run's setting asks (a plain
    step handed GradScaler's flag would raise; a fused one without the zeroed buffers would not be safe)."""
    kernels = [(group["fused"], group["foreach"]) for group in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, (fused, foreach) in zip(optimizer.param_groups, kernels):
        group["fused"], group["foreach"] = fused, foreach
    _fit_momentum_buffers(optimizer)


def _fit_momentum_buffers(optimizer: torch.optim.SGD) -> None:
    """For each parameter of a fused group: a zero momentum buffer where it has none (see the module's
    doc), and a loaded one laid out as the parameter is. A checkpoint keeps its buffers' strides, and a
    run may resume with ``--channels-last`` switched: the fused kernel walks the three tensors in step
    (on the CPU it would pair the wrong elements; on CUDA it refuses), the plain step does not care."""
    for group in optimizer.param_groups:
        if group["fused"] and group["momentum"] != 0:
            for p in group["params"]:
                state = optimizer.state[p]
                buffer = state.get("momentum_buffer")
                if buffer is None:
                    state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                elif buffer.stride() != p.stride():
                    state["momentum_buffer"] = torch.empty_like(p, memory_format=torch.preserve_format).copy_(buffer)
