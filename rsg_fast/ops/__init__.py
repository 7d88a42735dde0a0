"""The three fused ops of RSG (docs/ops-contract.md), each one ``torch.autograd.Function``.

Public functions (the module calls these):

- ``center_distance(x, centers, *, backend="auto") -> (mean, dist)``      Eq. 1 and Eq. 5
- ``displacement(x, index, centre_rows, *, backend="auto") -> out``        Eq. 3
- ``mv_terms(tv, v, u, x, tail_index, grouping, *, backend="auto") -> (new, terms)``   Eq. 4 and Eq. 6

Each Function's forward and backward run either the PyTorch path written here (the same algebra
as the kernels: e.g. dist = V + HW |mean - c|^2, hand-written backward that saves only what it
needs) or the Triton launchers in ``rsg_fast.kernels``. ``backend`` is resolved by
``rsg_fast.backend.resolve_backend`` ("auto", "torch", "triton"; env ``RSG_FAST_BACKEND``).

Dtypes: statistics (mean, dist, terms) are in the acc dtype (float64 if an input is float64, else
float32); tensor outputs keep the input's dtype (x's for displacement; for new samples, that of x + tv).
Autocast is switched off inside the ops (forward and backward): they cast to the acc dtype
themselves, so under ``torch.autocast`` the statistics are still fp32.
Empty batches (N = 0 or M = 0, or any zero-size map) take the PyTorch path: no kernel launch.
"""
from __future__ import annotations

import contextlib

import torch
from torch.autograd.function import once_differentiable

from rsg_fast.backend import resolve_backend

__all__ = ["center_distance", "displacement", "mv_terms", "GROUPINGS", "EPS"]

GROUPINGS = ("location", "rows")
EPS = 1e-12  # F.normalize's eps


# ----------------------------------------------------------------------------- helpers

def acc_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """Accumulation dtype: float64 if any input is float64, else float32 (shared with the kernels)."""
    return torch.float64 if torch.float64 in dtypes else torch.float32


@contextlib.contextmanager
def _op_context(device: torch.device):
    """Autocast off (the ops pick their own acc dtype), and on CUDA the tensors' device made current
    (Triton launches on the current device; with several GPUs it may not be the tensors')."""
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(torch.autocast(device_type=device.type, enabled=False))
        except Exception:  # a device type autocast does not know: nothing to switch off
            pass
        if device.type == "cuda":
            stack.enter_context(torch.cuda.device(device))
        yield


def _check_tensor(name: str, t, ndim: int, *, floating: bool = True) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if floating and not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")


def _check_device(ref_name: str, ref: torch.Tensor, name: str, t: torch.Tensor) -> None:
    if t.device != ref.device:
        raise ValueError(f"{name} must be on the same device as {ref_name} ({ref.device}), got {t.device}")


def _check_index(name: str, index, length: int, bound: int, ref_name: str, ref: torch.Tensor,
                 check_values: bool = True) -> torch.Tensor:
    if not isinstance(index, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of int64, got {type(index).__name__}")
    if index.dtype.is_floating_point or index.dtype.is_complex or index.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor (int64), got dtype {index.dtype}")
    if index.dim() != 1 or index.shape[0] != length:
        raise ValueError(f"{name} must have shape ({length},), got {tuple(index.shape)}")
    _check_device(ref_name, ref, name, index)
    index = index.to(torch.int64).contiguous()  # the kernels index it as a flat array
    if length and check_values:
        if index.device.type == "cuda":
            # no host sync: a bad index fails the stream asynchronously instead of reading garbage
            torch._assert_async(((index >= 0) & (index < bound)).all(),
                                f"{name} out of range [0, {bound})")
        elif bool(((index < 0) | (index >= bound)).any()):
            raise ValueError(f"{name} must hold values in [0, {bound}), got min {int(index.min())} "
                             f"and max {int(index.max())}")
    return index


def _dense_stride(t: torch.Tensor):
    """t's strides when it is contiguous or channels_last (gradients keep that layout), else None."""
    if t.is_contiguous() or (t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last)):
        return t.stride()
    return None


def _kernel_module(name: str):
    """Import a kernel module only when the Triton backend is used (imports triton)."""
    import importlib
    return importlib.import_module(f"rsg_fast.kernels.{name}")


# ----------------------------------------------------------------------------- center_distance

def _cd_forward_torch(x: torch.Tensor, centers: torch.Tensor):
    acc = acc_dtype(x.dtype, centers.dtype)
    HW = x.shape[2] * x.shape[3]
    xf = x.to(acc)
    mean = xf.mean(dim=(2, 3))
    var = (xf - mean[:, :, None, None]).square().sum(dim=(1, 2, 3))          # V[n], centred
    dist = var[:, None] + HW * (mean[:, None, :] - centers.to(acc)).square().sum(-1)
    return mean, dist


def _cd_backward_torch(x, centers, mean, grad_mean, grad_dist, need_x, need_c):
    acc = mean.dtype
    HW = x.shape[2] * x.shape[3]
    gd = grad_dist.to(acc)
    diff = mean[:, None, :] - centers.to(acc)                                  # (N, K, C)
    gx = gc = None
    if need_c:
        gc = (-2.0 * HW * gd[:, :, None] * diff).to(centers.dtype)
    if need_x:
        s = gd.sum(1)                                                           # (N,)
        q = (gd[:, :, None] * diff).sum(1)                                      # (N, C), no TF32 matmul
        base = 2.0 * q
        if grad_mean is not None:
            base = base + grad_mean.to(acc) / HW
        gx = base[:, :, None, None] + 2.0 * s[:, None, None, None] * (x.to(acc) - mean[:, :, None, None])
        gx = gx.to(x.dtype)
    return gx, gc


class _CenterDistance(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, centers, backend):
        with _op_context(x.device):
            if backend == "triton":
                mean, dist = _kernel_module("center_distance").center_distance_forward(x, centers)
            else:
                mean, dist = _cd_forward_torch(x, centers)
        ctx.backend = backend
        ctx.save_for_backward(x, centers, mean)
        return mean, dist

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_mean, grad_dist):
        x, centers, mean = ctx.saved_tensors
        need_x, need_c = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if grad_dist is None:
            grad_dist = torch.zeros(centers.shape[:2], dtype=mean.dtype, device=mean.device)
        with _op_context(x.device):
            if ctx.backend == "triton":
                gx, gc = _kernel_module("center_distance").center_distance_backward(x, centers, mean, grad_mean, grad_dist,
                                                                need_x, need_c)
            else:
                gx, gc = _cd_backward_torch(x, centers, mean, grad_mean, grad_dist, need_x, need_c)
        return gx, gc, None


def center_distance(x: torch.Tensor, centers: torch.Tensor, *, backend: str | None = "auto"):
    """Pooled mean and squared distance to the K centres (contract: center_distance).

    x: (N, C, H, W) floating, any strides; centers: (N, K, C) floating (the sample's class centres).
    Returns ``mean`` (N, C) and ``dist`` (N, K), both in the acc dtype; differentiable w.r.t. x and centers.
    """
    _check_tensor("x", x, 4)
    _check_tensor("centers", centers, 3)
    _check_device("x", x, "centers", centers)
    N, C = x.shape[:2]
    if centers.shape[0] != N or centers.shape[2] != C:
        raise ValueError(f"centers must have shape (N, K, C) = ({N}, K, {C}) to match x {tuple(x.shape)}, "
                         f"got {tuple(centers.shape)}")
    be = resolve_backend(backend, x.device)
    if x.numel() == 0 or centers.numel() == 0:
        be = "torch"
    return _CenterDistance.apply(x, centers, be)


# ----------------------------------------------------------------------------- displacement

def _disp_forward_torch(x, index, centre_rows):
    acc = acc_dtype(x.dtype, centre_rows.dtype)
    out = x.index_select(0, index).to(acc) - centre_rows.to(acc)[:, :, None, None]
    return out.to(x.dtype).contiguous()


def _index_add_torch(grad, index, shape, dtype, stride):
    acc = acc_dtype(grad.dtype, dtype)
    gx = torch.zeros(shape, dtype=acc, device=grad.device)
    gx.index_add_(0, index, grad.to(acc))
    if stride is None:
        return gx.to(dtype)
    return torch.empty_strided(shape, stride, dtype=dtype, device=grad.device).copy_(gx)


def _disp_backward_torch(grad_out, index, x_meta, cr_dtype, need_x, need_cr):
    gx = _index_add_torch(grad_out, index, *x_meta) if need_x else None
    gcr = None
    if need_cr:
        acc = acc_dtype(grad_out.dtype, cr_dtype)
        gcr = (-grad_out.to(acc).sum(dim=(2, 3))).to(cr_dtype)
    return gx, gcr


class _Displacement(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, index, centre_rows, backend):
        with _op_context(x.device):
            if backend == "triton":
                out = _kernel_module("displacement").displacement_forward(x, index, centre_rows)
            else:
                out = _disp_forward_torch(x, index, centre_rows)
        ctx.backend = backend
        ctx.save_for_backward(index)
        # shapes/dtypes only: the backward never reads x's or centre_rows' values
        ctx.x_meta = (x.shape, x.dtype, _dense_stride(x))
        ctx.cr_dtype = centre_rows.dtype
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        (index,) = ctx.saved_tensors
        need_x, need_cr = ctx.needs_input_grad[0], ctx.needs_input_grad[2]
        with _op_context(grad_out.device):
            if ctx.backend == "triton":
                gx, gcr = _kernel_module("displacement").displacement_backward(
                    grad_out, index, ctx.x_meta, ctx.cr_dtype, need_x, need_cr)
            else:
                gx, gcr = _disp_backward_torch(grad_out, index, ctx.x_meta, ctx.cr_dtype, need_x, need_cr)
        return gx, None, gcr, None


def displacement(x: torch.Tensor, index: torch.Tensor, centre_rows: torch.Tensor, *,
                 backend: str | None = "auto", check_index: bool = True) -> torch.Tensor:
    """Gathered samples minus their centre (contract: displacement, Eq. 3).

    x: (N, C, H, W) floating, any strides; index: (M,) integer in [0, N), may repeat;
    centre_rows: (M, C) floating. Returns (M, C, H, W), contiguous NCHW, in x's dtype;
    differentiable w.r.t. x and centre_rows. ``check_index=False`` skips the range check of
    ``index`` (on CUDA a few tiny launches; on the CPU a pass): for callers that built it in range.
    """
    _check_tensor("x", x, 4)
    _check_tensor("centre_rows", centre_rows, 2)
    _check_device("x", x, "centre_rows", centre_rows)
    M = centre_rows.shape[0]
    if centre_rows.shape[1] != x.shape[1]:
        raise ValueError(f"centre_rows must have shape (M, C) with C = {x.shape[1]} (x's channels), "
                         f"got {tuple(centre_rows.shape)}")
    index = _check_index("index", index, M, x.shape[0], "x", x, check_index)
    be = resolve_backend(backend, x.device)
    if M == 0 or x.numel() == 0:
        be = "torch"
    return _Displacement.apply(x, index, centre_rows, be)


# ----------------------------------------------------------------------------- mv_terms

def _vectors(t: torch.Tensor, grouping: str) -> torch.Tensor:
    """(M*HW, C) view/copy of the grouping's vectors (see the contract)."""
    C = t.shape[1]
    if grouping == "location":
        return t.permute(0, 2, 3, 1).reshape(-1, C)
    return t.reshape(-1, C)  # rows of C consecutive elements of the logical NCHW buffer


def _unvectors(g: torch.Tensor, shape, grouping: str) -> torch.Tensor:
    M, C, H, W = shape
    if grouping == "location":
        return g.view(M, H, W, C).permute(0, 3, 1, 2)
    return g.view(M, C, H, W)


def _sign(z: torch.Tensor) -> torch.Tensor:
    return torch.sign(z)


def _mv_forward_torch(tv, v, u, x, tail_index, grouping):
    acc = acc_dtype(tv.dtype, v.dtype, u.dtype, x.dtype)
    a, b, w = (_vectors(t.to(acc), grouping) for t in (tv, u, v))
    na, nb, nw = (torch.linalg.vector_norm(t, dim=1) for t in (a, b, w))
    ah = a / na.clamp_min(EPS)[:, None]
    bh = b / nb.clamp_min(EPS)[:, None]
    norm_sum = (na - nw).abs().sum()
    if grouping == "rows":
        ab = ah * bh
        z = ab - 1.0
        cos_sum = z.abs().sum()
        qs = (_sign(z) * ab).sum(1)
        tsg = torch.zeros_like(qs)
    else:
        cos = (ah * bh).sum(1)
        z = cos - 1.0
        cos_sum = z.abs().sum()
        tsg = _sign(z)
        qs = tsg * cos
    M, C, H, W = tv.shape
    stats = torch.stack([na, nb, nw, qs, tsg], dim=1).view(M, H * W, 5)
    new = (x.index_select(0, tail_index).to(acc) + tv.to(acc)).to(torch.promote_types(tv.dtype, x.dtype)).contiguous()
    return new, torch.stack([norm_sum, cos_sum]), stats


def _mv_backward_torch(tv, v, u, stats, grad_new, grad_terms, grouping, need_tv, need_v, need_u):
    acc = stats.dtype
    st = stats.view(-1, 5)
    na, nb, nw, qs, tsg = st.unbind(1)
    g0, g1 = grad_terms.to(acc).unbind(0)
    s0 = _sign(na - nw) * g0
    one = torch.ones((), dtype=acc, device=st.device)
    ca = torch.where(na > 0, s0 / torch.where(na > 0, na, one), 0.0)
    cw = torch.where(nw > 0, -s0 / torch.where(nw > 0, nw, one), 0.0)
    da, db = na.clamp_min(EPS), nb.clamp_min(EPS)
    gtv = gv = gu = None
    if need_tv or need_u:
        a, b = _vectors(tv.to(acc), grouping), _vectors(u.to(acc), grouping)
        ah, bh = a / da[:, None], b / db[:, None]
        t = _sign(ah * bh - 1.0) if grouping == "rows" else tsg[:, None]
        if need_tv:
            pa = torch.where(na >= EPS, g1 * qs, 0.0)
            ga = ca[:, None] * a + (g1 * t * bh - pa[:, None] * ah) / da[:, None]
            gtv = _unvectors(ga, tv.shape, grouping)
            if grad_new is not None:
                gtv = gtv + grad_new.to(acc)
            gtv = gtv.to(tv.dtype)
        if need_u:
            pb = torch.where(nb >= EPS, g1 * qs, 0.0)
            gb = (g1 * t * ah - pb[:, None] * bh) / db[:, None]
            gu = _unvectors(gb, u.shape, grouping).to(u.dtype)
    if need_v:
        w = _vectors(v.to(acc), grouping)
        gv = _unvectors(cw[:, None] * w, v.shape, grouping).to(v.dtype)
    return gtv, gv, gu


class _MVTerms(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tv, v, u, x, tail_index, grouping, backend):
        with _op_context(tv.device):
            if backend == "triton":
                new, terms, stats = _kernel_module("mv_terms").mv_terms_forward(tv, v, u, x, tail_index, grouping)
            else:
                new, terms, stats = _mv_forward_torch(tv, v, u, x, tail_index, grouping)
        ctx.backend, ctx.grouping = backend, grouping
        ctx.x_meta = (x.shape, x.dtype, _dense_stride(x))
        ctx.save_for_backward(tv, v, u, tail_index, stats)
        return new, terms

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_new, grad_terms):
        tv, v, u, tail_index, stats = ctx.saved_tensors
        need_tv, need_v, need_u, need_x = ctx.needs_input_grad[:4]
        if grad_terms is None:
            grad_terms = torch.zeros(2, dtype=stats.dtype, device=stats.device)
        gx = None
        with _op_context(tv.device):
            if ctx.backend == "triton":
                k = _kernel_module("mv_terms")
                gtv, gv, gu = k.mv_terms_backward(tv, v, u, stats, grad_new, grad_terms, ctx.grouping,
                                                  need_tv, need_v, need_u)
                if need_x and grad_new is not None:
                    gx = k.index_add_gather(grad_new, tail_index, *ctx.x_meta)
            else:
                gtv, gv, gu = _mv_backward_torch(tv, v, u, stats, grad_new, grad_terms, ctx.grouping,
                                                 need_tv, need_v, need_u)
                if need_x and grad_new is not None:
                    gx = _index_add_torch(grad_new, tail_index, *ctx.x_meta)
        return gtv, gv, gu, gx, None, None, None


def mv_terms(tv: torch.Tensor, v: torch.Tensor, u: torch.Tensor, x: torch.Tensor, tail_index: torch.Tensor,
             grouping: str, *, backend: str | None = "auto", check_index: bool = True):
    """New samples and the MV loss's two sums (contract: mv_terms, Eq. 4 and Eq. 6).

    tv = T(v), v (head displacement), u (tail displacement): (M, C, H, W) floating, any strides;
    x: (N, C, H, W); tail_index: (M,) integer in [0, N); grouping: "location" (paper) or "rows"
    (published code). Returns ``new`` (M, C, H, W) contiguous in the promoted dtype of tv and x (as
``x + tv`` would be: under autocast an fp32 x keeps fp32 new samples) and ``terms`` (2,) =
    (norm_sum, cos_sum) in the acc dtype; differentiable w.r.t. tv, v, u and x.
    ``check_index=False`` skips the range check of ``tail_index`` (see ``displacement``).
    """
    _check_tensor("tv", tv, 4)
    _check_tensor("v", v, 4)
    _check_tensor("u", u, 4)
    _check_tensor("x", x, 4)
    for name, t in (("v", v), ("u", u)):
        if t.shape != tv.shape:
            raise ValueError(f"{name} must have the shape of tv {tuple(tv.shape)}, got {tuple(t.shape)}")
    if x.shape[1:] != tv.shape[1:]:
        raise ValueError(f"x must have shape (N, {', '.join(map(str, tv.shape[1:]))}) to match tv, "
                         f"got {tuple(x.shape)}")
    for name, t in (("v", v), ("u", u), ("x", x)):
        _check_device("tv", tv, name, t)
    if grouping not in GROUPINGS:
        raise ValueError(f"grouping must be one of {GROUPINGS}, got {grouping!r}")
    tail_index = _check_index("tail_index", tail_index, tv.shape[0], x.shape[0], "tv", tv, check_index)
    be = resolve_backend(backend, tv.device)
    if tv.numel() == 0:
        be = "torch"
    return _MVTerms.apply(tv, v, u, x, tail_index, grouping, be)
