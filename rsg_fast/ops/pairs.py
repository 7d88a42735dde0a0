"""The generation phase's bookkeeping as two small ops (Algorithm 1; details in
``rsg_fast/kernels/pairs.py``):

    is_head, counts = batch_plan(labels, head_table, beta)     # counts = (n_head, n_new, min y, max y)
    head_index, tail_index = pair_indices(is_head, counts, n_new)

``counts`` is what ``RSG`` fetches to the host in its one synchronisation (n_new sizes the new
samples; the label range is the value check); everything else stays on the device. The pairing is
``parameters.segment_plan``'s published rule; ``ReferenceRSG`` loops over the segments instead.
"""
import numbers

import torch
from torch import Tensor

from rsg_fast.backend import resolve_backend
from rsg_fast.ops._common import check_device, check_index, define, interpreter_guard, kernels

__all__ = ["batch_plan", "pair_indices"]


def _batch_plan_torch(labels: Tensor, head_table: Tensor, beta: float):
    N, L = labels.shape[0], head_table.shape[0]
    is_head = head_table[labels.clamp(0, L - 1)]
    nh = is_head.sum()
    nt = N - nh
    pairs, larger = torch.minimum(nh, nt), torch.maximum(nh, nt)
    # float64, in the published order (larger * beta) / smaller: rounds as its Python floats do
    segment = torch.floor(larger.double() * beta / pairs.clamp_min(1).double()).long().clamp_min(1)
    if N:
        low, high = torch.aminmax(labels)
    else:
        low = high = labels.new_zeros(())
    return is_head, torch.stack([nh, segment * pairs, low, high])


def _pair_indices_torch(is_head: Tensor, counts: Tensor, n_new: int):
    order = torch.sort((~is_head).to(torch.uint8), stable=True).indices      # heads, then tails
    nh = counts[0]
    nt = is_head.shape[0] - nh
    k = torch.arange(n_new, device=is_head.device)
    heads_first = nh >= nt
    head_rank = torch.where(heads_first, k, k % nh.clamp_min(1))
    tail_rank = torch.where(heads_first, k % nt.clamp_min(1), k)
    # clamped into order, as the kernel: inconsistent counts on a GPU give wrong pairs, not a device assert
    last = max(is_head.shape[0] - 1, 0)
    return order[head_rank.clamp(0, last)], order[(nh + tail_rank).clamp(0, last)]


@define("batch_plan")
def _batch_plan(labels: Tensor, head_table: Tensor, beta: float, backend: str) -> tuple[Tensor, Tensor]:
    if backend == "triton" and labels.shape[0] <= kernels("pairs").MAX_BATCH:
        interpreter_guard(labels)
        return kernels("pairs").batch_plan(labels, head_table, beta)
    return _batch_plan_torch(labels, head_table, beta)


@define("pair_indices")
def _pair_indices(is_head: Tensor, counts: Tensor, n_new: int, backend: str) -> tuple[Tensor, Tensor]:
    if backend == "triton" and is_head.shape[0] <= kernels("pairs").MAX_BATCH:
        interpreter_guard(is_head)
        return kernels("pairs").pair_indices(is_head, n_new)
    return _pair_indices_torch(is_head, counts, n_new)


def batch_plan(labels: Tensor, head_table: Tensor, beta: float, *, backend: str | None = "auto"):
    """``(is_head (N,) bool, counts (4,) int64)`` for integer labels (N,) and a (L,) bool table of the
    head classes; ``counts = (n_head, n_new, min label, max label)`` (labels outside [0, L) read the
    table at the clamped label: check ``counts[2:]``). beta (transfer_strength) in (0, 1]."""
    labels = check_index("labels", labels, None, None, "labels", labels, check_values=False)   # int64, contiguous
    if not isinstance(head_table, Tensor) or head_table.dtype != torch.bool or head_table.dim() != 1 \
            or head_table.numel() < 1:
        # the dtype and shape, not the repr: a 1000-class table's values fill a screen and hide both
        got = (f"a {head_table.dim()}-D {head_table.dtype} tensor of {head_table.numel()} elements"
               if isinstance(head_table, Tensor) else type(head_table).__name__)
        raise TypeError(f"head_table must be a non-empty 1-D bool tensor, got {got}")
    check_device("labels", labels, "head_table", head_table)
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not 0.0 < float(beta) <= 1.0:
        raise ValueError(f"beta (transfer_strength) must be a number in (0, 1], got {beta!r}")
    return torch.ops.rsg_fast.batch_plan(labels, head_table.contiguous(),
                                         float(beta), resolve_backend(backend, labels.device))


def pair_indices(is_head: Tensor, counts: Tensor, n_new: int, *, backend: str | None = "auto"):
    """``(head_index, tail_index)``, each (n_new,) int64: the published pairs, from ``batch_plan``'s
    outputs; ``n_new`` is ``counts[1]`` on the host (at most N with beta <= 1)."""
    if not isinstance(is_head, Tensor) or is_head.dtype != torch.bool or is_head.dim() != 1:
        raise TypeError(f"is_head must be batch_plan's 1-D bool tensor, got {_describe(is_head)}")
    if not isinstance(counts, Tensor) or counts.dtype != torch.int64 or tuple(counts.shape) != (4,):
        raise TypeError(f"counts must be batch_plan's (4,) int64 tensor, got {_describe(counts)}")
    check_device("is_head", is_head, "counts", counts)
    if isinstance(n_new, bool) or not isinstance(n_new, (numbers.Integral, torch.SymInt)):
        raise TypeError(f"n_new must be an int (counts[1] on the host), got {type(n_new).__name__}")
    if isinstance(n_new, numbers.Integral):
        n_new = int(n_new)                      # e.g. a numpy integer
    N = is_head.shape[0]
    if not torch.compiler.is_compiling():
        if not 0 <= n_new <= N:
            raise ValueError(f"n_new must be counts[1] of batch_plan, in [0, N={N}], got {n_new}")
        plain = type(counts) is Tensor and type(is_head) is Tensor     # not a tracer's fake tensor
        if plain and counts.device.type == "cpu":                      # free here: no device to wait for
            # read through tolist/numpy: no torch ops dispatched (what a step launches stays countable)
            n_head, most = counts.tolist()[:2]
            heads = int(is_head.numpy().sum())
            if n_head != heads:
                raise ValueError(f"counts must be batch_plan's for this is_head: counts[0] = {n_head} "
                                 f"frequent-class samples, is_head has {heads}")
            if n_new > most:
                raise ValueError(f"n_new must be counts[1] of batch_plan, at most {most} here, got {n_new}")
    torch._check(n_new >= 0)
    torch._check(n_new <= N)          # under torch.compile: a run-time check of the data-dependent size
    return torch.ops.rsg_fast.pair_indices(is_head.contiguous(), counts.contiguous(), n_new,
                                           resolve_backend(backend, is_head.device))


def _describe(t) -> str:
    return f"{t.dtype} tensor of shape {tuple(t.shape)}" if isinstance(t, Tensor) else type(t).__name__
