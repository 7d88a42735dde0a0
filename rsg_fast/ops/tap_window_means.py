"""``relu_tap_window_means``: the contrastive module's ReLU, 3x3 convolution and average pooling
(Eq. 2) without the convolution.

    S = relu_tap_window_means(pre)    # pre: (P, H, W, D) 1x1-conv output, channels-last -> (P, D, 3, 3)
    pooled = torch.addmm(conv3.bias, S.flatten(1), conv3.weight.flatten(1).t())

equals ``conv3(relu(pre)).mean((2, 3))`` (see ``rsg_fast/kernels/tap_window_means.py``): about
H*W times fewer multiply-adds than the D x D convolution, relu(pre) is never stored (the backward
keeps ``pre`` for the ReLU mask), and S comes in the weight's own (D, 3, 3) layout, so the product
reads the weight as it is stored. Plain reference: ``rsg_fast.ops.naive.tap_window_means``.
"""
import torch
from torch import Tensor

from rsg_fast.backend import resolve_backend
from rsg_fast.ops._common import acc_dtype, check_tensor, define, double_backward, interpreter_guard, kernels

__all__ = ["relu_tap_window_means"]


def _tap_reads(n: int, device, dtype) -> Tensor:
    """(3, n): entry [i, h] = 1 when tap i of a 3x3, padding-1 convolution reads position h."""
    reads = torch.ones(3, n, device=device, dtype=dtype)
    reads[0, n - 1] = 0        # tap 0 reads positions 0 .. n-2
    reads[2, 0] = 0            # tap 2 reads positions 1 .. n-1
    return reads


def _forward_torch(pre: Tensor) -> Tensor:
    """The window sums are separable in h and w: one product with the rows' read masks over the map,
    a small one with the columns' (matrix products: fast on the CPU, and plainly differentiable). A
    mask's 0 times an inf is NaN, so a +inf or NaN in a map spoils all nine of its sums (docs/ops-contract.md)."""
    P, H, W, D = pre.shape
    acc = acc_dtype(pre.dtype)
    a = pre.to(acc).relu()
    by_row = torch.matmul(_tap_reads(H, pre.device, acc), a.reshape(P, H, W * D)).view(P, 3, W, D)
    # (P, D, 3, W) @ (W, 3): a matmul, not an einsum, whose bmm inductor cannot lay out for a
    # data-dependent P (the generation phase's pair count)
    sums = torch.matmul(by_row.permute(0, 3, 1, 2), _tap_reads(W, pre.device, acc).t())   # (P, D, 3, 3)
    return (sums / (H * W)).contiguous()


def _backward_torch(pre: Tensor, grad: Tensor) -> Tensor:
    """grad_pre[p, h, w, d] = [pre > 0] / HW * sum over the taps whose windows hold (h, w) of grad[p, d, i, j]:
    the forward's two products transposed, then ReLU's backward."""
    P, H, W, D = pre.shape
    acc = acc_dtype(pre.dtype)
    by_col = torch.matmul(grad.to(acc) / (H * W), _tap_reads(W, pre.device, acc))          # (P, D, 3, W)
    by_col = by_col.permute(0, 2, 3, 1).contiguous().view(P, 3, W * D)                     # (P, 3, W*D)
    full = torch.matmul(_tap_reads(H, pre.device, acc).t(), by_col).view(P, H, W, D)
    # ReLU's backward written over `full` (threshold_backward's out= form; masked_fill_ with a bool
    # mask was 13x slower on the CPU): no second map-sized tensor
    full = torch.ops.aten.threshold_backward.grad_input(full, pre.to(acc), 0, grad_input=full)
    return full.to(pre.dtype)


@define("relu_tap_window_means")
def _relu_tap_window_means(pre: Tensor, backend: str) -> Tensor:
    if backend == "triton":
        interpreter_guard(pre)
        return kernels("tap_window_means").relu_tap_window_means_forward(pre, acc_dtype(pre.dtype))
    return _forward_torch(pre)


@define("relu_tap_window_means_backward")
def _relu_tap_window_means_backward(pre: Tensor, grad: Tensor, backend: str) -> Tensor:
    if backend == "triton":
        interpreter_guard(pre)
        return kernels("tap_window_means").relu_tap_window_means_backward(pre, grad)
    return _backward_torch(pre, grad)


def _setup_context(ctx, inputs, output):
    ctx.backend = inputs[1]
    ctx.save_for_backward(inputs[0])


def _backward(ctx, grad):
    (pre,) = ctx.saved_tensors
    if torch.is_grad_enabled():   # create_graph=True: differentiable recomputation
        return double_backward(_forward_torch, (pre,), (True,), (grad,))[0], None
    return torch.ops.rsg_fast.relu_tap_window_means_backward(pre, grad, ctx.backend), None


_relu_tap_window_means.register_autograd(_backward, setup_context=_setup_context)


def relu_tap_window_means(pre: Tensor, *, backend: str | None = "auto") -> Tensor:
    """S[p, d, i, j] = the mean over all H*W output positions of the input that tap (i, j) of a 3x3,
    padding-1 convolution reads from relu(pre) (zero outside the map), i.e. the sum of relu(pre)[p, :, :, d]
    over that tap's window divided by H*W. pre: (P, H, W, D) floating; returns (P, D, 3, 3) in the acc
    dtype (float64 for float64 input, else float32); differentiable w.r.t. pre."""
    check_tensor("pre", pre, 4)
    if min(pre.shape[1:3]) < 1:
        raise ValueError(f"pre must have H, W >= 1, got shape {tuple(pre.shape)}")
    return torch.ops.rsg_fast.relu_tap_window_means(pre, resolve_backend(backend, pre.device))
