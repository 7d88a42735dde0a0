"""Plain references of the fused ops, beside them: the slow truth the tests, ``rsg-fast bench`` and
``rsg-fast check`` compare the fast paths with.

Each function computes its op's contract (docs/ops-contract.md) the most obvious way, in the dtype
of its inputs (tests pass float64 copies: ``upcast``), materialising whatever is clearest (the
N x K x C x H x W differences, F.normalize on every vector). They are differentiable with ordinary
autograd, so they give reference gradients too. Never optimise them: their job is to be obviously right and independent of the
fast paths (they share no code with ``rsg_fast.ops``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["center_distance", "displacement", "mv_terms", "upcast"]


def upcast(*tensors):
    """Floating tensors as float64 (a differentiable cast: gradients reach the originals); others
    unchanged. The inputs of an fp64 reference computation."""
    return [t.double() if isinstance(t, torch.Tensor) and t.is_floating_point() else t for t in tensors]


def center_distance(x: torch.Tensor, centers: torch.Tensor):
    """Eq. 1 (pooled mean) and Eq. 5 (squared distances): ``(mean (N, C), dist (N, K))``."""
    mean = x.mean(dim=(2, 3))
    dist = (x[:, None] - centers[:, :, :, None, None]).square().sum(dim=(2, 3, 4))
    return mean, dist


def displacement(x: torch.Tensor, index: torch.Tensor, centre_rows: torch.Tensor) -> torch.Tensor:
    """Eq. 3: ``x[index] - centre_rows`` broadcast over (H, W): (M, C, H, W)."""
    return x[index] - centre_rows[:, :, None, None]


def mv_terms(tv, v, u, x, tail_index, grouping: str):
    """Eq. 4 (``new = x[tail_index] + tv``) and Eq. 6's two sums ``terms = (norm_sum, cos_sum)``.

    grouping "location": the vectors are the C-channel vectors at each (m, h, w) (the paper);
    "rows": rows of C consecutive elements of the NCHW buffer (the published code's ``view(-1, C)``).
    """
    new = x[tail_index] + tv
    C = tv.shape[1]
    if grouping == "location":
        a, b, w = (t.permute(0, 2, 3, 1).reshape(-1, C) for t in (tv, u, v))
    elif grouping == "rows":
        a, b, w = (t.reshape(-1, C) for t in (tv, u, v))
    else:
        raise ValueError(f"grouping must be 'location' or 'rows', got {grouping!r}")
    norm_sum = (a.norm(dim=1) - w.norm(dim=1)).abs().sum()
    ah, bh = F.normalize(a, dim=1), F.normalize(b, dim=1)
    if grouping == "location":
        cos_sum = ((ah * bh).sum(1) - 1).abs().sum()
    else:
        cos_sum = (ah * bh - 1).abs().sum()
    return new, torch.stack([norm_sum, cos_sum])
