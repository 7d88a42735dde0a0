"""``center_assign``: Eq. 1 (which of its class's K centres each sample belongs to) and Eq. 5's
first term (its squared distance to each of them), in one op. Math: docs/ops-contract.md and
``rsg_fast/kernels/center_assign.py``; plain reference: ``rsg_fast.ops.naive.center_assign``.

    gamma, dist, row, cesc = center_assign(x, target, centers, linear, bias)

replaces what ``ReferenceRSG`` writes as ``mean = x.mean((2, 3))``, the gathers
``linear[target]``, ``bias[target]``, ``centers[target]``, ``gamma = softmax(mean @ linear[y] + bias[y])``,
the N x K x C x H x W distance tensor, the argmax and the gamma-weighted sum of Eq. 5: one pass over
x forward (one or two launches), and a segmented reduction for the three parameters' gradients
backward (no index_put_ scatters).
"""
import torch
from torch import Tensor

from rsg_fast.backend import resolve_backend
from rsg_fast.ops._common import acc_dtype, check_device, check_index, check_tensor, define, double_backward
from rsg_fast.ops._common import interpreter_guard, kernels, zeros_for_scatter

__all__ = ["center_assign"]


# ----------------------------------------------------------------------------- PyTorch path

def _mean_minus_centre(shift, dmean, centers, target, acc):
    """(N, K, C): each sample's channel means minus its class's K centres, as (s - centre) + mean(x - s)
    so a large common offset cancels exactly (module docstring of the kernels)."""
    return (shift[:, None, :] - centers[target].to(acc)) + dmean[:, None, :]


def _forward_from_means(shift, dmean, HW, target, centers, linear, bias):
    """(gamma, dist - V, cesc - V) from each sample's channel means (shift + dmean), differentiable in
    the parameters: what of the forward depends on them. V, the spread of x about its means, adds V to
    dist and sum_k gamma_k V = V to cesc and changes no gradient of the parameters, so it is also the
    create_graph recomputation when x takes no gradient (x is not kept then). The centres are subtracted
    from shift before dmean is added, so a large common offset keeps its digits."""
    acc = shift.dtype
    logits = torch.einsum("nc,nck->nk", shift + dmean, linear[target].to(acc)) + bias[target].to(acc)
    gamma = torch.softmax(logits, dim=1)
    mean_dist = HW * _mean_minus_centre(shift, dmean, centers, target, acc).square().sum(dim=2)
    return gamma, mean_dist, (gamma * mean_dist).sum(dim=1)


def _forward_torch(x, target, centers, linear, bias):
    """The same algebra as the kernels, in plain (differentiable) PyTorch."""
    acc = acc_dtype(x.dtype, centers.dtype, linear.dtype, bias.dtype)
    N, C, H, W = x.shape
    K = centers.shape[1]
    shift = x[:, :, 0, 0].to(acc, copy=True)     # per-channel shift: x - shift keeps its digits
    xc = x.to(acc) - shift[:, :, None, None]
    dmean = xc.mean(dim=(2, 3))
    # V = sum (x - mean)^2 = sum (xc - dmean)^2: centred in place (one temporary), and summed by
    # vector_norm, a fast fused reduction on the CPU (var_mean was 8x slower there)
    var = torch.linalg.vector_norm(xc.sub_(dmean[:, :, None, None]), dim=(1, 2, 3)).square()
    gamma, mean_dist, _ = _forward_from_means(shift, dmean, H * W, target, centers, linear, bias)
    dist = var[:, None] + mean_dist
    row = target * K + gamma.argmax(dim=1)
    return gamma, dist, row, (gamma * dist).sum(dim=1), shift, dmean, mean_dist


def _fold_incoming(gamma, mean_dist, g_gamma, g_dist, g_cesc):
    """(g_logit, g_dist): the gradient of cesc folded into those of gamma and dist, gamma's taken
    through the softmax; None where no gradient arrives. cesc's part of g_gamma is g_cesc * mean_dist,
    not g_cesc * dist: the softmax's backward drops a constant per sample, and the constant V, thousands
    at large maps, would leave dist's rounding in the differences (kernels' module docstring)."""
    acc = gamma.dtype
    g_gamma = None if g_gamma is None else g_gamma.to(acc)
    g_dist = None if g_dist is None else g_dist.to(acc)
    if g_cesc is not None:
        g_cesc = g_cesc.to(acc)[:, None]
        g_gamma = g_cesc * mean_dist if g_gamma is None else g_gamma + g_cesc * mean_dist
        g_dist = g_cesc * gamma if g_dist is None else g_dist + g_cesc * gamma
    g_logit = None
    if g_gamma is not None:
        # g shifted by its value at the largest gamma (a constant the softmax's backward drops): where
        # the softmax saturates, sum gamma h is then nearly 0 instead of nearly g_k, and nothing cancels
        h = g_gamma - g_gamma.gather(1, gamma.argmax(1, keepdim=True))
        g_logit = gamma * (h - (gamma * h).sum(1, keepdim=True))
    return g_logit, g_dist


def _param_grads_torch(target, centers, shift, dmean, glogit, g_dist, diff, HW,
                       need_c, need_l, need_b, linear_dtype, bias_dtype):
    """The parameters' gradients from the folded incoming gradients (``_fold_incoming``) and ``diff``
    (``_mean_minus_centre``, or None where ``g_dist`` is None)."""
    L, K, C = centers.shape
    acc = shift.dtype
    # dense, as optimisers expect, but only the batch's classes are written (no pass over all L)
    gc = zeros_for_scatter((L, K, C), acc, shift) if need_c else None
    gl = zeros_for_scatter((L, C, K), acc, shift) if need_l else None
    gb = torch.zeros(L, K, dtype=acc, device=shift.device) if need_b else None
    if glogit is not None:
        if need_l:
            gl.index_add_(0, target, (shift + dmean)[:, :, None] * glogit[:, None, :])
        if need_b:
            gb.index_add_(0, target, glogit)
    if g_dist is not None and need_c:
        gc.index_add_(0, target, (-2.0 * HW) * g_dist[:, :, None] * diff)
    return tuple(shift.new_empty(0) if g is None else g.to(dtype)
                 for g, dtype in ((gc, centers.dtype), (gl, linear_dtype), (gb, bias_dtype)))


def _x_grad_torch(x, target, linear, shift, dmean, glogit, g_dist, diff):
    """grad_x from the folded incoming gradients and ``diff`` (as ``_param_grads_torch``)."""
    acc = shift.dtype
    HW = x.shape[2] * x.shape[3]
    base = torch.zeros_like(shift)
    two_s = torch.zeros_like(shift[:, :1])
    if glogit is not None:
        base = base + torch.einsum("nck,nk->nc", linear[target].to(acc), glogit) / HW
    if g_dist is not None:
        base = base + 2.0 * (g_dist[:, :, None] * diff).sum(1)
        two_s = 2.0 * g_dist.sum(1, keepdim=True)
    # one map-sized temporary, updated in place (this path is never differentiated: create_graph
    # recomputes the forward instead); subtracting shift, then dmean, keeps the digits of x - mean
    gx = x.to(acc, copy=True).sub_(shift[:, :, None, None]).sub_(dmean[:, :, None, None])
    gx.mul_(two_s[:, :, None, None]).add_(base[:, :, None, None])
    return gx.to(x.dtype)


# ----------------------------------------------------------------------------- the custom ops

@define("center_assign")
def _center_assign(x: Tensor, target: Tensor, centers: Tensor, linear: Tensor, bias: Tensor,
                   backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(gamma, dist, row, cesc, shift, dmean, mean_dist); the last three are saved for the backward."""
    if backend == "triton":
        interpreter_guard(x)
        return kernels("center_assign").center_assign_forward(x, target, centers, linear, bias)
    return _forward_torch(x, target, centers, linear, bias)


@define("center_assign_backward")
def _center_assign_backward(x: Tensor, target: Tensor, centers: Tensor, linear: Tensor, bias: Tensor,
                            gamma: Tensor, mean_dist: Tensor, shift: Tensor, dmean: Tensor, g_gamma: Tensor | None,
                            g_dist: Tensor | None, g_cesc: Tensor | None, need_x: bool, need_centers: bool,
                            need_linear: bool,
                            need_bias: bool, backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(grad_x, grad_centers, grad_linear, grad_bias); a 0-element tensor for each one not needed."""
    HW = x.shape[2] * x.shape[3]
    if backend == "triton":
        interpreter_guard(x)
        k = kernels("center_assign")
        gc, gl, gb = k.center_assign_param_grads(target, centers, shift, dmean, gamma, mean_dist, g_gamma, g_dist,
                                                 g_cesc, HW, need_centers, need_linear, need_bias, linear.dtype,
                                                 bias.dtype)
        gx = (k.center_assign_x_grad(x, target, centers, linear, shift, dmean, gamma, mean_dist, g_gamma, g_dist,
                                     g_cesc) if need_x else x.new_empty(0))
        return gx, gc, gl, gb
    # fold the incoming gradients and form mean - centre once, for both the parameters and x
    glogit, g_dist = _fold_incoming(gamma, mean_dist, g_gamma, g_dist, g_cesc)
    diff = None if g_dist is None else _mean_minus_centre(shift, dmean, centers, target, gamma.dtype)
    gc, gl, gb = _param_grads_torch(target, centers, shift, dmean, glogit, g_dist, diff, HW,
                                    need_centers, need_linear, need_bias, linear.dtype, bias.dtype)
    gx = _x_grad_torch(x, target, linear, shift, dmean, glogit, g_dist, diff) if need_x else x.new_empty(0)
    return gx, gc, gl, gb


def _setup_context(ctx, inputs, output):
    x, target, centers, linear, bias, backend = inputs
    gamma, _, row, _, shift, dmean, mean_dist = output
    ctx.backend = backend
    ctx.set_materialize_grads(False)           # absent gradients stay None: no zero tensors launched
    ctx.mark_non_differentiable(row, shift, dmean, mean_dist)
    # x itself only when it needs a gradient: the parameters' gradients read its means alone, and
    # RSG passes detached maps that it returns to the caller, whose in-place op on them (a ReLU with
    # inplace=True) must not invalidate this backward
    ctx.x_hw = None if ctx.needs_input_grad[0] else x.shape[2:]
    ctx.save_for_backward(x if ctx.needs_input_grad[0] else None, target, centers, linear, bias, gamma,
                          mean_dist, shift, dmean)


def _backward(ctx, g_gamma, g_dist, _g_row, g_cesc, _g_shift, _g_dmean, _g_mean_dist):
    x, target, centers, linear, bias, gamma, mean_dist, shift, dmean = ctx.saved_tensors
    need_x, _, need_c, need_l, need_b = ctx.needs_input_grad[:5]
    if x is None and torch.is_grad_enabled():
        # create_graph=True without x (it takes no gradient): recomputed from the saved means
        gc, gl, gb = double_backward(
            lambda *a: _forward_from_means(shift, dmean, ctx.x_hw[0] * ctx.x_hw[1], target, *a),
            (centers, linear, bias), (need_c, need_l, need_b), (g_gamma, g_dist, g_cesc))
        return None, None, gc, gl, gb, None
    if x is None:
        # a stand-in of x's shape (a view of dmean, no copy): with need_x False the fast backward
        # below reads only its shape, its device and its dtype (the acc dtype, for the unused grad_x)
        x = dmean[:, :, None, None].expand(*dmean.shape, *ctx.x_hw)
    if torch.is_grad_enabled():   # create_graph=True: differentiable recomputation
        gx, _, gc, gl, gb = double_backward(
            lambda *a: _forward_torch(*a)[:4], (x, target, centers, linear, bias),
            (need_x, False, need_c, need_l, need_b), (g_gamma, g_dist, None, g_cesc))
        return gx, None, gc, gl, gb, None
    gx, gc, gl, gb = torch.ops.rsg_fast.center_assign_backward(
        x, target, centers, linear, bias, gamma, mean_dist, shift, dmean, g_gamma, g_dist, g_cesc,
        need_x, need_c, need_l, need_b, ctx.backend)
    return (gx if need_x else None), None, (gc if need_c else None), (gl if need_l else None), \
        (gb if need_b else None), None


_center_assign.register_autograd(_backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------- public function

def center_assign(x: Tensor, target: Tensor, centers: Tensor, linear: Tensor, bias: Tensor, *,
                  backend: str | None = "auto", check_target: bool = True):
    """Centre assignment (Eq. 1) and squared distances (Eq. 5) of every sample to its class's centres.

    x: (N, C, H, W) floating, any strides; target: (N,) integer labels in [0, L);
    centers: (L, K, C), linear: (L, C, K), bias: (L, K) (RSG's parameters, any float dtype).
    Returns ``gamma`` (N, K) (softmax over the K centres), ``dist`` (N, K) (sum over C, H, W of the
    squared difference to each centre), ``row`` (N,) int64: ``target * K + argmax(gamma)``, the
    closest centre as a row of ``centers.view(L * K, C)``, and ``cesc`` (N,) = sum_k gamma * dist
    (Eq. 5's first term per sample; RSG's loss is its mean). Floating outputs are in the acc dtype
    (float64 if an input is, else float32); differentiable w.r.t. x, centers, linear and bias.
    ``check_target=False`` skips the label range check (for callers that checked it already).
    """
    check_tensor("x", x, 4)
    for name, t, ndim in (("centers", centers, 3), ("linear", linear, 3), ("bias", bias, 2)):
        check_tensor(name, t, ndim)
        check_device("x", x, name, t)
    N, C, H, W = x.shape
    if min(C, H, W) < 1:
        raise ValueError(f"x must have C, H, W >= 1, got shape {tuple(x.shape)}")
    L, K, Cc = centers.shape
    if Cc != C or K < 1 or L < 1:
        raise ValueError(f"centers must have shape (L, K, C) with C = {C} (x's channels) and L, K >= 1, "
                         f"got {tuple(centers.shape)}")
    if tuple(linear.shape) != (L, C, K):
        raise ValueError(f"linear must have shape (L, C, K) = ({L}, {C}, {K}), got {tuple(linear.shape)}")
    if tuple(bias.shape) != (L, K):
        raise ValueError(f"bias must have shape (L, K) = ({L}, {K}), got {tuple(bias.shape)}")
    target = check_index("target", target, N, L, "x", x, check_target)
    be = resolve_backend(backend, x.device)
    gamma, dist, row, cesc, _, _, _ = torch.ops.rsg_fast.center_assign(x, target, centers, linear, bias, be)
    return gamma, dist, row, cesc
