"""Plain references of the fused ops, beside them: the slow truth the tests, ``rsg-fast bench`` and
``rsg-fast check`` compare the fast paths with.

Each function computes its op's contract (docs/ops-contract.md) the most obvious way, in the dtype
of its inputs (tests pass float64 copies: ``upcast``), materialising whatever is clearest (the
N x K x C x H x W differences, F.normalize on every vector). They are differentiable with ordinary
autograd, so they give reference gradients too. Never optimise them: their job is to be obviously
right and independent of the fast paths (they share no code with ``rsg_fast.ops``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["center_assign", "displacement", "mv_terms", "tap_window_means", "upcast"]


def upcast(*tensors):
    """Floating tensors as float64 (a differentiable cast: gradients reach the originals); others
    unchanged. The inputs of an fp64 reference computation."""
    return [t.double() if isinstance(t, torch.Tensor) and t.is_floating_point() else t for t in tensors]


def center_assign(x, target, centers, linear, bias):
    """Eq. 1 and Eq. 5 as ReferenceRSG writes them: ``(gamma (N, K), dist (N, K), row (N,), cesc (N,))``
    with ``row = target * K + argmax(gamma)`` and ``cesc = sum_k gamma * dist``."""
    K = centers.shape[1]
    pooled = x.mean(dim=(2, 3))
    gamma = F.softmax(torch.bmm(pooled.unsqueeze(1), linear[target]).squeeze(1) + bias[target], dim=1)
    dist = (x.unsqueeze(1) - centers[target][:, :, :, None, None]).square().sum(dim=(2, 3, 4))
    return gamma, dist, target * K + gamma.argmax(dim=1), (gamma * dist).sum(dim=1)


def displacement(x: torch.Tensor, index: torch.Tensor, row: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Eq. 3: ``x[index] - table[row[index]]`` broadcast over (H, W): (M, C, H, W)."""
    return x[index] - table[row[index]][:, :, None, None]


def mv_terms(tv, v, x, tail_index, row, table, grouping: str):
    """Eq. 4 (``new = x[t] + tv``) and Eq. 6's two sums ``terms = (norm_sum, cos_sum)``, with the rare
    displacement ``u = x[t] - table[row[t]]``, t = tail_index.

    grouping "location": the vectors are the C-channel vectors at each (m, h, w) (the paper);
    "rows": rows of C consecutive elements of the NCHW buffer (the published code's ``view(-1, C)``).
    """
    u = displacement(x, tail_index, row, table)
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


def tap_window_means(pre: torch.Tensor) -> torch.Tensor:
    """S[p, d, i, j]: the mean over the H*W output positions of relu(pre) (channels-last (P, H, W, D))
    as tap (i, j) of a 3x3, padding-1 convolution reads it, from the zero-padded map: (P, D, 3, 3)."""
    P, H, W, D = pre.shape
    padded = F.pad(pre.relu(), (0, 0, 1, 1, 1, 1))          # pad W and H by one on each side
    taps = [[padded[:, i:i + H, j:j + W].mean(dim=(1, 2)) for j in range(3)] for i in range(3)]
    return torch.stack([torch.stack(row, dim=-1) for row in taps], dim=-2)
