"""``torch.compile`` of a network holding RSG, with the settings the README asks users for; the
bench's compiled variants and ``rsg-fast train --compile`` both go through it."""
from __future__ import annotations

import torch
import torch.nn as nn


def compile_with_rsg(module: nn.Module, backend: str = "inductor") -> nn.Module:
    """``torch.compile(module, backend=backend)`` (default mode, not fullgraph: DDP splits graphs at
    its buckets) after setting what RSG needs: the number of new samples captured as a data-dependent
    size instead of a graph break, and, for a module on the CPU, inductor's layout optimisation off
    (it mispredicts the strides of convolutions whose batch size is data-dependent). ``ValueError`` for
    a network that would compile but fail at RSG's first generation-phase call (``cpu_channels_last_hazard``)."""
    import torch._dynamo
    import torch._inductor.config

    if backend == "inductor" and (hazard := cpu_channels_last_hazard(module)):
        raise ValueError(hazard)
    torch._dynamo.config.capture_scalar_outputs = True
    if not next(module.parameters()).is_cuda:
        torch._inductor.config.layout_optimization = False
    return torch.compile(module, backend=backend)


def cpu_channels_last_hazard(module: nn.Module) -> str | None:
    """Why inductor's code for ``module`` would fail on the CPU at RSG's first generation-phase call, or
    None: a channels_last network holding RSG and a 1 x 1 convolution (torchvision's ResNets), whose
    output over RSG's data-dependent batch gets other strides than inductor predicts (torch 2.14 and
    2.11; tests/test_train.py pins it). A heuristic on the convolutions outside RSG: the network counts
    as channels_last when one of the others is (a 1 x 1 weight is both NCHW and channels_last), and a
    1 x 1 convolution before RSG counts too (telling them apart would need the order of calls); it
    decides rightly for the networks of rsg_fast.models."""
    from rsg_fast.module import _is_channels_last
    from rsg_fast.parameters import RSGParameters

    rsgs = [m for m in module.modules() if isinstance(m, RSGParameters)]
    inside_rsg = {id(m) for r in rsgs for m in r.modules()}   # RSG's own convolutions are safe (README)
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d) and id(m) not in inside_rsg]
    if (not rsgs
            or not any(m.kernel_size == (1, 1) for m in convs)
            or not any(m.weight.device.type == "cpu" and _is_channels_last(m.weight) for m in convs)):
        return None
    return ("torch.compile of a channels_last network with RSG and 1 x 1 convolutions fails on the CPU at RSG's "
            "first generation-phase call (inductor mispredicts the strides of a 1 x 1 convolution over RSG's "
            "data-dependent batch): compile it in NCHW (model.to(memory_format=torch.contiguous_format)), or "
            "keep channels_last and run it uncompiled")
