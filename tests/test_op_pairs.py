"""ops.batch_plan / ops.pair_indices (Algorithm 1's bookkeeping) on both backends against the
published segment loop (as ReferenceRSG writes it) on random batches."""
from __future__ import annotations

import random

import pytest
import torch

from helpers import BACKENDS, DEVICE
from rsg_fast import ops
from rsg_fast.parameters import segment_plan


def _published_pairs(is_head, beta):
    heads, tails = torch.nonzero(is_head).flatten(), torch.nonzero(~is_head).flatten()
    nh, nt = len(heads), len(tails)
    if nh == 0 or nt == 0:
        return 0, heads[:0], tails[:0]
    segment, _ = segment_plan(nh, nt, beta)
    h_parts, t_parts = [], []
    for j in range(segment):
        if nh >= nt:
            h_parts.append(heads[j * nt:(j + 1) * nt])
            t_parts.append(tails)
        else:
            h_parts.append(heads)
            t_parts.append(tails[j * nh:(j + 1) * nh])
    return sum(len(p) for p in h_parts), torch.cat(h_parts), torch.cat(t_parts)


@pytest.mark.parametrize("backend", BACKENDS)
def test_random_batches_match_the_published_segments(backend):
    rng = random.Random(0)
    for _ in range(60):
        N, L = rng.randint(0, 40), rng.randint(1, 7)
        labels = torch.randint(0, L, (N,), device=DEVICE)
        table = torch.zeros(L, dtype=torch.bool, device=DEVICE)
        table[rng.sample(range(L), rng.randint(0, L))] = True
        beta = rng.choice([1.0, 0.7, 0.5, 0.3, 0.1, 0.01])
        is_head, counts = ops.batch_plan(labels, table, beta, backend=backend)
        expect_head = table[labels]
        n_new, heads, tails = _published_pairs(expect_head, beta)
        n_head, got_new, low, high = counts.tolist()
        assert torch.equal(is_head, expect_head) and n_head == int(expect_head.sum()) and got_new == n_new
        if N:
            assert (low, high) == (int(labels.min()), int(labels.max()))
        head_index, tail_index = ops.pair_indices(is_head, counts, n_new, backend=backend)
        assert torch.equal(head_index, heads) and torch.equal(tail_index, tails)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n_head, n_tail", [(400, 300), (200, 500)])
def test_more_pairs_than_one_block(backend, n_head, n_tail):
    """300 and 400 pairs: the pair kernel writes them in blocks of 256 (the random batches above make
    at most 40)."""
    g = torch.Generator().manual_seed(1)
    labels = torch.cat([torch.zeros(n_head, dtype=torch.long), torch.ones(n_tail, dtype=torch.long)])
    labels = labels[torch.randperm(n_head + n_tail, generator=g)].to(DEVICE)
    table = torch.tensor([True, False], device=DEVICE)
    is_head, counts = ops.batch_plan(labels, table, 1.0, backend=backend)
    n_new, heads, tails = _published_pairs(is_head, 1.0)
    assert counts[1] == n_new > 256
    head_index, tail_index = ops.pair_indices(is_head, counts, n_new, backend=backend)
    assert torch.equal(head_index, heads) and torch.equal(tail_index, tails)


@pytest.mark.parametrize("backend", BACKENDS)
def test_segment_arithmetic_rounds_as_python_floats(backend):
    """beta = 0.01 (step imbalance): 300 heads and 1 tail give int(300 * 0.01 / 1) = 3 segments in
    Python's float64; a beta rounded to fp32 (0.0099999998) would give int(2.99999993) = 2. The order
    counts too: 70 heads, 3 tails, beta = 0.3 give int(70 * 0.3 / 3) = int(7.0) = 7 in the published
    order, int(70 / 3 * 0.3) = int(6.999999999999999) = 6 in the other."""
    for n_head, n_tail, beta in ((200, 2, 0.01), (300, 1, 0.01), (700, 1, 0.01), (70, 3, 0.3)):
        labels = torch.tensor([0] * n_head + [1] * n_tail, device=DEVICE)
        table = torch.tensor([True, False], device=DEVICE)
        counts = ops.batch_plan(labels, table, beta, backend=backend)[1].tolist()
        segment, pairs = segment_plan(n_head, n_tail, beta)
        assert counts[1] == segment * pairs


@pytest.mark.parametrize("backend", BACKENDS)
def test_labels_outside_the_table_are_reported_not_read(backend):
    labels = torch.tensor([0, 5, -2], device=DEVICE)
    is_head, counts = ops.batch_plan(labels, torch.tensor([True, False], device=DEVICE), 1.0, backend=backend)
    assert counts.tolist()[2:] == [-2, 5]
    # all labels below the table: the largest is -1 (not the 0 of the kernel's padding lanes)
    is_head, counts = ops.batch_plan(torch.tensor([-3, -1], device=DEVICE), torch.tensor([True], device=DEVICE),
                                     1.0, backend=backend)
    assert counts.tolist()[2:] == [-3, -1]


def counts_of(labels, table):
    return ops.batch_plan(labels, table, 1.0)[1]


def test_arguments_are_checked():
    labels = torch.tensor([0, 1, 1])
    table = torch.tensor([True, False])
    for beta in (0, 3, -1.0, True):
        with pytest.raises(ValueError, match="beta"):
            ops.batch_plan(labels, table, beta)
    with pytest.raises(TypeError, match="head_table must be a non-empty 1-D bool tensor, got a 1-D torch.int64 "
                                        "tensor of 2 elements"):
        ops.batch_plan(labels, table.long(), 0.5)
    # any integer dtype of labels is taken, and a float one is refused without claiming int64 is the only one
    assert torch.equal(ops.batch_plan(labels.to(torch.int32), table, 1.0)[1], counts_of(labels, table))
    with pytest.raises(TypeError, match=r"labels must be an integer tensor \(any integer dtype\), got dtype "
                                        "torch.float32"):
        ops.batch_plan(labels.float(), table, 0.5)
    is_head, counts = ops.batch_plan(labels, table, 1.0)
    with pytest.raises(ValueError, match="n_new"):
        ops.pair_indices(is_head, counts, 4)
    # each of these crashed inside the kernel or read out of bounds before it was checked
    for bad_head in (is_head[None], is_head.long(), [True, False, True]):
        with pytest.raises(TypeError, match="is_head"):
            ops.pair_indices(bad_head, counts, 1)
    for bad_counts in (counts[:0], counts.double(), counts[None], counts.tolist()):
        with pytest.raises(TypeError, match="counts"):
            ops.pair_indices(is_head, bad_counts, 1)
    for bad_n in (True, 1.0, counts[1]):
        with pytest.raises(TypeError, match="n_new"):
            ops.pair_indices(is_head, counts, bad_n)
    with pytest.raises(ValueError, match="n_new"):
        ops.pair_indices(is_head, counts, -1)
    # counts of another batch, or more pairs than counts[1]: named at once where counts is on the CPU
    with pytest.raises(ValueError, match=r"counts must be batch_plan's for this is_head: counts\[0\] = 3"):
        ops.pair_indices(is_head, torch.tensor([3, 0, 0, 1]), 0)
    with pytest.raises(ValueError, match=r"n_new must be counts\[1\] of batch_plan, at most 2 here, got 3"):
        ops.pair_indices(is_head, counts, 3)
    import numpy as np
    assert [t.tolist() for t in ops.pair_indices(is_head, counts, np.int64(1))] == \
        [t.tolist() for t in ops.pair_indices(is_head, counts, 1)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n_head, counts_n_head", [(5, 5), (0, 0), (2, 4), (3, 9)])
def test_inconsistent_counts_never_index_outside_the_batch(backend, n_head, counts_n_head):
    """On a GPU the op cannot check n_new and counts against is_head without a synchronisation, so the
    registered op (what the public one calls) must stay in bounds for any of them: all heads or all
    tails with n_new > counts[1] read one past the batch before (the sanitizer's bounds check), and
    counts from another batch further. Wrong pairs, but indices of the batch."""
    N = 5
    is_head = torch.arange(N, device=DEVICE) < n_head
    counts = torch.tensor([counts_n_head, 0, 0, 1], device=DEVICE)
    for n_new in range(N + 1):
        heads, tails = torch.ops.rsg_fast.pair_indices(is_head, counts, n_new, backend)
        assert heads.shape == tails.shape == (n_new,)
        assert ((heads >= 0) & (heads < N) & (tails >= 0) & (tails < N)).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_empty_batch_has_label_range_zero(backend):
    """No labels: the Triton kernel's min/max identities (int64 max and min) are not a label range."""
    labels = torch.zeros(0, dtype=torch.int64, device=DEVICE)
    is_head, counts = ops.batch_plan(labels, torch.tensor([True, False], device=DEVICE), 1.0, backend=backend)
    assert is_head.shape == (0,) and counts.tolist() == [0, 0, 0, 0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_segment_arithmetic_is_float64_not_float32(backend):
    """90 heads (or tails) and 1 of the other, beta = 0.7: Python's 90 * 0.7 = 62.99999999999999
    gives 62 segments; the same product in fp32 rounds to 63.0. The cases above round alike in fp32
    and fp64, so a float32 segment computation passed them."""
    for n_head, n_tail in ((90, 1), (1, 90), (180, 1)):
        labels = torch.tensor([0] * n_head + [1] * n_tail, device=DEVICE)
        table = torch.tensor([True, False], device=DEVICE)
        counts = ops.batch_plan(labels, table, 0.7, backend=backend)[1].tolist()
        segment, pairs = segment_plan(n_head, n_tail, 0.7)
        assert segment == (62 if n_head + n_tail == 91 else 125) and counts[1] == segment * pairs
