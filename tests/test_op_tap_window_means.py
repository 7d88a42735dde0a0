"""ops.relu_tap_window_means (Eq. 2's pooled 3x3 convolution) on both backends against the plain
reference (rsg_fast.ops.naive.tap_window_means, from a zero-padded map) and against the convolution."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from helpers import BACKENDS, DEVICE, close, grads, leaf
from rsg_fast import ops
from rsg_fast.kernels._common import poisoned_outputs
from rsg_fast.ops import naive

SHAPES = [(1, 1, 1, 1), (2, 3, 5, 7), (3, 1, 4, 130), (2, 5, 1, 3), (2, 6, 6, 20),   # P, H, W, D
          (2, 7, 5, 130)]   # D > 128: five channel blocks of 32 (the last partial), H*W = 35 > 32: two spatial blocks


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_values_and_grads(backend, shape):
    out = _compare_with_float64_reference(torch.randn(*shape, device=DEVICE), backend)
    assert out.dtype == torch.float32 and out.shape == (shape[0], shape[3], 3, 3)


def _compare_with_float64_reference(pre, backend):
    """The op's values and grad_pre (kept in ``pre``'s strides) against the naive float64 reference."""
    pre_r = leaf(pre.double())
    ref = naive.tap_window_means(pre_r)
    w = torch.randn_like(ref)
    (ref_grad,) = grads([ref], [pre_r], [w])
    pre_a = leaf(pre)
    with poisoned_outputs():
        out = ops.relu_tap_window_means(pre_a, backend=backend)
        (got,) = grads([out], [pre_a], [w])
    close(out, ref)
    close(got, ref_grad)
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
