"""Positions grouped by an index value (a CSR of the index), in one launch, for the segmented sums of
the backward kernels (center_assign's parameter gradients: index = labels, rows = classes; the
index-add of displacement and mv_terms: index = pair -> sample, rows = samples):

    offsets[r] = #{m : index[m] < r}                                             r in [0, n_rows]
    perm[offsets[index[n]] + #{m < n : index[m] == index[n]}] = n

so the m's of row r are ``perm[offsets[r]:offsets[r+1]]`` in increasing m. This is exactly what a
stable sort gives (``csr_by_sort``: ``torch.sort(stable=True)`` + ``searchsorted``, 3 to 6 launches on
CUDA), bit for bit, for any values: perm[k] is the k-th position in stable order, offsets[r] the
left insertion point of r. No atomics (each perm slot and each offset is written once by one program),
so it is also allowed under ``torch.use_deterministic_algorithms(True)``.

Values outside [0, n_rows) (labels passed with check_target=False) fall in no row: the negative ones
sit in perm[:offsets[0]], those >= n_rows in perm[offsets[n_rows]:]. Both are still positions in
[0, len) and offsets stay in [0, len), so a kernel that walks rows [0, n_rows) reads nothing out of
bounds; it just leaves those positions out (center_assign's forward clamps such a label instead: its
result is undefined either way, only memory safety is promised).

The all-pairs counts cost len * (len + n_rows + 1) compares: a few million at the paper's sizes
(N = 256 labels, L = 1000 or 8142 classes), spread over a few dozen programs. Past ``MAX_LEN``
positions or ``MAX_ROWS`` rows, ``csr_by_index`` takes the sort, O(len log len), instead; both give
the same result.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.fx.experimental.symbolic_shapes import guard_or_false

from ._common import grid, launch, new_empty

MAX_LEN = 8192        # positions: above, torch.sort (the kernel's work grows as len**2)
MAX_ROWS = 65536      # rows: above, torch.sort (the offsets' work grows as len * n_rows)
BLOCK = 64            # positions (rank programs) or rows (offset programs) per program
CHUNK = 64            # index values compared per step: a 64 x 64 tile, 128 registers on sm_90 (64 x 128: 255)


@triton.jit
def _csr_kernel(idx_ptr, perm_ptr, off_ptr, n, n_rows, rank_programs, BLOCK: tl.constexpr, CHUNK: tl.constexpr):
    """Programs [0, rank_programs) rank positions [p*BLOCK, ...): perm[rank[m]] = m, with rank[m] =
    #{j : index[j] < index[m], or index[j] == index[m] and j < m}. The others, q = p - rank_programs,
    count offsets[r] = #{j : index[j] < r} for rows r in [q*BLOCK, ...) up to n_rows. Each walks the
    whole index in chunks of CHUNK.

    Shapes: index (n,) contiguous, any integer dtype; perm (n,) int64; offsets (n_rows + 1,) int64.
    Bytes: each program reads the index once (n values, from L2 after the first), so
    (cdiv(n, BLOCK) + cdiv(n_rows + 1, BLOCK)) * n values in all; writes 8 * (n + n_rows + 1).
    Counts are int32: n <= MAX_LEN (launcher).
    """
    pid = tl.program_id(0).to(tl.int64)
    if pid < rank_programs:
        pos = (pid * BLOCK).to(tl.int32) + tl.arange(0, BLOCK)
        pmask = pos < n
        key = tl.load(idx_ptr + pos, mask=pmask, other=0)
        rank = tl.zeros([BLOCK], tl.int32)
        for start in range(0, n, CHUNK):
            j = start + tl.arange(0, CHUNK)
            val = tl.load(idx_ptr + j, mask=j < n, other=0)
            # a position before m counts when its value is <= m's, one after it when strictly less: stable
            ahead = tl.where(j[None, :] < pos[:, None], val[None, :] <= key[:, None], val[None, :] < key[:, None])
            rank += tl.sum((ahead & (j < n)[None, :]).to(tl.int32), axis=1)
        tl.store(perm_ptr + rank, pos.to(tl.int64), mask=pmask)
    else:
        r = ((pid - rank_programs) * BLOCK).to(tl.int32) + tl.arange(0, BLOCK)
        count = tl.zeros([BLOCK], tl.int32)
        for start in range(0, n, CHUNK):
            j = start + tl.arange(0, CHUNK)
            val = tl.load(idx_ptr + j, mask=j < n, other=0)
            count += tl.sum(((val[None, :] < r[:, None]) & (j < n)[None, :]).to(tl.int32), axis=1)
        tl.store(off_ptr + r, count.to(tl.int64), mask=r <= n_rows)


def csr_by_sort(index: torch.Tensor, n_rows: int):
    """The same ``(perm, offsets)`` by a stable sort and a binary search (the path past the limits)."""
    # sort + searchsorted rather than bincount + cumsum: no atomics, and allowed under
    # torch.use_deterministic_algorithms(True)
    sorted_index, perm = torch.sort(index, stable=True)
    if sorted_index.dtype != torch.int64:   # row numbers in the index dtype would wrap past its range
        sorted_index = sorted_index.to(torch.int64)
    offsets = torch.searchsorted(sorted_index, torch.arange(n_rows + 1, dtype=torch.int64, device=index.device))
    return perm, offsets


def fits_kernel(length, n_rows) -> bool:
    """Whether ``csr_by_index`` launches the kernel. A size torch.compile cannot know while tracing
    (an unbacked SymInt: the pair count) takes the sort, without a guard: it may be large."""
    return guard_or_false(length <= MAX_LEN) and guard_or_false(n_rows <= MAX_ROWS)


def csr_by_index(index: torch.Tensor, n_rows: int):
    """Group positions m by ``index[m]`` (1-D, any integer dtype): ``(perm (len,) int64, offsets
    (n_rows + 1,) int64)``, the m's of row r in ``perm[offsets[r]:offsets[r+1]]`` in increasing m, so
    sums over them are deterministic. One launch up to MAX_LEN positions and MAX_ROWS rows."""
    n = index.shape[0]
    if not fits_kernel(n, n_rows):
        return csr_by_sort(index, n_rows)
    index = index.contiguous()
    perm = new_empty((n,), torch.int64, index.device)
    offsets = new_empty((n_rows + 1,), torch.int64, index.device)
    ranks = (n + BLOCK - 1) // BLOCK
    g = grid("csr_by_index", ("index.shape[0] + n_rows", ranks + (n_rows + BLOCK) // BLOCK, 1))
    launch(_csr_kernel, g)(index, perm, offsets, n, n_rows, ranks, BLOCK=BLOCK, CHUNK=CHUNK, num_warps=4)
    return perm, offsets


__all__ = ["csr_by_index", "csr_by_sort", "fits_kernel", "MAX_LEN", "MAX_ROWS"]
