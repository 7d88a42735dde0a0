"""``torch.compile`` of a network holding RSG, with the settings the README asks users for; the
bench's compiled variants and ``rsg-fast train --compile`` both go through it."""
from __future__ import annotations

import torch
import torch.nn as nn


def compile_with_rsg(module: nn.Module, backend: str = "inductor") -> nn.Module:
    """``torch.compile(module, backend=backend)`` (default mode, not fullgraph: DDP splits graphs at
    its buckets) after setting what RSG needs: the number of new samples captured as a data-dependent
    size instead of a graph break, and, for a module on the CPU, inductor's layout optimisation off
    (it mispredicts the strides of convolutions whose batch size is data-dependent)."""
    import torch._dynamo
    import torch._inductor.config

    torch._dynamo.config.capture_scalar_outputs = True
    if not next(module.parameters()).is_cuda:
        torch._inductor.config.layout_optimization = False
    return torch.compile(module, backend=backend)
