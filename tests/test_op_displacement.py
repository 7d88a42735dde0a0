"""ops.displacement (Eq. 3) on both backends against the plain fp64 reference
(rsg_fast.ops.naive.displacement). Tolerances: tests/helpers.py."""
from __future__ import annotations

import pytest
import torch

from helpers import BACKENDS, DEVICE, LAYOUTS, close, grads, layout, leaf
from rsg_fast import ops
from rsg_fast.kernels._common import poisoned_outputs
from rsg_fast.ops import naive

SHAPES = [  # N, M, R, C, H, W
    (1, 1, 1, 1, 1, 1),
    (3, 7, 4, 5, 3, 7),
    (4, 5, 9, 17, 5, 3),
    (2, 0, 3, 4, 2, 2),      # no pairs
]


def _inputs(N, M, R, C, H, W, dtype=torch.float32):
    x = torch.randn(N, C, H, W, device=DEVICE).to(dtype)
    index = torch.randint(0, N, (M,), device=DEVICE)
    if M > 2:
        index[2] = index[1]                      # repeated rows: the backward's index-add
    row = torch.randint(0, R, (N,), device=DEVICE)
    table = torch.randn(R, C, device=DEVICE).to(dtype)
    return x, index, row, table


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", LAYOUTS)
@pytest.mark.parametrize("shape", SHAPES)
def test_values_and_grads(backend, kind, shape):
    x, index, row, table = _inputs(*shape)
    x = layout(x, kind)
    ref_in = [leaf(x.double()), leaf(table.double())]
    ref = naive.displacement(ref_in[0], index, row, ref_in[1])
    w = torch.randn_like(ref)
    ref_grads = grads([ref], ref_in, [w])
    ins = [leaf(x), leaf(table)]
    with poisoned_outputs():
        out = ops.displacement(ins[0], index, row, ins[1], backend=backend)
        got = grads([out], ins, [w])
    assert out.dtype == x.dtype and out.is_contiguous()
    close(out, ref)
    for g, r, t in zip(got, ref_grads, ins):
        close(g if g is not None else torch.zeros_like(t), r if r is not None else torch.zeros_like(t))
    if got[0] is not None and kind != "sliced":
        assert got[0].stride() == ins[0].stride()       # grad_x keeps x's layout


@pytest.mark.parametrize("backend", BACKENDS)
def test_fp64_gradcheck(backend):
    x, index, row, table = _inputs(3, 4, 3, 2, 2, 3, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a, t: ops.displacement(a, index, row, t, backend=backend),
                                    (leaf(x), leaf(table)))


def test_fp64_gradgradcheck():
    x, index, row, table = _inputs(2, 3, 2, 2, 2, 2, dtype=torch.float64)
    assert torch.autograd.gradgradcheck(lambda a, t: ops.displacement(a, index, row, t, backend="torch"),
                                        (leaf(x), leaf(table)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_half_precision_maps(backend):
    x, index, row, table = _inputs(3, 4, 3, 7, 5, 5)
    x = x.half()
    out = ops.displacement(x, index, row, table, backend=backend)
    assert out.dtype == torch.float16
    close(out, naive.displacement(x.double(), index, row, table.double()), rtol=2e-3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_check_indices_false_skips_only_the_range_checks(backend):
    x, index, row, table = _inputs(4, 3, 5, 3, 2, 5)
    torch.testing.assert_close(ops.displacement(x, index, row, table, backend=backend, check_indices=False),
                               ops.displacement(x, index, row, table, backend=backend), rtol=0, atol=0)
    with pytest.raises(TypeError, match="index"):
        ops.displacement(x, index.float(), row, table, backend=backend, check_indices=False)


def test_bad_arguments():
    x, index, row, table = _inputs(3, 4, 5, 3, 2, 2)
    with pytest.raises(TypeError, match="x must be a floating-point"):
        ops.displacement(x.int(), index, row, table)
    with pytest.raises(ValueError, match="table must have shape"):
        ops.displacement(x, index, row, table[:, :2])
    with pytest.raises(ValueError, match=r"index must hold values in \[0, 3\)"):
        ops.displacement(x, torch.tensor([0, 3]), row, table)
    with pytest.raises(ValueError, match=r"row must hold values in \[0, 5\)"):
        ops.displacement(x, index, torch.tensor([0, 1, 5]), table)
    with pytest.raises(ValueError, match="row must have shape"):
        ops.displacement(x, index, row[:2], table)
    with pytest.raises(ValueError, match="table must be on the same device as x"):
        ops.displacement(x, index, row, table.to("meta"))
