"""The Triton launchers never ask CUDA for a grid beyond its limits (axis 0 up to 2**31 - 1, axes 1
and 2 up to 65535 programs), nor a kernel loop past its 32-bit counter (H * W or C up to 2**30):
past the sizes the kernels can take, the op raises a ValueError that names the argument and its
largest size; at that size it launches.

Nothing runs: each kernel module's ``launch`` is replaced by one that records the grid, so the maps
here are allocated (torch.empty, never written: the OS maps no pages for them) but never read.
"""
from __future__ import annotations

import pytest
import torch

from rsg_fast import ops
from rsg_fast.kernels import center_assign, csr, displacement, mv_terms, tap_window_means

MAX_GRID = (2**31 - 1, 65535, 65535)    # CUDA's limits on grid axes x, y, z
T = "triton"


@pytest.fixture
def grids(monkeypatch):
    """The grids launched while the test runs; a grid beyond CUDA's limits fails the test."""
    seen = []

    def record(kernel, programs):
        assert all(n <= most for n, most in zip(programs, MAX_GRID)), \
            f"{kernel.__name__} launched with grid {programs}"
        seen.append(tuple(programs))
        return lambda *args, **kwargs: None

    for module in (center_assign, csr, displacement, mv_terms, tap_window_means):
        monkeypatch.setattr(module, "launch", record)
    return seen


def _center_assign_inputs(C, K=1, HW=1):
    x = torch.empty(1, C, 1, HW, dtype=torch.float16)
    return x, torch.zeros(1, dtype=torch.long), torch.empty(1, K, C, dtype=torch.float16), \
        torch.empty(1, C, K, dtype=torch.float16), torch.empty(1, K, dtype=torch.float16)


def _center_assign(C, HW=1):
    ops.center_assign(*_center_assign_inputs(C, HW=HW), backend=T)


def _center_assign_backward(C, K, HW=1):
    x, target, centers, linear, bias = _center_assign_inputs(C, K, HW)
    gamma, mean_dist, g = torch.empty(1, K), torch.empty(1, K), torch.empty(1, K)
    shift, dmean = torch.empty(1, C), torch.empty(1, C)
    torch.ops.rsg_fast.center_assign_backward(x, target, centers, linear, bias, gamma, mean_dist, shift, dmean,
                                              g, g, None, True, True, True, True, T)


def _displacement(C, backward=False, HW=1):
    x, table, index = torch.empty(1, C, 1, HW, dtype=torch.float16), torch.empty(1, C, dtype=torch.float16), \
        torch.zeros(1, dtype=torch.long)
    if backward:
        torch.ops.rsg_fast.displacement_backward(torch.empty_like(x), x, index, index, table, True, False, T)
    else:
        ops.displacement(x, index, index, table, backend=T)


def _mv_terms(HW, backward=False, C=64, grouping="location"):   # 64 channels or more: 16 positions per program
    tv = torch.empty(1, C, 1, HW, dtype=torch.float16)
    index, table = torch.zeros(1, dtype=torch.long), torch.empty(1, C, dtype=torch.float16)
    if backward:
        torch.ops.rsg_fast.mv_terms_backward(tv, tv, tv, index, index, table, torch.empty(1, HW, 5), None,
                                             torch.zeros(2), grouping, True, True, False, False, T)
    else:
        ops.mv_terms(tv, tv, tv, index, index, table, grouping, backend=T)


def _tap_window_means(D, backward=False, HW=1):
    pre = torch.empty(1, 1, HW, D, dtype=torch.float16)
    if backward:
        torch.ops.rsg_fast.relu_tap_window_means_backward(pre, torch.empty(1, D, 3, 3), T)
    else:
        ops.relu_tap_window_means(pre, backend=T)


# grid axis 1 (blocks of channels or positions): (call with a size, the largest size, what the error names)
CASES = {
    "center_assign": (_center_assign, 65535 * 32, r"x\.shape\[1\] \(C\)"),
    "center_assign backward, K = 2048": (lambda C: _center_assign_backward(C, 2048), 65535,
                                         r"x\.shape\[1\] \(C, at K = 2048\)"),
    "center_assign backward, K = 1": (lambda C: _center_assign_backward(C, 1), 65535 * 32, r"x\.shape\[1\] \(C\)"),
    "displacement": (_displacement, 65535 * 128, r"x\.shape\[1\] \(C\)"),
    "displacement backward": (lambda C: _displacement(C, True), 65535 * 128, r"x\.shape\[1\] \(C\)"),
    "mv_terms": (_mv_terms, 65535 * 16, r"H \* W of tv"),
    "mv_terms backward": (lambda HW: _mv_terms(HW, True), 65535 * 16, r"H \* W of tv"),
    # "rows" takes one whole 1024-channel vector per program, and 64-channel chunks past 65535 of them
    "mv_terms rows, C = 1024": (lambda HW: _mv_terms(HW, C=1024, grouping="rows"), 65535 * 16, r"H \* W of tv"),
    "mv_terms rows backward, C = 1024": (lambda HW: _mv_terms(HW, True, C=1024, grouping="rows"), 65535 * 16,
                                         r"H \* W of tv"),
    "relu_tap_window_means": (_tap_window_means, 65535 * 128, r"pre\.shape\[3\] \(D\)"),
    "relu_tap_window_means backward": (lambda D: _tap_window_means(D, True), 65535 * 128, r"pre\.shape\[3\] \(D\)"),
}
# what a kernel loop walks with a 32-bit counter (Triton drops a loop whose bound passes 2**31)
EXTENT = 2**30
EXTENT_CASES = {
    "center_assign": (lambda HW: _center_assign(1, HW=HW), r"H \* W of x"),
    "center_assign backward": (lambda HW: _center_assign_backward(1, 1, HW=HW), r"H \* W of x"),
    "displacement": (lambda HW: _displacement(1, HW=HW), r"H \* W of x"),
    "displacement backward": (lambda HW: _displacement(1, True, HW=HW), r"H \* W of x"),
    "mv_terms": (lambda C: _mv_terms(1, C=C), r"tv\.shape\[1\] \(C\)"),
    "mv_terms backward": (lambda C: _mv_terms(1, True, C=C), r"tv\.shape\[1\] \(C\)"),
    "relu_tap_window_means": (lambda HW: _tap_window_means(1, HW=HW), r"H \* W of pre"),
    "relu_tap_window_means backward": (lambda HW: _tap_window_means(1, True, HW=HW), r"H \* W of pre"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_one_past_the_largest_size_is_a_value_error(grids, case):
    call, largest, name = CASES[case]
    with pytest.raises(ValueError, match=rf"{name} up to {largest} .*got {largest + 1}; backend='torch'"):
        call(largest + 1)


@pytest.mark.parametrize("case", list(CASES))
def test_the_largest_size_launches(grids, case):
    call, largest, _ = CASES[case]
    call(largest)
    assert any(len(g) > 1 and g[1] == MAX_GRID[1] for g in grids), grids    # the limit is exact


@pytest.mark.parametrize("case", list(EXTENT_CASES))
def test_loop_extent_past_2_30_is_a_value_error(grids, case):
    call, name = EXTENT_CASES[case]
    with pytest.raises(ValueError, match=rf"{name} up to {EXTENT} .*got {EXTENT + 1}; backend='torch'"):
        call(EXTENT + 1)
    call(EXTENT)
    assert grids


@pytest.mark.parametrize("backward", [False, True])
def test_mv_terms_rows_takes_whole_vectors_until_the_grid_is_full(grids, backward):
    """At 1024 channels one vector per program up to 65535 of them; one more, and 16 per program."""
    _mv_terms(65535, backward, C=1024, grouping="rows")
    _mv_terms(65536, backward, C=1024, grouping="rows")
    assert grids == [(1, 65535), (1, 4096)]


def test_the_torch_backend_has_no_such_limit():
    x, target, centers, linear, bias = _center_assign_inputs(65535 * 32 + 1)
    gamma, _, _, _ = ops.center_assign(x.zero_(), target, centers.zero_(), linear.zero_(), bias.zero_(),
                                       backend="torch")
    assert gamma.shape == (1, 1)


def test_frozen_parameters_take_the_larger_channel_count(grids):
    """Without parameter gradients nothing launches per class: only grad_x's limit applies."""
    x, target, centers, linear, bias = _center_assign_inputs(65536, 2048)
    gamma, g = torch.empty(1, 2048), torch.empty(1, 2048)
    torch.ops.rsg_fast.center_assign_backward(x, target, centers, linear, bias, gamma, gamma, torch.empty(1, 65536),
                                              torch.empty(1, 65536), g, g, None, True, False, False, False, T)
    assert grids == [(1, 2048)]


@pytest.mark.parametrize("backward", [False, True])
def test_more_centres_than_a_triton_block_holds_is_a_value_error(grids, backward):
    """The x-walking kernels hold a class's (K, 32-channel) tile whole; Triton caps a block at 2**20
    elements (past it, a compile error deep inside Triton)."""
    def call(K):
        if backward:
            _center_assign_backward(32, K)
        else:
            ops.center_assign(*_center_assign_inputs(32, K), backend=T)
    with pytest.raises(ValueError, match=r"centers\.shape\[1\] \(K, n_center\) up to 32768 .*got 32769"):
        call(2**15 + 1)
    assert backward or not grids    # the forward rejects it before any launch
    call(2**15)
    assert grids


def test_a_symbolic_size_is_neither_checked_nor_guarded():
    """Under torch.compile the pair count reaches the launchers as an unbacked SymInt: comparing it
    with the limit would fail to trace (a data-dependent guard)."""
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    from rsg_fast.kernels import _common

    env = ShapeEnv()
    m = env.create_unbacked_symint()
    g = _common.grid("op", ("M", m, 1), ("C", 65, 32))
    assert g[0] is m and g[1] == 3
    _common.check_extent("op", "C", m)
    assert not env.guards
