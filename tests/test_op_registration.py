"""Every fused op is a torch.library custom op in the rsg_fast namespace that passes
torch.library.opcheck (schema, fake/meta implementation, autograd registration, AOT dispatch with
dynamic shapes): on the CPU with the PyTorch path, and on CUDA with the Triton kernels. Under the
Triton interpreter (CPU) the kernels cannot run on fake tensors, so there the Triton path is
checked for its schema and autograd registration, and gives a clear error under fake tensors."""
from __future__ import annotations

import pytest
import torch

from helpers import DEVICE, requires_cuda
from rsg_fast import ops  # noqa: F401  registers the ops

ALL = ("center_assign", "center_assign_backward", "displacement", "displacement_backward", "mv_terms",
       "mv_terms_backward", "relu_tap_window_means", "relu_tap_window_means_backward", "batch_plan",
       "pair_indices")


def _samples(device, backend):
    """(op name, args) with the inputs requiring grad where the op is differentiable."""
    g = torch.Generator().manual_seed(0)

    def rand(*shape, grad=False):
        return torch.randn(*shape, generator=g).to(device).requires_grad_(grad)
    N, L, K, C, H, W, M, D = 5, 3, 4, 6, 3, 5, 4, 7
    x = rand(N, C, H, W, grad=True)
    target = torch.tensor([0, 2, 1, 2, 0], device=device)
    centers, linear, bias = rand(L, K, C, grad=True), rand(L, C, K, grad=True), rand(L, K, grad=True)
    index = torch.tensor([4, 0, 4, 2], device=device)
    row = torch.tensor([1, 11, 5, 0, 7], device=device)
    table = rand(L * K, C, grad=True)
    tv, v = rand(M, C, H, W, grad=True), rand(M, C, H, W, grad=True)
    table_of = torch.tensor([True, False, True], device=device)
    is_head, counts = ops.batch_plan(target, table_of, 0.5)
    return [
        ("center_assign", (x, target, centers, linear, bias, backend)),
        ("displacement", (x, index, row, table, backend)),
        ("mv_terms", (tv, v, x, index, row, table, "rows", backend)),
        ("mv_terms", (tv, v, x, index, row, table, "location", backend)),
        ("relu_tap_window_means", (rand(2, H, W, D, grad=True), backend)),
        ("batch_plan", (target, table_of, 0.5, backend)),
        ("pair_indices", (is_head, counts, int(counts[1]), backend)),
    ]


def test_every_op_is_registered_in_the_rsg_fast_namespace():
    for name in ALL:
        assert hasattr(torch.ops.rsg_fast, name), name


@pytest.mark.parametrize("case", range(7))
def test_opcheck_cpu_pytorch_path(case):
    name, args = _samples(torch.device("cpu"), "torch")[case]
    torch.library.opcheck(getattr(torch.ops.rsg_fast, name).default, args)


def _backward_samples(device, backend):
    """(backward op name, args) from one forward of each differentiable op."""
    g = torch.Generator().manual_seed(1)

    def rand(*shape):
        return torch.randn(*shape, generator=g).to(device)
    out = []
    for name, args in _samples(device, backend):
        if name == "center_assign":
            x, target, centers, linear, bias, be = args
            gamma, _, _, cesc, shift, dmean, mean_dist = torch.ops.rsg_fast.center_assign(*[a.detach() if isinstance(
                a, torch.Tensor) else a for a in args])
            out.append(("center_assign_backward", (x.detach(), target, centers.detach(), linear.detach(),
                        bias.detach(), gamma, mean_dist, shift, dmean, rand(*gamma.shape), None, rand(*cesc.shape),
                        True, True, True, True, be)))
        elif name == "displacement":
            x, index, row, table, be = args
            out.append(("displacement_backward", (rand(index.shape[0], *x.shape[1:]), x.detach(), index, row,
                                                  table.detach(), True, True, be)))
        elif name == "mv_terms" and args[6] == "rows":
            tv, v, x, ti, row, table, grouping, be = args
            _, _, stats = torch.ops.rsg_fast.mv_terms(tv.detach(), v.detach(), x.detach(), ti, row, table.detach(),
                                                      grouping, be)
            out.append(("mv_terms_backward", (tv.detach(), v.detach(), x.detach(), ti, row, table.detach(), stats,
                                              rand(*tv.shape), rand(2), grouping, True, True, True, True, be)))
        elif name == "relu_tap_window_means":
            pre, be = args
            out.append(("relu_tap_window_means_backward", (pre.detach(), rand(pre.shape[0], pre.shape[3], 3, 3), be)))
    return out


@pytest.mark.parametrize("case", range(4))
def test_opcheck_cpu_backward_ops(case):
    name, args = _backward_samples(torch.device("cpu"), "torch")[case]
    torch.library.opcheck(getattr(torch.ops.rsg_fast, name).default, args)


@pytest.mark.parametrize("case", range(7))
def test_triton_path_registration_under_the_interpreter(case):
    if DEVICE.type == "cuda":
        pytest.skip("covered by the full opcheck on CUDA")
    name, args = _samples(torch.device("cpu"), "triton")[case]
    op = getattr(torch.ops.rsg_fast, name).default
    torch.library.opcheck(op, args, test_utils=("test_schema", "test_autograd_registration"))
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode(allow_non_fake_inputs=True), pytest.raises(NotImplementedError, match="backend='torch'"):
        op(*args)


@requires_cuda
@pytest.mark.parametrize("case", range(7))
def test_opcheck_cuda_triton_path(case):
    name, args = _samples(torch.device("cuda"), "triton")[case]
    torch.library.opcheck(getattr(torch.ops.rsg_fast, name).default, args)


@requires_cuda
@pytest.mark.parametrize("case", range(4))
def test_opcheck_cuda_triton_backward_ops(case):
    name, args = _backward_samples(torch.device("cuda"), "triton")[case]
    torch.library.opcheck(getattr(torch.ops.rsg_fast, name).default, args)


def test_opcheck_cpu_center_assign_with_maps_without_a_gradient():
    """center_assign keeps x for its backward only when x needs a gradient; the other branch (RSG
    passes detached maps: a stand-in of x's shape, ctx.x_hw under AOT dispatch with dynamic shapes)
    is the one every RSG training step takes, and the samples above all give x a gradient."""
    _, (x, target, centers, linear, bias, backend) = _samples(torch.device("cpu"), "torch")[0]
    torch.library.opcheck(torch.ops.rsg_fast.center_assign.default,
                          (x.detach(), target, centers, linear, bias, backend))
