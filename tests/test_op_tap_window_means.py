"""ops.relu_tap_window_means (Eq. 2's pooled 3x3 convolution) on both backends against the plain
reference (rsg_fast.ops.naive.tap_window_means, from a zero-padded map) and against the convolution."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from helpers import BACKENDS, DEVICE, close, leaf
from rsg_fast import ops
from rsg_fast.kernels import tap_window_means
from rsg_fast.kernels._common import poisoned_outputs
from rsg_fast.ops import naive
from rsg_fast.testing import tolerance

SHAPES = [(1, 1, 1, 1), (2, 3, 5, 7), (3, 1, 4, 130), (2, 5, 1, 3), (2, 6, 6, 20),   # P, H, W, D
          (2, 7, 5, 130)]   # D > 128: five channel blocks of 32 (the last partial)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_values_and_grads(backend, shape):
    out = _compare_with_float64_reference(torch.randn(*shape, device=DEVICE), backend)
    assert out.dtype == torch.float32 and out.shape == (shape[0], shape[3], 3, 3)


# (P, H, W, D) reaching each static branch of the Triton kernels at fp32, with the tiles _blocks
# gives them (BLOCK_R rows x BLOCK_W columns x BLOCK_D channels): row 0, the middle rows in whole
# groups of BLOCK_R and a masked last group, row H-1; column chunks of BLOCK_W (the first, a loop
# over the middle ones, the last; a chunk past the map re-reads column W-1), channel blocks.
BRANCH_SHAPES = {
    "H = W = 2: no middle row or column": ((2, 2, 2, 5), (1, 2, 8)),
    "H = W = 3: one middle row and column, a chunk past the map": ((2, 3, 3, 32), (1, 4, 32)),
    "two whole row groups and a partial one": ((2, 12, 5, 32), (4, 8, 32)),     # 10 middle rows = 4 + 4 + 2
    "one whole row group and a partial one": ((2, 9, 6, 32), (4, 8, 32)),       # 7 = 4 + 3
    "column chunks, the last one partial": ((2, 5, 37, 32), (2, 8, 32)),        # 37 = 8 + 3 * 8 + 5
    "one row, column chunks": ((2, 1, 40, 32), (1, 8, 32)),
    "one column, row groups": ((2, 70, 1, 32), (32, 1, 32)),                    # 68 middle rows = 32 + 32 + 4
    "D not a multiple of the channel block, column chunks": ((2, 6, 21, 40), (2, 2, 32)),
}


@pytest.mark.parametrize("case", list(BRANCH_SHAPES))
def test_branch_shapes_get_their_tiles(case):
    """The shapes above still reach the branches they are named after (see _blocks)."""
    (_, H, W, D), blocks = BRANCH_SHAPES[case]
    assert tap_window_means._blocks(H, W, D, 4) == blocks


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(BRANCH_SHAPES))
def test_values_and_grads_in_every_branch(backend, case):
    shape, _ = BRANCH_SHAPES[case]
    _compare_with_float64_reference(torch.randn(*shape, device=DEVICE), backend)


# tilings _blocks does not choose at these sizes, forced: two column chunks (no middle one), a
# one-column chunk, more rows a group than middle rows (the masked group only)
FORCED_TILINGS = [((2, 5, 4, 32), (2, 2, 32)), ((2, 4, 7, 16), (1, 4, 16)), ((2, 6, 5, 32), (4, 2, 32)),
                  ((2, 7, 3, 8), (2, 1, 8)), ((2, 9, 6, 20), (8, 8, 32))]


@pytest.mark.parametrize("shape, blocks", FORCED_TILINGS)
def test_values_and_grads_at_forced_tilings(monkeypatch, shape, blocks):
    monkeypatch.setattr(tap_window_means, "_blocks", lambda H, W, D, itemsize: blocks)
    _compare_with_float64_reference(torch.randn(*shape, device=DEVICE), "triton")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_values_and_grads(backend, dtype):
    """2-byte inputs (tiles of their own), column chunks and a partial channel block: S in fp32
    from the rounded inputs, grad_pre rounded once to the input's dtype."""
    pre = torch.randn(2, 9, 20, 40, device=DEVICE).to(dtype)
    _compare_with_float64_reference(pre, backend, grad_rtol=tolerance(dtype))


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_stays_in_the_windows_that_read_it(backend):
    """NaN activations (a corner, an edge, the middle) make every S entry whose window reads them NaN
    (the ReLU keeps NaN). The Triton kernels add no NaN elsewhere; the PyTorch path's matrix products
    also spread it to the other taps of the channel (0 * NaN). Gradients agree everywhere: at a NaN
    position both backends pass the gradient through the ReLU, as torch.relu's backward does."""
    pre = torch.randn(2, 6, 21, 40, device=DEVICE)
    pre[0, 0, 0, 3] = pre[0, 3, 10, 5] = pre[1, 5, 20, 39] = pre[1, 0, 11, 0] = float("nan")
    pre_r = leaf(pre.double())
    ref = naive.tap_window_means(pre_r)
    pre_a = leaf(pre)
    with poisoned_outputs():
        out = ops.relu_tap_window_means(pre_a, backend=backend)
        g = torch.randn_like(out)
        (got,) = torch.autograd.grad(out, pre_a, g)
    (ref_grad,) = torch.autograd.grad(ref, pre_r, g.double())
    # windows reading a corner: 4 taps; the middle: 9; a last-row corner: 4; a first-row middle column: 6
    assert ref.isnan().sum() == 4 + 9 + 4 + 6 and (out.isnan() >= ref.isnan()).all()
    if backend == "triton":
        assert torch.equal(out.isnan(), ref.isnan())
    close(out.nan_to_num(), ref.masked_fill(out.isnan(), 0))
    assert ref_grad.isfinite().all() and got[pre.isnan()].ne(0).all()
    close(got, ref_grad)


def _compare_with_float64_reference(pre, backend, grad_rtol=1e-5, grad_s=None):
    """The op's values and grad_pre (kept in ``pre``'s strides) against the naive float64 reference,
    for the incoming gradient ``grad_s`` (S's dtype, any strides; default random, contiguous)."""
    pre_r = leaf(pre.double())
    ref = naive.tap_window_means(pre_r)
    pre_a = leaf(pre)
    with poisoned_outputs():
        out = ops.relu_tap_window_means(pre_a, backend=backend)
        g = torch.randn_like(out) if grad_s is None else grad_s
        (got,) = torch.autograd.grad(out, pre_a, g)
    (ref_grad,) = torch.autograd.grad(ref, pre_r, g.double())
    close(out, ref)
    close(got, ref_grad, rtol=grad_rtol)
    return out


@pytest.mark.parametrize("backend", BACKENDS)
def test_equals_the_pooled_convolution(backend):
    P, H, W, D = 2, 5, 3, 4
    pre = torch.randn(P, H, W, D, dtype=torch.float64, device=DEVICE)
    w3 = torch.randn(D, D, 3, 3, dtype=torch.float64, device=DEVICE)
    got = torch.einsum("pdij,edij->pe", ops.relu_tap_window_means(pre, backend=backend), w3)
    expect = F.conv2d(pre.relu().permute(0, 3, 1, 2), w3, padding=1).mean(dim=(2, 3))
    torch.testing.assert_close(got, expect, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_strided_input_and_half_precision(backend):
    pre = torch.randn(2, 4, 3, 10, device=DEVICE)
    strided = pre.permute(0, 2, 1, 3).contiguous().permute(0, 2, 1, 3)     # (H, W) not one flat axis
    close(ops.relu_tap_window_means(strided, backend=backend), naive.tap_window_means(pre.double()))
    half = pre.half()
    out = ops.relu_tap_window_means(half, backend=backend)
    assert out.dtype == torch.float32
    close(out, naive.tap_window_means(half.double()), rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fp64_gradcheck(backend):
    pre = leaf(torch.randn(2, 3, 2, 3, dtype=torch.float64, device=DEVICE))
    assert torch.autograd.gradcheck(lambda t: ops.relu_tap_window_means(t, backend=backend), (pre,))


def test_fp64_gradgradcheck():
    pre = leaf(torch.randn(1, 3, 2, 2, dtype=torch.float64, device=DEVICE))
    assert torch.autograd.gradgradcheck(lambda t: ops.relu_tap_window_means(t, backend="torch"), (pre,))


def test_bad_arguments():
    with pytest.raises(ValueError, match="pre must have 4 dimensions"):
        ops.relu_tap_window_means(torch.randn(2, 3, 4))
    with pytest.raises(TypeError, match="pre must be a floating-point"):
        ops.relu_tap_window_means(torch.ones(2, 3, 4, 5, dtype=torch.long))
    for empty_map in ((2, 0, 3, 4), (2, 3, 0, 4)):   # NaN on Triton, an IndexError on the torch path
        with pytest.raises(ValueError, match="H, W >= 1"):
            ops.relu_tap_window_means(torch.randn(empty_map))


@pytest.mark.parametrize("backend", BACKENDS)
def test_size_one_width_with_any_stride_and_nan(backend):
    """W = 1 with an unusual stride on that size-1 dimension (PyTorch still calls it contiguous), and
    a NaN activation: the ReLU keeps NaN on both backends, as torch.relu does."""
    base = torch.randn(2, 5, 3, 4, device=DEVICE)
    pre = base[:, :, 1:2, :]                                   # (2, 5, 1, 4), strides (60, 12, 4, 1)
    close(ops.relu_tap_window_means(pre, backend=backend), naive.tap_window_means(pre.double()))
    pre = pre.clone()
    pre[0, 2, 0, 1] = float("nan")
    out = ops.relu_tap_window_means(pre, backend=backend)
    assert out[0, 1].isnan().any() and not out[1].isnan().any()


@pytest.mark.parametrize("backend", BACKENDS)
def test_incoming_gradient_in_any_strides(backend):
    """The backward reads grad_S (P, D, 3, 3) with its own strides (here D innermost), not as if it
    were contiguous."""
    pre = torch.randn(2, 4, 3, 5, device=DEVICE)
    g = torch.randn(2, 3, 3, 5, device=DEVICE).permute(0, 3, 1, 2)
    assert not g.is_contiguous()
    pre_r = leaf(pre.double())
    (want,) = torch.autograd.grad(naive.tap_window_means(pre_r), pre_r, g.double())
    pre_a = leaf(pre)
    (got,) = torch.autograd.grad(ops.relu_tap_window_means(pre_a, backend=backend), pre_a, g)
    close(got, want)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gapped_input_values_and_grads(backend):
    """pre = every other channel of a larger map (not dense): grad_pre comes back dense, and the
    backward writes it with its own strides, not pre's."""
    pre = torch.randn(2, 3, 4, 10, device=DEVICE)[..., ::2]
    assert not pre.is_contiguous()
    _compare_with_float64_reference(pre, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gapped_input_and_gradient_with_column_chunks(backend):
    """Every stride a runtime value: gaps along P, W and D of pre ((H, W) still one flat axis) and
    along every dimension of grad_S, over column chunks and two channel blocks."""
    pre = torch.randn(4, 5, 22, 80, device=DEVICE)[::2, :, ::2, ::2]       # (2, 5, 11, 40): W stride 160
    assert not pre.is_contiguous()
    grad_s = torch.randn(4, 80, 6, 6, device=DEVICE)[::2, ::2, ::2, ::2]
    assert not grad_s.is_contiguous()
    _compare_with_float64_reference(pre, backend, grad_s=grad_s)


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_gradient_where_pre_is_exactly_zero(backend):
    """torch.relu's backward passes nothing at pre == 0 (+0 or -0): grad_pre is 0 there, not the
    window sum of grad_S. Random normal inputs never hit the kink, so a backward testing x < 0
    instead of x <= 0 passed every other test. Middle rows in whole and partial groups, edge rows,
    column chunks and a partial channel block."""
    pre = torch.randn(2, 7, 21, 40, device=DEVICE)
    pre[torch.rand(pre.shape, device=DEVICE) < 0.25] = 0.0
    pre[torch.rand(pre.shape, device=DEVICE) < 0.1] = -0.0
    assert (pre == 0).any()
    _compare_with_float64_reference(pre, backend)
