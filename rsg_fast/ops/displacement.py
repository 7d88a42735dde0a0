"""``displacement``: Eq. 3, each gathered sample minus its closest centre, in one pass.

    v = displacement(x, index, row, table)     # v[m] = x[index[m]] - table[row[index[m]]]

``table`` is the (R, C) view of the centres (``centers.view(L * K, C)``) and ``row`` (N,) each
sample's closest centre (``center_assign``'s third output), so the op follows both indices itself:
neither the closest-centre rows of the batch nor their gather for the pairs is materialised.
Plain reference: ``rsg_fast.ops.naive.displacement``; math: docs/ops-contract.md.
"""
import torch
from torch import Tensor

from rsg_fast.backend import resolve_backend
from rsg_fast.ops._common import acc_dtype, check_device, check_index, check_tensor, define, double_backward
from rsg_fast.ops._common import interpreter_guard, kernels, zeros_for_scatter

__all__ = ["displacement"]


def _forward_torch(x, index, row, table):
    acc = acc_dtype(x.dtype, table.dtype)
    centre = table[row[index]].to(acc)
    return (x.index_select(0, index).to(acc) - centre[:, :, None, None]).to(x.dtype).contiguous()


def table_grad(grad_rows: Tensor, rows: Tensor, table: Tensor) -> Tensor:
    """grad_table[r] = -sum over m with rows[m] == r of the spatial sum of grad_rows[m] (both
    backends; only functional-op users who differentiate w.r.t. the centres need it)."""
    acc = acc_dtype(grad_rows.dtype, table.dtype)
    sums = grad_rows.sum(dim=(2, 3), dtype=acc)     # on CUDA the reduction casts as it reads: no copy first
    return zeros_for_scatter(table.shape, acc, sums).index_add_(0, rows, -sums).to(table.dtype)


@define("displacement")
def _displacement(x: Tensor, index: Tensor, row: Tensor, table: Tensor, backend: str) -> Tensor:
    if backend == "triton":
        interpreter_guard(x)
        return kernels("displacement").displacement_forward(x, index, row, table)
    return _forward_torch(x, index, row, table)


@define("displacement_backward")
def _displacement_backward(grad: Tensor, x: Tensor, index: Tensor, row: Tensor, table: Tensor, need_x: bool,
                           need_table: bool, backend: str) -> tuple[Tensor, Tensor]:
    """(grad_x, grad_table); a 0-element tensor for each one not needed."""
    gx, gt = grad.new_empty(0), grad.new_empty(0)
    if need_x:
        if backend == "triton":
            interpreter_guard(x)
            gx = kernels("displacement").index_add_gather(grad, index, x)
        else:
            acc = acc_dtype(grad.dtype, x.dtype)
            gx = torch.zeros(x.shape, dtype=acc, device=x.device).index_add_(0, index, grad.to(acc))
            gx = torch.empty_like(x).copy_(gx)          # x's dtype and memory format
    if need_table:
        gt = table_grad(grad, row[index], table)
    return gx, gt


def _setup_context(ctx, inputs, output):
    x, index, row, table, backend = inputs
    ctx.backend = backend
    ctx.save_for_backward(x, index, row, table)


def _backward(ctx, grad):
    x, index, row, table = ctx.saved_tensors
    need_x, need_table = ctx.needs_input_grad[0], ctx.needs_input_grad[3]
    if torch.is_grad_enabled():   # create_graph=True: differentiable recomputation
        gx, _, _, gt = double_backward(_forward_torch, (x, index, row, table), (need_x, False, False, need_table),
                                       (grad,))
    else:
        gx, gt = torch.ops.rsg_fast.displacement_backward(grad, x, index, row, table, need_x, need_table,
                                                          ctx.backend)
    return (gx if need_x else None), None, None, (gt if need_table else None), None


_displacement.register_autograd(_backward, setup_context=_setup_context)


def displacement(x: Tensor, index: Tensor, row: Tensor, table: Tensor, *, backend: str | None = "auto",
                 check_indices: bool = True) -> Tensor:
    """Displacement of gathered samples from their centres (Eq. 3).

    x: (N, C, H, W) floating, any strides; index: (M,) integers in [0, N) (may repeat);
    row: (N,) integers in [0, R), each sample's centre; table: (R, C) floating.
    Returns ``x[index] - table[row[index]]`` broadcast over (H, W): (M, C, H, W), NCHW-contiguous,
    x's dtype; differentiable w.r.t. x and table. ``check_indices=False`` skips the range checks of
    ``index`` and ``row`` (for callers that built them in range).
    """
    check_tensor("x", x, 4)
    check_tensor("table", table, 2)
    check_device("x", x, "table", table)
    if table.shape[1] != x.shape[1]:
        raise ValueError(f"table must have shape (R, C) with C = {x.shape[1]} (x's channels), "
                         f"got {tuple(table.shape)}")
    index = check_index("index", index, None, x.shape[0], "x", x, check_indices)
    row = check_index("row", row, x.shape[0], table.shape[0], "x", x, check_indices)
    return torch.ops.rsg_fast.displacement(x, index, row, table, resolve_backend(backend, x.device))
