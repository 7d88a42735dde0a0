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


@pytest.mark.parametrize("backend", BACKENDS)
def test_maps_with_gaps_only_between_channels(backend):
    """x = every other channel of a larger batch: each channel's (H, W) map is dense but the channels
    are not, so no dense-sample fast path applies (the "sliced" layout has gaps in every dimension)."""
    big = torch.randn(3, 10, 3, 5, device=DEVICE)
    x = big[:, ::2]
    assert x[0, 0].is_contiguous() and not x[0].is_contiguous()
    _, index, row, table = _inputs(3, 6, 4, 5, 3, 5)
    ref_in = [leaf(x.double()), leaf(table.double())]
    ref = naive.displacement(ref_in[0], index, row, ref_in[1])
    w = torch.randn_like(ref)
    ref_grads = grads([ref], ref_in, [w])
    ins = [leaf(x), leaf(table)]
    out = ops.displacement(ins[0], index, row, ins[1], backend=backend)
    close(out, ref)
    for g, r in zip(grads([out], ins, [w]), ref_grads):
        close(g, r)


@pytest.mark.parametrize("backend", BACKENDS)
def test_incoming_gradient_with_a_gapped_batch(backend):
    """The backward's gather reads the incoming gradient with its own batch stride (here every
    other sample of a larger buffer), not as if it were contiguous."""
    x, index, row, table = _inputs(3, 5, 4, 5, 3, 7)
    g = torch.randn(10, 5, 3, 7, device=DEVICE)[::2]
    xl = leaf(x)
    (got,) = torch.autograd.grad(ops.displacement(xl, index, row, table, backend=backend), xl, g)
    close(got, torch.zeros(x.shape, dtype=torch.float64).index_add_(0, index, g.double()))


@pytest.mark.parametrize("backend", BACKENDS)
def test_half_precision_gradients_are_summed_in_fp32(backend):
    """grad_x of a sample gathered many times is a sum of fp16 rows, accumulated in fp32 and rounded
    once: 40 + 100 * 0.02 = 42, where an fp16 running sum (ulp 1/32 above 32) rounds every 0.02 up
    to 1/32 and ends at 43.125."""
    x, _, row, table = _inputs(1, 0, 2, 3, 2, 2)
    xl = leaf(x.half())
    index = torch.zeros(101, dtype=torch.long, device=DEVICE)
    g = torch.full((101, 3, 2, 2), 0.02, device=DEVICE).half()
    g[0] = 40
    (got,) = torch.autograd.grad(ops.displacement(xl, index, row, table.half(), backend=backend), xl, g)
    assert got.dtype == torch.float16
    close(got, g.double().sum(0, keepdim=True), rtol=2e-3)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("x_kind, g_kind", [("channels_last", "contiguous"), ("sliced", "contiguous"),
                                            ("contiguous", "channels_last")])
def test_incoming_gradient_in_another_layout_than_x(backend, x_kind, g_kind):
    """The index-add writes grad_x in x's layout while reading the incoming gradient in its own: the
    usual case is a channels_last x with a contiguous gradient (the op's output is contiguous). The
    test above draws the gradient like the reference output, which follows x's layout, so a kernel
    that addressed grad_x with the gradient's layout code passed it."""
    x, index, row, table = _inputs(3, 7, 4, 5, 3, 7)
    x = layout(x, x_kind)
    g = layout(torch.randn(7, 5, 3, 7, device=DEVICE), g_kind)
    xl = leaf(x)
    with poisoned_outputs():
        (got,) = torch.autograd.grad(ops.displacement(xl, index, row, table, backend=backend), xl, g)
    close(got, torch.zeros(x.shape, dtype=torch.float64).index_add_(0, index, g.double()))
    if x_kind != "sliced":
        assert got.stride() == x.stride()


@pytest.mark.parametrize("backend", BACKENDS)
def test_fp64_gradients_are_summed_in_fp64(backend):
    """fp64 grad_x of a sample gathered many times is an fp64 sum (to 1e-13; an fp32 accumulator is
    off by about 1e-7 relative). gradcheck's tolerances (1e-3) let an fp32 accumulator through."""
    x, _, row, table = _inputs(2, 0, 3, 3, 2, 3, dtype=torch.float64)
    index = torch.tensor([0, 1] * 20 + [0], device=DEVICE)
    g = torch.randn(41, 3, 2, 3, dtype=torch.float64, device=DEVICE)
    xl = leaf(x)
    (got,) = torch.autograd.grad(ops.displacement(xl, index, row, table, backend=backend), xl, g)
    want = torch.zeros(x.shape, dtype=torch.float64).index_add_(0, index.cpu(), g.cpu())
    torch.testing.assert_close(got.cpu(), want, rtol=1e-13, atol=1e-13)
