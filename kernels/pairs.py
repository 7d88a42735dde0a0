"""The generation phase's bookkeeping (Algorithm 1): which samples are frequent ("heads"), how many
new samples the published pairing rule makes, and which (head, tail) pair makes each.

    is_head[n] = head_table[y[n]]
    counts     = (n_head, n_new, min(y), max(y)),   n_new = segment * min(n_head, n_tail),
                 segment = max(1, floor(max(n_head, n_tail) * beta / min(n_head, n_tail)))
    head_index[k], tail_index[k]: pair k of the published segments (heads and tails in batch order;
                 n_head >= n_tail: heads[k] with tails[k % n_tail]; else heads[k % n_head] with tails[k])

One program each (batches are at most a few thousand samples): one launch instead of the dozen
small ops (sort, cumulative sums, min, max, the segment arithmetic) the same work takes in PyTorch.
The segment arithmetic is float64 with beta a compile-time constant, so it rounds exactly as the
published code's Python floats do.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import launch, new_empty, pow2

MAX_BATCH = 8192    # one program holds the whole batch; larger batches take the PyTorch path


def _warps(block_n: int) -> int:
    """Enough threads that a batch of block_n labels fits in registers without spills."""
    return min(16, max(4, block_n // 256))


@triton.jit
def _batch_plan_kernel(y_ptr, table_ptr, is_head_ptr, counts_ptr, N, L,
                       BETA: tl.constexpr, BLOCK_N: tl.constexpr):
    """One program. Shapes: y (N,) int64, head_table (L,) bool, is_head (N,) bool, counts (4,) int64.
    Labels outside [0, L) read the table at the clamped label (the caller checks counts[2:])."""
    offs = tl.arange(0, BLOCK_N)
    nmask = offs < N
    y = tl.load(y_ptr + offs, mask=nmask, other=0)
    head = tl.load(table_ptr + tl.minimum(tl.maximum(y, 0), L - 1), mask=nmask, other=0) != 0
    head = head & nmask
    tl.store(is_head_ptr + offs, head, mask=nmask)
    nh = tl.sum(head.to(tl.int64), axis=0)
    nt = N - nh
    pairs = tl.minimum(nh, nt)
    larger = tl.maximum(nh, nt)
    ratio = larger.to(tl.float64) * tl.full([], BETA, tl.float64) / tl.maximum(pairs, 1).to(tl.float64)
    segment = tl.maximum(tl.floor(ratio).to(tl.int64), 1)
    tl.store(counts_ptr, nh)
    tl.store(counts_ptr + 1, segment * pairs)
    # the label range; (0, 0) for an empty batch, as the PyTorch path
    tl.store(counts_ptr + 2, tl.where(N > 0, tl.min(tl.where(nmask, y, 9223372036854775807), axis=0), 0))
    tl.store(counts_ptr + 3, tl.where(N > 0, tl.max(tl.where(nmask, y, -9223372036854775807 - 1), axis=0), 0))


@triton.jit
def _pair_indices_kernel(is_head_ptr, order_ptr, head_out_ptr, tail_out_ptr, N, n_new,
                         BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """One program. Writes order (N,) = heads then tails, each in batch order (a stable partition
    through a global scratch buffer and a block barrier), then head_index / tail_index (n_new,).
    The head count is counted here rather than read from counts, so the partition fills order exactly
    whatever counts the caller passed."""
    offs = tl.arange(0, BLOCK_N)
    nmask = offs < N
    head = (tl.load(is_head_ptr + offs, mask=nmask, other=0) != 0) & nmask
    # int32 ranks (N <= MAX_BATCH): half the registers of int64 at the largest batch
    heads_upto = tl.cumsum(head.to(tl.int32), axis=0)           # heads at or before each position
    # the head count, summed in int64: an int32 sum spills on triton 3.6, the ranks' max on 3.5
    nh32 = tl.sum(head.to(tl.int64), axis=0).to(tl.int32)
    # a head's slot is its rank among heads; a tail's is nh + its rank among tails (offs - heads_upto)
    slot = tl.where(head, heads_upto - 1, nh32 + offs - heads_upto)
    tl.store(order_ptr + slot, offs.to(tl.int64), mask=nmask)
    tl.debug_barrier()                      # the order buffer is read back by other threads below
    nh = nh32.to(tl.int64)
    nt = N - nh
    heads_first = nh >= nt
    for k0 in range(0, n_new, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K).to(tl.int64)
        kmask = k < n_new
        h_rank = tl.where(heads_first, k, k % tl.maximum(nh, 1))
        t_rank = tl.where(heads_first, k % tl.maximum(nt, 1), k)
        # clamped into order: n_new past counts[1] gives wrong pairs, never a read outside the buffer
        # (the op checks it where counts is on the CPU)
        h_slot = tl.minimum(tl.maximum(h_rank, 0), N - 1)
        t_slot = tl.minimum(tl.maximum(nh + t_rank, 0), N - 1)
        tl.store(head_out_ptr + k, tl.load(order_ptr + h_slot, mask=kmask, other=0), mask=kmask)
        tl.store(tail_out_ptr + k, tl.load(order_ptr + t_slot, mask=kmask, other=0), mask=kmask)


def batch_plan(labels: torch.Tensor, head_table: torch.Tensor, beta: float):
    """(is_head (N,) bool, counts (4,) int64); N <= MAX_BATCH."""
    N = labels.shape[0]
    is_head = new_empty((N,), torch.bool, labels.device)
    counts = new_empty((4,), torch.int64, labels.device)
    block_n = pow2(N, lo=16)
    launch(_batch_plan_kernel, (1,))(labels, head_table, is_head, counts, N, head_table.shape[0],
                                     BETA=float(beta), BLOCK_N=block_n, num_warps=_warps(block_n))
    return is_head, counts


def pair_indices(is_head: torch.Tensor, n_new: int):
    """(head_index, tail_index), each (n_new,) int64; N <= MAX_BATCH (the head count is the kernel's own)."""
    N = is_head.shape[0]
    order = new_empty((N,), torch.int64, is_head.device)
    heads = new_empty((n_new,), torch.int64, is_head.device)
    tails = new_empty((n_new,), torch.int64, is_head.device)
    block_n = pow2(N, lo=16)
    launch(_pair_indices_kernel, (1,))(is_head, order, heads, tails, N, n_new,
                                       BLOCK_N=block_n, BLOCK_K=256, num_warps=_warps(block_n))
    return heads, tails


__all__ = ["batch_plan", "pair_indices", "MAX_BATCH"]
