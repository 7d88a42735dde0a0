"""kernels/csr.py: the one-launch CSR of an index (stable perm + row offsets) equals the stable sort's,
bit for bit, wherever the kernel runs, and the sort takes over past the documented limits."""
from __future__ import annotations

import pytest
import torch

from rsg_fast.kernels import csr
from rsg_fast.kernels._common import poisoned_outputs


@pytest.fixture
def launches(monkeypatch):
    """The grids csr_by_index launches (the kernel still runs)."""
    seen, real = [], csr.launch

    def counting(kernel, programs):
        seen.append(tuple(programs))
        return real(kernel, programs)

    monkeypatch.setattr(csr, "launch", counting)
    return seen


def _check(index, n_rows, launches):
    """The kernel's (perm, offsets) equal the sort's, all written (poisoned first), in one launch."""
    before = len(launches)
    with poisoned_outputs():
        perm, offsets = csr.csr_by_index(index, n_rows)
    assert len(launches) == before + 1
    want_perm, want_offsets = csr.csr_by_sort(index, n_rows)
    assert perm.dtype == want_perm.dtype == torch.int64 and offsets.dtype == want_offsets.dtype == torch.int64
    assert torch.equal(perm, want_perm), (index, perm, want_perm)
    assert torch.equal(offsets, want_offsets), (index, offsets, want_offsets)


def test_the_sort_reference_is_the_csr():
    """What both paths must give, written out: rows' positions in increasing order, and where each row starts."""
    perm, offsets = csr.csr_by_sort(torch.tensor([2, 0, 2, 1, 0]), 4)
    assert perm.tolist() == [1, 4, 3, 0, 2] and offsets.tolist() == [0, 2, 3, 5, 5]


CASES = {   # name: (index, n_rows); BLOCK = CHUNK = 64
    "random with repeats, 3 rank and 1 offset programs": (torch.randint(0, 10, (150,)), 10),
    "all equal": (torch.full((130,), 3), 5),
    "strictly decreasing, 3 programs of each role": (torch.arange(129, -1, -1), 130),
    "empty": (torch.zeros(0, dtype=torch.long), 1),
    "empty, two offset programs": (torch.zeros(0, dtype=torch.long), 70),
    "no rows (an empty batch's index-add)": (torch.zeros(0, dtype=torch.long), 0),
    "one position": (torch.tensor([0]), 1),
    "one position, many rows": (torch.tensor([37]), 40),
    "one row": (torch.zeros(100, dtype=torch.long), 1),
    "rows far beyond the positions": (torch.tensor([999, 3, 500, 3, 0]), 1000),
    "a whole block": (torch.randint(0, 64, (64,)), 63),
    "ImageNet-LT's labels": (torch.randint(0, 1000, (256,)), 1000),
}


@pytest.mark.parametrize("case", list(CASES))
def test_matches_the_stable_sort(case, launches):
    _check(*CASES[case], launches)


def test_values_outside_the_rows_are_left_out_as_by_the_sort(launches):
    """Labels passed with check_target=False: negatives before offsets[0], too large ones after
    offsets[n_rows]; every perm entry is still a position and offsets stay in [0, len]."""
    index = torch.randint(-3, 12, (150,))
    _check(index, 8, launches)
    perm, offsets = csr.csr_by_index(index, 8)
    assert offsets[0] == (index < 0).sum() and offsets[-1] == (index < 8).sum()
    assert sorted(perm.tolist()) == list(range(150))


@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.uint8])
def test_other_integer_dtypes(dtype, launches):
    _check(torch.randint(0, 9, (100,)).to(dtype), 10, launches)


@pytest.mark.parametrize("dtype, n_rows", [(torch.uint8, 300), (torch.int8, 200), (torch.int16, 33000)])
def test_more_rows_than_the_index_dtype_holds(dtype, n_rows, launches):
    """Row numbers past the index dtype's range (the sort's searchsorted must not wrap them): the
    offsets of the rows beyond the largest value are all len, on both paths."""
    index = torch.randint(0, 100, (100,)).to(dtype)
    _check(index, n_rows, launches)
    perm, offsets = csr.csr_by_sort(index, n_rows)
    assert (offsets[100:] == 100).all() and offsets[0] == 0


@pytest.mark.parametrize("length, n_rows, kernel", [
    (csr.MAX_LEN, 3, True), (csr.MAX_LEN + 1, 3, False),
    (100, csr.MAX_ROWS, True), (100, csr.MAX_ROWS + 1, False),
])
def test_the_limits_are_where_the_sort_takes_over_with_the_same_result(length, n_rows, kernel, launches,
                                                                       monkeypatch):
    """At MAX_LEN positions (MAX_ROWS rows) the kernel, one more and the sort; the same bits on both
    sides. Tiles of 1024 here only so the interpreter takes seconds, not minutes (the result does not
    depend on them: the other tests run the real ones)."""
    monkeypatch.setattr(csr, "BLOCK", 1024)
    monkeypatch.setattr(csr, "CHUNK", 1024)
    index = torch.randint(0, n_rows, (length,))
    index[::7] = n_rows - 1                                   # long runs of one value
    assert csr.fits_kernel(length, n_rows) == kernel
    if kernel:
        _check(index, n_rows, launches)
    else:
        perm, offsets = csr.csr_by_index(index, n_rows)
        assert not launches
        want = csr.csr_by_sort(index, n_rows)
        assert torch.equal(perm, want[0]) and torch.equal(offsets, want[1])


def test_the_largest_kernel_grid(monkeypatch):
    """One program per 64 positions and per 64 offsets, well inside CUDA's limit along axis 0."""
    recorded = []
    monkeypatch.setattr(csr, "launch", lambda kernel, programs: recorded.append(programs) or (lambda *a, **k: None))
    csr.csr_by_index(torch.empty(csr.MAX_LEN, dtype=torch.long), csr.MAX_ROWS)
    assert recorded == [(csr.MAX_LEN // 64 + csr.MAX_ROWS // 64 + 1,)]


def test_an_unknown_length_takes_the_sort_without_a_guard():
    """Under torch.compile the pair count is an unbacked SymInt: the sort, and no guard on it."""
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    env = ShapeEnv()
    m = env.create_unbacked_symint()
    assert not csr.fits_kernel(m, 10)
    assert not csr.fits_kernel(10, m)
    assert not env.guards
