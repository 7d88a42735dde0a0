"""``mv_terms``: Eq. 4 (the new samples) and the norm and cosine sums of Eq. 6, in one pass.

    new, terms = mv_terms(tv, v, x, tail_index, row, table, grouping)

with u = x[tail_index] - table[row[tail_index]] (the rare samples' displacements) rebuilt inside
the op from x and the centre table, never stored. The module adds (terms[0] + terms[1]) / M to the
MV loss. Plain reference: ``rsg_fast.ops.naive.mv_terms``; math: docs/ops-contract.md and
``rsg_fast/kernels/mv_terms.py`` (the backward's closed form).
"""
import torch
from torch import Tensor

from rsg_fast.backend import resolve_backend
from rsg_fast.ops._common import EPS, GROUPINGS, acc_dtype, check_device, check_index, check_tensor, define
from rsg_fast.ops._common import double_backward, interpreter_guard, kernels
from rsg_fast.ops.displacement import table_grad

__all__ = ["mv_terms"]


def _vectors(t: Tensor, grouping: str) -> Tensor:
    """(M, HW, C) view/copy of the grouping's vectors (see the contract). M stays a dimension of its
    own: under torch.compile it is data-dependent, and inductor cannot split a size u0 * HW back
    into (u0, C, H, W) at every shape (it failed at C, H, W = 5, 3, 7)."""
    M, C, H, W = t.shape
    if grouping == "location":
        return t.permute(0, 2, 3, 1).reshape(M, H * W, C)
    return t.reshape(M, H * W, C)  # rows of C consecutive elements of each sample's NCHW buffer


def _unvectors(g: Tensor, shape, grouping: str) -> Tensor:
    M, C, H, W = shape
    if grouping == "location":
        return g.view(M, H, W, C).permute(0, 3, 1, 2)
    return g.view(M, C, H, W)


def _tail_rows(x, tail_index, row, table, acc):
    """(x[t], u = x[t] - table[row[t]]) in the acc dtype."""
    xt = x.index_select(0, tail_index).to(acc)
    return xt, xt - table[row[tail_index]].to(acc)[:, :, None, None]


def _forward_torch(tv, v, x, tail_index, row, table, grouping):
    """The kernels' algebra in plain (differentiable) PyTorch: (new, terms, stats). The op itself runs
    ``_forward_lean`` (the same values); this one is the create_graph recomputation."""
    acc = acc_dtype(tv.dtype, v.dtype, x.dtype, table.dtype)
    xt, u = _tail_rows(x, tail_index, row, table, acc)
    tva = tv.to(acc)            # one cast (a copy for fp16/bf16), used for a and for the new samples
    a, b, w = (_vectors(t, grouping) for t in (tva, u, v.to(acc)))
    na, nb, nw = (torch.linalg.vector_norm(t, dim=2) for t in (a, b, w))    # (M, HW) each
    ah = a / na.clamp_min(EPS)[..., None]
    bh = b / nb.clamp_min(EPS)[..., None]
    norm_sum = (na - nw).abs().sum()
    if grouping == "rows":
        ab = ah * bh
        z = ab - 1.0
        cos_sum = z.abs().sum()
        qs = (torch.sign(z) * ab).sum(2)
        tsg = torch.zeros_like(qs)
    else:
        cos = (ah * bh).sum(2)
        z = cos - 1.0
        cos_sum = z.abs().sum()
        tsg = torch.sign(z)
        qs = tsg * cos
    stats = torch.stack([na, nb, nw, qs, tsg], dim=2).detach()                  # (M, HW, 5)
    new = (xt + tva).to(torch.promote_types(tv.dtype, x.dtype)).contiguous()
    return new, torch.stack([norm_sum, cos_sum]), stats


# The op's own forward and backward (never differentiated: create_graph recomputes ``_forward_torch``)
# compute the same values in the same order, but in place on tensors they made themselves: at M maps
# of 1024 x 14 x 14 each map-sized temporary is ~150 MB, and the out-of-place forms held up to nine.

def _forward_lean(tv, v, x, tail_index, row, table, grouping):
    """``_forward_torch``'s (new, terms, stats), same values, with at most four map-sized tensors alive."""
    acc = acc_dtype(tv.dtype, v.dtype, x.dtype, table.dtype)
    xt, u = _tail_rows(x, tail_index, row, table, acc)   # both our own (index_select copies)
    tva = tv.to(acc)                                 # tv itself in the acc dtype: read only
    new = xt.add_(tva)                               # xt is not needed again: the new samples
    a, b, w = (_vectors(t, grouping) for t in (tva, u, v.to(acc)))
    na, nb, nw = (torch.linalg.vector_norm(t, dim=2) for t in (a, b, w))    # (M, HW) each
    del u, w
    norm_sum = (na - nw).abs().sum()
    ab = a / na.clamp_min(EPS)[..., None]
    ab.mul_(b.div_(nb.clamp_min(EPS)[..., None]))   # ah * bh; b (u's rows, or a copy) is ours
    del b
    if grouping == "rows":
        z = ab - 1.0
        qs = torch.sign(z).mul_(ab).sum(2)
        cos_sum = z.abs_().sum()
        tsg = torch.zeros_like(qs)
    else:
        cos = ab.sum(2)
        z = cos - 1.0
        cos_sum = z.abs().sum()
        tsg = torch.sign(z)
        qs = tsg * cos
    del ab, z
    stats = torch.stack([na, nb, nw, qs, tsg], dim=2)                            # (M, HW, 5)
    new = new.to(torch.promote_types(tv.dtype, x.dtype)).contiguous()
    return new, torch.stack([norm_sum, cos_sum]), stats


def _like(t: Tensor, like: Tensor) -> Tensor:
    """``t`` (of ``like``'s shape) in ``like``'s dtype and memory format: ``t`` itself when it already is
    (no copy). Compiled code always copies (inductor fuses it), with no guard on the strides."""
    if not torch.compiler.is_compiling() and t.dtype == like.dtype and t.stride() == like.stride():
        return t
    return torch.empty_like(like).copy_(t)


def _backward_torch(tv, v, x, tail_index, row, table, stats, grad_new, grad_terms, grouping,
                    need_tv, need_v, need_u):
    acc = stats.dtype
    na, nb, nw, qs, tsg = stats.unbind(2)                                       # (M, HW) each
    g0, g1 = grad_terms.to(acc).unbind(0)
    s0 = torch.sign(na - nw) * g0
    one = torch.ones((), dtype=acc, device=stats.device)
    ca = torch.where(na > 0, s0 / torch.where(na > 0, na, one), 0.0)
    cw = torch.where(nw > 0, -s0 / torch.where(nw > 0, nw, one), 0.0)
    da, db = na.clamp_min(EPS)[..., None], nb.clamp_min(EPS)[..., None]
    gtv, gv, gu = tv.new_empty(0), tv.new_empty(0), tv.new_empty(0)
    if need_tv or need_u:
        # the tensors written in place below are all made here (a reads tv: never written)
        _, u = _tail_rows(x, tail_index, row, table, acc)
        a = _vectors(tv.to(acc), grouping)
        bh = _vectors(u, grouping).div_(db)
        del u
        # ah = a / da is formed where it is used (t's product is taken in its buffer): two map-sized
        # tensors alive at a time for grad_tv
        if grouping == "rows":
            t = (a / da).mul_(bh).sub_(1.0).sign_()      # sign(ah bh - 1)
        else:
            t = tsg[..., None]
        if need_u:
            pb = torch.where(nb >= EPS, g1 * qs, 0.0)
            ah = a / da
            gu = _unvectors((g1 * t * ah - pb[..., None] * bh) / db, tv.shape, grouping)
            gu = gu.to(x.dtype).contiguous()
            del ah
        if need_tv:
            # ca a + (g1 t bh - pa ah) / da, each step in place where the order of operations allows
            pa = torch.where(na >= EPS, g1 * qs, 0.0)
            t = t.mul_(g1) if grouping == "rows" else g1 * t      # t is ours for "rows", tsg's view else
            ga = bh.mul_(t)                                     # g1 t bh
            del bh, t
            ah = a / da
            ga.sub_(ah.mul_(pa[..., None])).div_(da)
            del ah
            ga = torch.mul(ca[..., None], a).add_(ga)
            ga = _unvectors(ga, tv.shape, grouping)
            if grad_new is not None:
                ga = ga.add_(grad_new.to(acc))
            gtv = _like(ga, tv)                         # tv's dtype and memory format
    if need_v:
        gv = _like(_unvectors(cw[..., None] * _vectors(v.to(acc), grouping), v.shape, grouping), v)
    return gtv, gv, gu


@define("mv_terms")
def _mv_terms(tv: Tensor, v: Tensor, x: Tensor, tail_index: Tensor, row: Tensor, table: Tensor, grouping: str,
              backend: str) -> tuple[Tensor, Tensor, Tensor]:
    """(new, terms, stats); stats (M, HW, 5) is saved for the backward."""
    if backend == "triton":
        interpreter_guard(tv)
        acc = acc_dtype(tv.dtype, v.dtype, x.dtype, table.dtype)
        return kernels("mv_terms").mv_terms_forward(tv, v, x, tail_index, row, table, grouping, acc)
    return _forward_lean(tv, v, x, tail_index, row, table, grouping)


@define("mv_terms_backward")
def _mv_terms_backward(tv: Tensor, v: Tensor, x: Tensor, tail_index: Tensor, row: Tensor, table: Tensor,
                       stats: Tensor, grad_new: Tensor | None, grad_terms: Tensor, grouping: str, need_tv: bool,
                       need_v: bool, need_x: bool, need_table: bool,
                       backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(grad_tv, grad_v, grad_x, grad_table); a 0-element tensor for each one not needed."""
    need_u = need_x or need_table
    if backend == "triton":
        interpreter_guard(tv)
        k = kernels("mv_terms")
        gtv, gv, gu = k.mv_terms_backward(tv, v, x, tail_index, row, table, stats, grad_new, grad_terms,
                                          grouping, need_tv, need_v, need_u)
    else:
        gtv, gv, gu = _backward_torch(tv, v, x, tail_index, row, table, stats, grad_new, grad_terms, grouping,
                                      need_tv, need_v, need_u)
    gx, gt = tv.new_empty(0), tv.new_empty(0)
    if need_x:   # x reaches new directly and u through its tail rows
        rows = gu if grad_new is None else gu + grad_new.to(gu.dtype)
        gx = torch.ops.rsg_fast.displacement_backward(rows, x, tail_index, row, table, True, False, backend)[0]
    if need_table:
        gt = table_grad(gu, row[tail_index], table)
    return gtv, gv, gx, gt


def _setup_context(ctx, inputs, output):
    tv, v, x, tail_index, row, table, grouping, backend = inputs
    ctx.grouping, ctx.backend = grouping, backend
    ctx.set_materialize_grads(False)           # absent gradients stay None: no zero tensors launched
    ctx.mark_non_differentiable(output[2])
    ctx.save_for_backward(tv, v, x, tail_index, row, table, output[2])


def _backward(ctx, grad_new, grad_terms, _grad_stats):
    tv, v, x, tail_index, row, table, stats = ctx.saved_tensors
    need_tv, need_v, need_x, _, _, need_table = ctx.needs_input_grad[:6]
    if torch.is_grad_enabled():   # create_graph=True: differentiable recomputation
        gtv, gv, gx, _, _, gt = double_backward(
            lambda *a: _forward_torch(*a, ctx.grouping)[:2], (tv, v, x, tail_index, row, table),
            (need_tv, need_v, need_x, False, False, need_table), (grad_new, grad_terms))
    else:
        if grad_terms is None:
            grad_terms = torch.zeros(2, dtype=stats.dtype, device=stats.device)
        gtv, gv, gx, gt = torch.ops.rsg_fast.mv_terms_backward(
            tv, v, x, tail_index, row, table, stats, grad_new, grad_terms, ctx.grouping,
            need_tv, need_v, need_x, need_table, ctx.backend)
    return ((gtv if need_tv else None), (gv if need_v else None), (gx if need_x else None), None, None,
            (gt if need_table else None), None, None)


_mv_terms.register_autograd(_backward, setup_context=_setup_context)


def mv_terms(tv: Tensor, v: Tensor, x: Tensor, tail_index: Tensor, row: Tensor, table: Tensor, grouping: str, *,
             backend: str | None = "auto", check_indices: bool = True):
    """New samples and the MV loss's two sums (Eq. 4 and Eq. 6).

    tv = T(v) and v (the frequent samples' displacements): (M, C, H, W) floating, any strides;
    x: (N, C, H, W); tail_index: (M,) integers in [0, N), the rare sample of each pair; row: (N,)
    integers in [0, R), each sample's centre in table (R, C); grouping: "location" (Eq. 6 per
    spatial location, the paper) or "rows" (the published code's ``view(-1, C)`` rows).
    The rare displacement u = x[tail_index] - table[row[tail_index]] is formed inside the op.
    Returns ``new`` (M, C, H, W), NCHW-contiguous in the dtype of ``x + tv``, and ``terms`` (2,) =
    (norm_sum, cos_sum) in the acc dtype; differentiable w.r.t. tv, v, x and table.
    ``check_indices=False`` skips the range checks of ``tail_index`` and ``row``.
    """
    for name, t in (("tv", tv), ("v", v), ("x", x)):
        check_tensor(name, t, 4)
    check_tensor("table", table, 2)
    if v.shape != tv.shape:
        # either may be the wrong one: name both
        raise ValueError(f"tv and v must have the same shape (M, C, H, W), got tv {tuple(tv.shape)} "
                         f"and v {tuple(v.shape)}")
    if x.shape[1:] != tv.shape[1:]:
        raise ValueError(f"x must have shape (N, {', '.join(map(str, tv.shape[1:]))}) to match tv, "
                         f"got {tuple(x.shape)}")
    if table.shape[1] != tv.shape[1]:
        raise ValueError(f"table must have shape (R, C) with C = {tv.shape[1]}, got {tuple(table.shape)}")
    for name, t in (("v", v), ("x", x), ("table", table)):
        check_device("tv", tv, name, t)
    if grouping not in GROUPINGS:
        raise ValueError(f"grouping must be one of {GROUPINGS}, got {grouping!r}")
    tail_index = check_index("tail_index", tail_index, tv.shape[0], x.shape[0], "tv", tv, check_indices)
    row = check_index("row", row, x.shape[0], table.shape[0], "tv", tv, check_indices)
    new, terms, _ = torch.ops.rsg_fast.mv_terms(tv, v, x, tail_index, row, table, grouping,
                                                resolve_backend(backend, tv.device))
    return new, terms
