"""The fused ops (rsg_fast.ops) on both backends against plain fp64 references written here.

Backends: "torch" always; "triton" runs the real kernels on a GPU, or the Triton interpreter on the
CPU (tests/conftest.py sets TRITON_INTERPRET=1 when CUDA is absent), so keep CPU shapes small.
Tolerances (fp32 inputs vs the fp64 reference on the same fp32 values): values and gradients
rtol 1e-5, atol 1e-5 * (scale of the quantity); fp64 gradcheck with torch's defaults.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import requires_cuda
from rsg_fast import ops
from rsg_fast.ops import naive
from rsg_fast.kernels._common import poisoned_outputs

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
BACKENDS = ["torch", "triton"]


def close(actual, expected, rtol=1e-5, atol=1e-5, scale=None):
    """Compare in fp64; ``atol`` is relative to ``scale`` (default: max |expected|, at least 1)."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    exp = expected.detach().double().cpu()
    if scale is None:
        scale = max(1.0, exp.abs().max().item()) if exp.numel() else 1.0
    torch.testing.assert_close(actual.detach().double().cpu(), exp, rtol=rtol, atol=atol * scale)


def layout(t: torch.Tensor, kind: str) -> torch.Tensor:
    """Same values as ``t`` (4-D) in another memory layout: contiguous, channels_last or a strided slice."""
    if kind == "contiguous":
        return t.contiguous()
    if kind == "channels_last":
        return t.contiguous(memory_format=torch.channels_last)
    if kind == "sliced":  # a view with gaps in every dimension and a negative-free odd stride
        big = torch.zeros(t.shape[0] * 2, t.shape[1] * 2 + 1, t.shape[2] * 3, t.shape[3] * 2,
                          dtype=t.dtype, device=t.device)
        view = big[::2, 1::2, ::3, ::2]
        view.copy_(t)
        assert not view.is_contiguous()
        return view
    raise ValueError(kind)


def leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().requires_grad_(True)


# ============================================================================ center_distance

def ref_center_distance(x, centers):
    return naive.center_distance(*naive.upcast(x, centers))


CD_SHAPES = [  # N, K, C, H, W
    (1, 1, 1, 1, 1),
    (3, 4, 5, 3, 7),
    (2, 3, 17, 5, 5),
    (4, 15, 7, 7, 3),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", CD_SHAPES)
def test_center_distance_values_and_grads(backend, shape):
    N, K, C, H, W = shape
    x = torch.randn(N, C, H, W, device=DEVICE)
    centers = torch.randn(N, K, C, device=DEVICE)
    xr, cr = leaf(x.double()), leaf(centers.double())
    rm, rd = ref_center_distance(xr, cr)
    gm, gd = torch.randn_like(rm), torch.randn_like(rd)
    ((rm * gm).sum() + (rd * gd).sum()).backward()

    xa, ca = leaf(x), leaf(centers)
    with poisoned_outputs():
        mean, dist = ops.center_distance(xa, ca, backend=backend)
        assert mean.dtype == dist.dtype == torch.float32
        ((mean * gm.float()).sum() + (dist * gd.float()).sum()).backward()
    close(mean, rm)
    close(dist, rd)
    close(xa.grad, xr.grad)
    close(ca.grad, cr.grad)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["channels_last", "sliced"])
def test_center_distance_layouts(backend, kind):
    N, K, C, H, W = 2, 3, 5, 3, 5
    x0 = torch.randn(N, C, H, W, device=DEVICE)
    x = leaf(layout(x0, kind))
    cbig = torch.randn(N, K, 2 * C, device=DEVICE)
    centers = leaf(cbig[:, :, ::2])                     # non-contiguous centres too
    rm, rd = ref_center_distance(x0, centers.detach())
    with poisoned_outputs():
        mean, dist = ops.center_distance(x, centers, backend=backend)
        dist.sum().backward()
    close(mean, rm)
    close(dist, rd)
    xr, cr = leaf(x0.double()), leaf(centers.detach().double())
    ref_center_distance(xr, cr)[1].sum().backward()
    close(x.grad, xr.grad)
    close(centers.grad, cr.grad)
    assert x.grad.stride() == x.stride() or kind == "sliced"


@pytest.mark.parametrize("backend", BACKENDS)
def test_center_distance_cancellation(backend):
    """x = 100 + noise: E[x^2] - E[x]^2 would lose every digit of V in fp32; the centred form keeps them."""
    N, K, C, H, W = 2, 3, 7, 5, 5
    x = 100.0 + torch.randn(N, C, H, W, device=DEVICE)
    centers = 100.0 + 0.1 * torch.randn(N, K, C, device=DEVICE)
    mean, dist = ops.center_distance(x, centers, backend=backend)
    rm, rd = ref_center_distance(x, centers)
    # dist ~ C*H*W (about 175) while x^2 sums are ~ 1.75e6: fp32 one-pass raw moments would be off by ~1.
    torch.testing.assert_close(dist.double().cpu(), rd.cpu(), rtol=2e-5, atol=0.0)
    close(mean, rm)


def test_center_distance_triton_blocks_forced():
    """Several channel blocks (host partial sum) and spatial blocks (Chan merge) in the kernels."""
    from rsg_fast.kernels.center_distance import center_distance_backward, center_distance_forward
    N, K, C, H, W = 2, 3, 7, 5, 3
    x = 50.0 + torch.randn(N, C, H, W, device=DEVICE).contiguous(memory_format=torch.channels_last)
    centers = 50.0 + torch.randn(N, K, C, device=DEVICE)
    xr, cr = leaf(x.double()), leaf(centers.double())
    rm, rd = ref_center_distance(xr, cr)
    gm, gd = torch.randn_like(rm), torch.randn_like(rd)
    ((rm * gm).sum() + (rd * gd).sum()).backward()
    with poisoned_outputs():
        mean, dist = center_distance_forward(x, centers, block_c=2, block_hw=4)
        gx, gc = center_distance_backward(x, centers, mean, gm.float(), gd.float(), True, True,
                                          block_c=2, block_hw=4)
    close(mean, rm)
    close(dist, rd, rtol=2e-5)
    close(gx, xr.grad, rtol=2e-5)
    close(gc, cr.grad, rtol=2e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_center_distance_only_some_grads(backend):
    """Only centres require grad (the module's case: x is detached); grad of dist alone."""
    x = torch.randn(3, 5, 3, 3, device=DEVICE)
    centers = leaf(torch.randn(3, 2, 5, device=DEVICE))
    _, dist = ops.center_distance(x, centers, backend=backend)
    dist.sum().backward()
    cr = leaf(centers.detach().double())
    ref_center_distance(x, cr)[1].sum().backward()
    close(centers.grad, cr.grad)


@pytest.mark.parametrize("backend", BACKENDS)
def test_center_distance_gradcheck(backend):
    x = leaf(torch.randn(2, 3, 2, 3, dtype=torch.float64, device=DEVICE))
    centers = leaf(torch.randn(2, 2, 3, dtype=torch.float64, device=DEVICE))
    assert torch.autograd.gradcheck(lambda a, b: ops.center_distance(a, b, backend=backend), (x, centers))


@pytest.mark.parametrize("backend", BACKENDS)
def test_center_distance_empty(backend):
    x = leaf(torch.randn(0, 5, 3, 3, device=DEVICE))
    centers = leaf(torch.randn(0, 4, 5, device=DEVICE))
    mean, dist = ops.center_distance(x, centers, backend=backend)
    assert mean.shape == (0, 5) and dist.shape == (0, 4)
    (mean.sum() + dist.sum()).backward()
    assert x.grad.shape == x.shape and centers.grad.shape == centers.shape


@pytest.mark.parametrize("backend", BACKENDS)
def test_center_distance_fp64_and_mixed(backend):
    x = torch.randn(2, 3, 3, 5, dtype=torch.float64, device=DEVICE)
    centers = torch.randn(2, 2, 3, device=DEVICE)  # fp32 centres with fp64 maps: fp64 statistics
    mean, dist = ops.center_distance(x, centers, backend=backend)
    assert mean.dtype == dist.dtype == torch.float64
    rm, rd = ref_center_distance(x, centers)
    torch.testing.assert_close(dist.cpu(), rd.cpu(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_center_distance_autocast_gives_fp32(backend):
    x = torch.randn(2, 3, 3, 3, device=DEVICE)
    centers = torch.randn(2, 2, 3, device=DEVICE)
    dt = torch.float16 if DEVICE.type == "cuda" else torch.bfloat16
    with torch.autocast(device_type=DEVICE.type, dtype=dt):
        mean, dist = ops.center_distance(x, centers, backend=backend)
    assert mean.dtype == dist.dtype == torch.float32
    close(dist, ref_center_distance(x, centers)[1])


def test_center_distance_bad_arguments():
    x = torch.randn(2, 3, 4, 4)
    c = torch.randn(2, 5, 3)
    with pytest.raises(TypeError, match="x"):
        ops.center_distance(x.numpy(), c)
    with pytest.raises(TypeError, match="x"):
        ops.center_distance(x.long(), c)
    with pytest.raises(ValueError, match="x"):
        ops.center_distance(x[0], c)
    with pytest.raises(ValueError, match="centers"):
        ops.center_distance(x, torch.randn(2, 5, 4))
    with pytest.raises(ValueError, match="centers"):
        ops.center_distance(x, torch.randn(3, 5, 3))
    with pytest.raises(ValueError, match="backend"):
        ops.center_distance(x, c, backend="cuda")
    with pytest.raises(ValueError, match="centers must be on the same device as x"):
        ops.center_distance(x, c.to("meta"))


# ============================================================================ displacement

def ref_displacement(x, index, centre_rows):
    return naive.displacement(*naive.upcast(x, index, centre_rows))


DISP_SHAPES = [  # N, M, C, H, W
    (1, 1, 1, 1, 1),
    (3, 7, 5, 3, 7),
    (4, 5, 17, 5, 3),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", DISP_SHAPES)
def test_displacement_values_and_grads(backend, shape):
    N, M, C, H, W = shape
    x = torch.randn(N, C, H, W, device=DEVICE)
    index = torch.randint(0, N, (M,), device=DEVICE)
    if M > 2:
        index[1] = index[0]  # repeated indices: grad_x must sum them
    cr = torch.randn(M, C, device=DEVICE)
    xr, crr = leaf(x.double()), leaf(cr.double())
    ref = ref_displacement(xr, index, crr)
    g = torch.randn_like(ref)
    (ref * g).sum().backward()

    xa, ca = leaf(x), leaf(cr)
    with poisoned_outputs():
        out = ops.displacement(xa, index, ca, backend=backend)
        assert out.dtype == x.dtype and out.is_contiguous()
        (out * g.float()).sum().backward()
    close(out, ref)
    close(xa.grad, xr.grad)
    close(ca.grad, crr.grad)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["channels_last", "sliced"])
def test_displacement_layouts(backend, kind):
    N, M, C, H, W = 3, 4, 5, 3, 5
    x0 = torch.randn(N, C, H, W, device=DEVICE)
    x = leaf(layout(x0, kind))
    index = torch.tensor([2, 7, 0, 7, 2, 7, 1, 7], device=DEVICE)[::2]  # a strided index tensor
    cr = leaf(torch.randn(C, M, device=DEVICE).t())  # transposed (non-contiguous) centre rows
    with poisoned_outputs():
        out = ops.displacement(x, index, cr, backend=backend)
        g = layout(torch.randn(M, C, H, W, device=DEVICE), kind)  # non-contiguous upstream gradient
        out.backward(g)
    close(out, ref_displacement(x0, index, cr.detach()))
    xr, crr = leaf(x0.double()), leaf(cr.detach().double())
    ref_displacement(xr, index, crr).backward(g.double())
    close(x.grad, xr.grad)
    close(cr.grad, crr.grad)
    if kind == "channels_last":
        assert x.grad.is_contiguous(memory_format=torch.channels_last)


def test_displacement_triton_blocks_forced():
    from rsg_fast.kernels.displacement import displacement_backward, displacement_forward
    N, M, C, H, W = 3, 6, 7, 3, 5
    x = torch.randn(N, C, H, W, device=DEVICE)
    index = torch.tensor([1, 1, 0, 1, 0, 1], device=DEVICE)  # row 2 gets no m: grad_x[2] must be 0
    cr = torch.randn(M, C, device=DEVICE)
    g = torch.randn(M, C, H, W, device=DEVICE)
    with poisoned_outputs():
        out = displacement_forward(x, index, cr, block_c=2, block_hw=4)
        gx, gcr = displacement_backward(g, index, (x.shape, x.dtype, None), cr.dtype, True, True,
                                        block_c=2, block_hw=4)
    close(out, ref_displacement(x, index, cr))
    xr, crr = leaf(x.double()), leaf(cr.double())
    ref_displacement(xr, index, crr).backward(g.double())
    close(gx, xr.grad)
    assert (gx[2] == 0).all()
    close(gcr, crr.grad)


@pytest.mark.parametrize("backend", BACKENDS)
def test_displacement_gradcheck(backend):
    x = leaf(torch.randn(3, 2, 2, 3, dtype=torch.float64, device=DEVICE))
    cr = leaf(torch.randn(4, 2, dtype=torch.float64, device=DEVICE))
    index = torch.tensor([2, 0, 2, 1], device=DEVICE)
    assert torch.autograd.gradcheck(lambda a, b: ops.displacement(a, index, b, backend=backend), (x, cr))


@pytest.mark.parametrize("backend", BACKENDS)
def test_displacement_empty(backend):
    x = leaf(torch.randn(3, 5, 2, 3, device=DEVICE))
    cr = leaf(torch.randn(0, 5, device=DEVICE))
    out = ops.displacement(x, torch.zeros(0, dtype=torch.int64, device=DEVICE), cr, backend=backend)
    assert out.shape == (0, 5, 2, 3)
    out.sum().backward()
    assert (x.grad == 0).all() and cr.grad.shape == (0, 5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_displacement_mixed_dtypes(backend):
    """fp64 maps with fp32 centre rows: fp64 output (x's dtype); int32 index accepted."""
    x = torch.randn(2, 3, 2, 2, dtype=torch.float64, device=DEVICE)
    cr = torch.randn(3, 3, device=DEVICE)
    index = torch.tensor([1, 0, 1], dtype=torch.int32, device=DEVICE)
    out = ops.displacement(x, index, cr, backend=backend)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, ref_displacement(x, index.long(), cr))


def test_displacement_bad_arguments():
    x = torch.randn(3, 4, 2, 2)
    cr = torch.randn(2, 4)
    idx = torch.tensor([0, 2])
    with pytest.raises(TypeError, match="index"):
        ops.displacement(x, idx.float(), cr)
    with pytest.raises(ValueError, match="index"):
        ops.displacement(x, torch.tensor([0, 3]), cr)
    with pytest.raises(ValueError, match="index"):
        ops.displacement(x, torch.tensor([-1, 0]), cr)
    with pytest.raises(ValueError, match="index"):
        ops.displacement(x, torch.tensor([0, 1, 2]), cr)
    with pytest.raises(ValueError, match="centre_rows"):
        ops.displacement(x, idx, torch.randn(2, 5))
    with pytest.raises(TypeError, match="centre_rows"):
        ops.displacement(x, idx, [[0.0] * 4] * 2)
    with pytest.raises(ValueError, match="backend"):
        ops.displacement(x, idx, cr, backend="gpu")
    with pytest.raises(ValueError, match="index must be on the same device as x"):
        ops.displacement(x, idx.to("meta"), cr)


# ============================================================================ mv_terms

def ref_mv_terms(tv, v, u, x, tail_index, grouping):
    return naive.mv_terms(*naive.upcast(tv, v, u, x), tail_index, grouping)


MV_SHAPES = [  # M, N, C, H, W
    (1, 1, 1, 1, 1),
    (3, 2, 5, 3, 7),
    (4, 3, 17, 3, 5),   # C > HW: "rows" vectors straddle channels
]
GROUPING = ["location", "rows"]


def _mv_inputs(M, N, C, H, W, dtype=torch.float32):
    tv, v, u = (torch.randn(M, C, H, W, dtype=dtype, device=DEVICE) for _ in range(3))
    x = torch.randn(N, C, H, W, dtype=dtype, device=DEVICE)
    tail_index = torch.randint(0, N, (M,), device=DEVICE)
    if M > 2:
        tail_index[2] = tail_index[1]
    return tv, v, u, x, tail_index


def _check_mv(backend, grouping, tv, v, u, x, tail_index, rtol=1e-5, atol=1e-5, tweak=None):
    ins = [leaf(t.double()) for t in (tv, v, u, x)]
    rnew, rterms = ref_mv_terms(*ins, tail_index, grouping)
    gnew = torch.randn_like(rnew)
    gterms = torch.randn(2, dtype=torch.float64, device=DEVICE)
    ((rnew * gnew).sum() + (rterms * gterms).sum()).backward()
    ours = [leaf(t) for t in (tv, v, u, x)]
    if tweak is not None:
        ours = tweak(ours)
    with poisoned_outputs():
        new, terms = ops.mv_terms(*ours, tail_index, grouping, backend=backend)
        assert new.dtype == tv.dtype and new.is_contiguous() and terms.shape == (2,)
        ((new * gnew.to(new.dtype)).sum() + (terms * gterms.to(terms.dtype)).sum()).backward()
    close(new, rnew, rtol, atol)
    close(terms, rterms, rtol, atol)
    for name, ours_t, ref_t in zip(("tv", "v", "u", "x"), ours, ins):
        assert ours_t.grad is not None, name
        close(ours_t.grad, ref_t.grad, rtol, atol)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("grouping", GROUPING)
@pytest.mark.parametrize("shape", MV_SHAPES)
def test_mv_terms_values_and_grads(backend, grouping, shape):
    _check_mv(backend, grouping, *_mv_inputs(*shape))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("grouping", GROUPING)
@pytest.mark.parametrize("kind", ["channels_last", "sliced"])
def test_mv_terms_layouts(backend, grouping, kind):
    tv, v, u, x, ti = _mv_inputs(3, 2, 5, 3, 5)
    ti = torch.stack([ti, torch.full_like(ti, 99)], 1)[:, 0]  # a strided tail_index
    _check_mv(backend, grouping, layout(tv, kind), layout(v, kind), u, layout(x, kind), ti)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("grouping", GROUPING)
def test_mv_terms_kinks(backend, grouping):
    """Zero vectors (F.normalize's eps branch, ||a|| = 0) and ||tv|| == ||v|| (d|z|/dz = 0 at 0).
    (cos = 1 exactly is left out: which side of the kink rounding lands on is not defined.)"""
    M, N, C, H, W = 2, 2, 3, 2, 3
    tv, v, u, x, ti = _mv_inputs(M, N, C, H, W)
    tv[0, :, 0, 0] = 0.0            # a zero "location" vector of tv
    tv[1].view(-1)[:C] = 0.0        # a zero "rows" vector of tv
    u[0, :, 1, 1] = 0.0
    v[1] = tv[1]                    # equal norms in sample 1: sign(0) = 0 in the norm term
    _check_mv(backend, grouping, tv, v, u, x, ti)


def test_mv_terms_triton_blocks_forced():
    """Several vector blocks (host partial sum) and channel chunks (the loops over C)."""
    from rsg_fast.kernels.mv_terms import mv_terms_backward, mv_terms_forward
    tv, v, u, x, ti = _mv_inputs(3, 2, 7, 3, 5)
    for grouping in GROUPING:
        rnew, rterms = ref_mv_terms(tv, v, u, x, ti, grouping)
        with poisoned_outputs():
            new, terms, stats = mv_terms_forward(tv, v, u, x, ti, grouping, block_q=4, block_j=2)
            gterms = torch.tensor([0.7, -1.3], device=DEVICE)
            g = mv_terms_backward(tv, v, u, stats, None, gterms, grouping, True, True, True,
                                  block_q=4, block_j=2)
        close(new, rnew)
        close(terms, rterms)
        ins = [leaf(t.double()) for t in (tv, v, u)]
        (ref_mv_terms(*ins, x, ti, grouping)[1] * gterms.double()).sum().backward()
        for ours_g, ref_t in zip(g, ins):
            close(ours_g, ref_t.grad)


@pytest.mark.parametrize("backend", BACKENDS)
def test_mv_terms_only_tv_requires_grad(backend):
    """The module's case: only tv (from the transform) carries gradient, and only the terms are used."""
    tv, v, u, x, ti = _mv_inputs(3, 2, 5, 2, 3)
    tvl = leaf(tv)
    _, terms = ops.mv_terms(tvl, v, u, x, ti, "location", backend=backend)
    terms.sum().backward()
    tvr = leaf(tv.double())
    ref_mv_terms(tvr, v, u, x, ti, "location")[1].sum().backward()
    close(tvl.grad, tvr.grad)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("grouping", GROUPING)
def test_mv_terms_gradcheck(backend, grouping):
    # C = 3, HW = 2: "rows" vectors straddle channels; both pairs take their tail from sample 0
    ins = [leaf(t) for t in _mv_inputs(2, 1, 3, 1, 2, dtype=torch.float64)[:4]]
    ti = torch.tensor([0, 0], device=DEVICE)
    assert torch.autograd.gradcheck(lambda *a: ops.mv_terms(*a, ti, grouping, backend=backend), ins)


@pytest.mark.parametrize("backend", BACKENDS)
def test_mv_terms_empty(backend):
    tv, v, u = (leaf(torch.randn(0, 5, 2, 3, device=DEVICE)) for _ in range(3))
    x = leaf(torch.randn(2, 5, 2, 3, device=DEVICE))
    new, terms = ops.mv_terms(tv, v, u, x, torch.zeros(0, dtype=torch.int64, device=DEVICE), "rows",
                              backend=backend)
    assert new.shape == (0, 5, 2, 3) and terms.shape == (2,) and (terms == 0).all()
    (new.sum() + terms.sum()).backward()
    assert tv.grad.shape == tv.shape and (x.grad == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_mv_terms_autocast_gives_fp32(backend):
    tv, v, u, x, ti = _mv_inputs(2, 2, 3, 2, 2)
    dt = torch.float16 if DEVICE.type == "cuda" else torch.bfloat16
    with torch.autocast(device_type=DEVICE.type, dtype=dt):
        new, terms = ops.mv_terms(tv, v, u, x, ti, "location", backend=backend)
    assert terms.dtype == torch.float32 and new.dtype == torch.float32
    close(terms, ref_mv_terms(tv, v, u, x, ti, "location")[1])


def test_mv_terms_bad_arguments():
    tv, v, u, x, ti = _mv_inputs(2, 2, 3, 2, 2)
    with pytest.raises(ValueError, match="grouping"):
        ops.mv_terms(tv, v, u, x, ti, "channels")
    with pytest.raises(ValueError, match="u"):
        ops.mv_terms(tv, v, u[:1], x, ti, "rows")
    with pytest.raises(ValueError, match="x"):
        ops.mv_terms(tv, v, u, x[:, :2], ti, "rows")
    with pytest.raises(TypeError, match="v"):
        ops.mv_terms(tv, v.int(), u, x, ti, "rows")
    with pytest.raises(ValueError, match="tail_index"):
        ops.mv_terms(tv, v, u, x, torch.tensor([0, 2]), "rows")
    with pytest.raises(TypeError, match="tail_index"):
        ops.mv_terms(tv, v, u, x, ti.float(), "rows")
    with pytest.raises(ValueError, match="backend"):
        ops.mv_terms(tv, v, u, x, ti, "rows", backend="triton-gpu")
    with pytest.raises(ValueError, match="x must be on the same device as tv"):
        ops.mv_terms(tv, v, u, x.to("meta"), ti, "rows")


# ============================================================================ half precision

@pytest.mark.parametrize("backend", BACKENDS)
def test_fp16_inputs_accumulate_in_fp32(backend):
    """fp16 maps (the Triton interpreter runs fp16 too): statistics are fp32 and as accurate as an
    fp32 sum of the exact fp16 values (an fp16 accumulator would be off by ~1e-3 relative);
    tensor outputs are fp16, within one fp16 rounding (rtol 1e-3) of the fp64 truth."""
    h = torch.float16
    x = (3.0 + torch.randn(3, 7, 5, 5, device=DEVICE)).to(h)
    centers = (3.0 + torch.randn(3, 4, 7, device=DEVICE)).to(h)
    mean, dist = ops.center_distance(x, centers, backend=backend)
    assert mean.dtype == dist.dtype == torch.float32
    rm, rd = ref_center_distance(x, centers)
    close(mean, rm, rtol=1e-5)
    close(dist, rd, rtol=1e-5)

    index = torch.tensor([2, 0, 2, 1], device=DEVICE)
    cr = torch.randn(4, 7, device=DEVICE).to(h)
    out = ops.displacement(x, index, cr, backend=backend)
    assert out.dtype == h
    close(out, ref_displacement(x, index, cr), rtol=1e-3, atol=1e-3)

    tv, v, u = (torch.randn(4, 7, 5, 5, device=DEVICE).to(h) for _ in range(3))
    for grouping in GROUPING:
        tvl = leaf(tv)
        new, terms = ops.mv_terms(tvl, v, u, x, index, grouping, backend=backend)
        assert new.dtype == h and terms.dtype == torch.float32
        rnew, rterms = ref_mv_terms(tv, v, u, x, index, grouping)
        close(new, rnew, rtol=1e-3, atol=1e-3)
        close(terms, rterms, rtol=1e-5)
        terms.sum().backward()
        tvr = leaf(tv.double())
        ref_mv_terms(tvr, v, u, x, index, grouping)[1].sum().backward()
        assert tvl.grad.dtype == h
        close(tvl.grad, tvr.grad, rtol=2e-3, atol=2e-3)


# ============================================================================ random shapes, no-launch

@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_odd_shapes_triton_vs_reference(seed):
    """Shapes drawn at random (odd C, H, W; N or M may be 1; repeated indices) through all three ops."""
    g = torch.Generator().manual_seed(seed)
    pick = lambda *xs: xs[int(torch.randint(len(xs), (1,), generator=g))]  # noqa: E731
    N, M, K = pick(1, 2, 3), pick(1, 2, 5), pick(1, 3, 15)
    C, H, W = pick(1, 5, 7, 17), pick(1, 3, 5, 7), pick(1, 3, 5, 7)
    x = torch.randn(N, C, H, W, device=DEVICE)
    centers = torch.randn(N, K, C, device=DEVICE)
    xr, cr = leaf(x.double()), leaf(centers.double())
    rm, rd = ref_center_distance(xr, cr)
    (rm.sum() + rd.sum()).backward()
    xa, ca = leaf(x), leaf(centers)
    with poisoned_outputs():
        mean, dist = ops.center_distance(xa, ca, backend="triton")
        (mean.sum() + dist.sum()).backward()
    close(mean, rm)
    close(dist, rd)
    close(xa.grad, xr.grad)
    close(ca.grad, cr.grad)

    index = torch.randint(0, N, (M,), device=DEVICE)
    crow = torch.randn(M, C, device=DEVICE)
    with poisoned_outputs():
        out = ops.displacement(x, index, crow, backend="triton")
    close(out, ref_displacement(x, index, crow))
    tv, v, u = (torch.randn(M, C, H, W, device=DEVICE) for _ in range(3))
    for grouping in GROUPING:
        _check_mv("triton", grouping, tv, v, u, x, index)


def test_empty_batches_launch_no_kernel(monkeypatch):
    """N = 0 / M = 0 with backend="triton": correctly shaped results and not one launcher call."""
    from rsg_fast.kernels import center_distance as kcd
    from rsg_fast.kernels import displacement as kdp
    from rsg_fast.kernels import mv_terms as kmv

    def boom(*a, **k):
        raise AssertionError("a kernel launcher was called for an empty batch")
    for mod in (kcd, kdp, kmv):
        for name in dir(mod):
            if name.endswith(("_forward", "_backward")) or name == "index_add_gather":
                monkeypatch.setattr(mod, name, boom)
    x0 = leaf(torch.randn(0, 3, 2, 2, device=DEVICE))
    mean, dist = ops.center_distance(x0, leaf(torch.randn(0, 4, 3, device=DEVICE)), backend="triton")
    (mean.sum() + dist.sum()).backward()
    assert mean.shape == (0, 3) and dist.shape == (0, 4)
    x = leaf(torch.randn(2, 3, 2, 2, device=DEVICE))
    none = torch.zeros(0, dtype=torch.int64, device=DEVICE)
    out = ops.displacement(x, none, leaf(torch.randn(0, 3, device=DEVICE)), backend="triton")
    tv = leaf(torch.randn(0, 3, 2, 2, device=DEVICE))
    new, terms = ops.mv_terms(tv, out, out, x, none, "location", backend="triton")
    (out.sum() + new.sum() + terms.sum()).backward()
    assert new.shape == (0, 3, 2, 2) and terms.tolist() == [0.0, 0.0] and terms.dtype == torch.float32
    assert x.grad.shape == x.shape and (x.grad == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_check_index_false_skips_only_the_range_check(backend):
    """Callers that build indices in range (RSG) may skip the range check; results are unchanged,
    and the shape/dtype checks of the index still run."""
    x = torch.randn(4, 3, 2, 5, device=DEVICE)
    idx = torch.tensor([3, 0, 3], device=DEVICE)
    cr = torch.randn(3, 3, device=DEVICE)
    torch.testing.assert_close(ops.displacement(x, idx, cr, backend=backend, check_index=False),
                               ops.displacement(x, idx, cr, backend=backend), rtol=0, atol=0)
    tv, v, u = (torch.randn(3, 3, 2, 5, device=DEVICE) for _ in range(3))
    a = ops.mv_terms(tv, v, u, x, idx, "location", backend=backend, check_index=False)
    b = ops.mv_terms(tv, v, u, x, idx, "location", backend=backend)
    for p, q in zip(a, b):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    with pytest.raises(TypeError, match="index"):
        ops.displacement(x, idx.float(), cr, backend=backend, check_index=False)


@pytest.mark.parametrize("backend", BACKENDS)
def test_new_samples_take_the_dtype_of_x_plus_tv(backend):
    """Under autocast T(v) may be half precision while x is fp32: the new samples stay fp32, as
    ``x[tail] + tv`` would, instead of being rounded to tv's dtype."""
    x = torch.randn(3, 5, 2, 3, device=DEVICE) * 100
    tv = torch.randn(4, 5, 2, 3, device=DEVICE).half()
    v, u = torch.randn_like(tv), torch.randn_like(tv)
    ti = torch.tensor([2, 0, 1, 2], device=DEVICE)
    new, _ = ops.mv_terms(tv, v, u, x, ti, "location", backend=backend)
    assert new.dtype == torch.float32
    torch.testing.assert_close(new, x[ti] + tv.float(), rtol=1e-6, atol=1e-5)
