"""ops.mv_terms (Eq. 4 and Eq. 6) on both backends against the plain fp64 reference
(rsg_fast.ops.naive.mv_terms). Tolerances: tests/helpers.py (terms: sums of |...| over all
vectors, compared at 1e-5 of their scale)."""
from __future__ import annotations

import importlib

import pytest
import torch

from helpers import BACKENDS, DEVICE, GROUPINGS, LAYOUTS, close, grads, layout, leaf
from rsg_fast import ops
from rsg_fast.kernels._common import poisoned_outputs
from rsg_fast.ops import naive

SHAPES = [  # M, N, R, C, H, W
    (1, 1, 1, 1, 1, 1),
    (3, 2, 4, 5, 3, 7),
    (4, 3, 5, 17, 3, 5),     # C > HW: "rows" vectors straddle channels
    (2, 2, 3, 70, 6, 3),     # C > 64: two channel blocks; H*W = 18 > 16: two vector blocks (their partial sums)
    (2, 2, 3, 1030, 1, 3),   # C > 1024: two channel blocks for "rows" too (its blocks hold up to 1024 channels)
]


def _inputs(M, N, R, C, H, W, dtype=torch.float32):
    tv, v = (torch.randn(M, C, H, W, device=DEVICE).to(dtype) for _ in range(2))
    x = torch.randn(N, C, H, W, device=DEVICE).to(dtype)
    tail_index = torch.randint(0, N, (M,), device=DEVICE)
    if M > 2:
        tail_index[2] = tail_index[1]
    row = torch.randint(0, R, (N,), device=DEVICE)
    table = torch.randn(R, C, device=DEVICE).to(dtype)
    return tv, v, x, tail_index, row, table


def _check(backend, grouping, tv, v, x, tail_index, row, table, rtol=1e-5):
    ref_in = [leaf(t.double()) for t in (tv, v, x, table)]
    rn, rt = naive.mv_terms(ref_in[0], ref_in[1], ref_in[2], tail_index, row, ref_in[3], grouping)
    wn, wt = torch.randn_like(rn), torch.randn_like(rt)
    ref_grads = grads([rn, rt], ref_in, [wn, wt])
    ins = [leaf(t) for t in (tv, v, x, table)]
    with poisoned_outputs():
        new, terms = ops.mv_terms(ins[0], ins[1], ins[2], tail_index, row, ins[3], grouping, backend=backend)
        got = grads([new, terms], ins, [wn, wt])
    assert new.dtype == torch.promote_types(tv.dtype, x.dtype) and new.is_contiguous()
    assert terms.dtype == (torch.float64 if x.dtype == torch.float64 else torch.float32)
    close(new, rn, rtol)
    close(terms, rt, rtol)
    for g, r in zip(got, ref_grads):
        close(g, r, rtol)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("grouping", GROUPINGS)
@pytest.mark.parametrize("shape", SHAPES)
def test_values_and_grads(backend, grouping, shape):
    _check(backend, grouping, *_inputs(*shape))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("grouping", GROUPINGS)
@pytest.mark.parametrize("kind", LAYOUTS[1:])
def test_layouts(backend, grouping, kind):
    tv, v, x, ti, row, table = _inputs(3, 2, 3, 5, 3, 4)
    _check(backend, grouping, layout(tv, kind), layout(v, kind), layout(x, kind), ti, row, table)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("grouping", GROUPINGS)
def test_kinks(backend, grouping):
    """Zero vectors (F.normalize's eps branch, ||a|| = 0), u = 0 (x equal to its centre) and
    ||tv|| == ||v|| (d|z|/dz = 0 at 0): torch autograd's conventions."""
    tv, v, x, ti, row, table = _inputs(2, 2, 2, 3, 2, 2)
    tv[0, :, 0, 0] = 0
    v[0, :, 1, 1] = 0                        # ||v|| = 0 at one location ...
    v[0].view(-1)[9:] = 0                    # ... and in one row of C consecutive elements
    v[1] = tv[1]
    x[ti[1]] = table[row[ti[1]]][:, None, None]
    _check(backend, grouping, tv, v, x, ti, row, table)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fp64_eps_is_exact(backend):
    """Vectors shorter than F.normalize's eps = 1e-12: in fp64 the kernels divide by exactly 1e-12
    (an eps rounded to fp32, 9.99999996e-13, would be off by 4e-9 relative)."""
    tv, v, x, ti, row, table = _inputs(2, 2, 2, 3, 2, 2, dtype=torch.float64)
    tv = tv * 1e-13
    x = table[row][:, :, None, None] + 1e-13 * x        # u = x - centre is tiny too
    for grouping in GROUPINGS:
        new, terms = ops.mv_terms(tv, v, x, ti, row, table, grouping, backend=backend)
        _, rt = naive.mv_terms(tv, v, x, ti, row, table, grouping)
        torch.testing.assert_close(terms.cpu(), rt.cpu(), rtol=1e-13, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("grouping", GROUPINGS)
def test_fp64_gradients_of_vectors_shorter_than_eps(backend, grouping):
    """Below F.normalize's eps, a_hat = a / eps is linear in a: the backward must drop the projection
    term (d||a||/da) there, as torch's clamp does, for tv and for u = x - centre."""
    tv, v, x, ti, row, table = _inputs(2, 2, 2, 3, 2, 2, dtype=torch.float64)
    tv = tv * 1e-13
    x = table[row][:, :, None, None] + 1e-13 * x        # u = x - centre is tiny too
    _check(backend, grouping, tv, v, x, ti, row, table, rtol=1e-10)
    # the norm term alone: its gradient a / ||a|| (size 1) is lost next to the cosine term's (1 / eps) above
    tv_fast, tv_ref = leaf(tv), leaf(tv)
    (got,) = torch.autograd.grad(ops.mv_terms(tv_fast, v, x, ti, row, table, grouping, backend=backend)[1][0], tv_fast)
    (want,) = torch.autograd.grad(naive.mv_terms(tv_ref, v, x, ti, row, table, grouping)[1][0], tv_ref)
    close(got, want, rtol=1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("grouping", GROUPINGS)
def test_fp64_gradcheck(backend, grouping):
    tv, v, x, ti, row, table = _inputs(2, 2, 2, 3, 2, 2, dtype=torch.float64)

    def fn(tv, v, x, table):
        return ops.mv_terms(tv, v, x, ti, row, table, grouping, backend=backend)
    assert torch.autograd.gradcheck(fn, [leaf(t) for t in (tv, v, x, table)])


def test_fp64_gradgradcheck():
    tv, v, x, ti, row, table = _inputs(2, 2, 2, 2, 2, 1, dtype=torch.float64)

    def fn(tv, v, x, table):
        return ops.mv_terms(tv, v, x, ti, row, table, "location", backend="torch")
    assert torch.autograd.gradgradcheck(fn, [leaf(t) for t in (tv, v, x, table)])


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_pairs(backend):
    tv, v, x, ti, row, table = _inputs(0, 3, 2, 4, 2, 2)
    ins = [leaf(t) for t in (tv, v, x, table)]
    new, terms = ops.mv_terms(ins[0], ins[1], ins[2], ti, row, ins[3], "rows", backend=backend)
    assert new.shape == (0, 4, 2, 2) and terms.tolist() == [0.0, 0.0]
    (new.sum() + terms.sum()).backward()
    assert ins[2].grad.shape == x.shape and not ins[2].grad.any()


@pytest.mark.parametrize("backend", BACKENDS)
def test_fp16_inputs_accumulate_in_fp32(backend):
    tv, v, x, ti, row, table = _inputs(4, 3, 3, 7, 5, 5)
    tv, v, x = tv.half(), v.half(), (3 + x).half()
    for grouping in GROUPINGS:
        tvl = leaf(tv)
        new, terms = ops.mv_terms(tvl, v, x, ti, row, table, grouping, backend=backend)
        assert new.dtype == torch.float16 and terms.dtype == torch.float32
        rnew, rterms = naive.mv_terms(tv.double(), v.double(), x.double(), ti, row, table.double(), grouping)
        close(new, rnew, rtol=2e-3)
        close(terms, rterms, rtol=1e-5)
        terms.sum().backward()
        tvr = leaf(tv.double())
        naive.mv_terms(tvr, v.double(), x.double(), ti, row, table.double(), grouping)[1].sum().backward()
        assert tvl.grad.dtype == torch.float16
        close(tvl.grad, tvr.grad, rtol=2e-3)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("grouping", GROUPINGS)
def test_float64_maps_with_float32_transformed_vectors(backend, grouping):
    """tv and v in fp32, x and the centres in fp64: the acc dtype is float64 (any input's float64
    counts, not only tv's): terms and the new samples are float64."""
    tv, v, x, ti, row, table = _inputs(3, 2, 3, 5, 2, 3)
    _check(backend, grouping, tv, v, x.double(), ti, row, table.double())


@pytest.mark.parametrize("backend", BACKENDS)
def test_new_samples_take_the_dtype_of_x_plus_tv(backend):
    """Under autocast T(v) may be half precision while x is fp32: the new samples stay fp32."""
    tv, v, x, ti, row, table = _inputs(4, 3, 2, 5, 2, 3)
    x = x * 100
    new, _ = ops.mv_terms(tv.half(), v.half(), x, ti, row, table, "location", backend=backend)
    assert new.dtype == torch.float32
    torch.testing.assert_close(new, x[ti] + tv.half().float(), rtol=1e-6, atol=1e-5)


def test_bad_arguments():
    tv, v, x, ti, row, table = _inputs(2, 3, 2, 4, 2, 2)
    with pytest.raises(ValueError, match="grouping"):
        ops.mv_terms(tv, v, x, ti, row, table, "channels")
    for t, w in ((tv, v[:1]), (tv[:, :, :1], v)):     # a wrong v, a wrong tv: both shapes named
        with pytest.raises(ValueError, match=rf"tv and v must have the same shape .*tv \({t.shape[0]}, "
                                             rf"{t.shape[1]}, {t.shape[2]}, .*v \({w.shape[0]}, "):
            ops.mv_terms(t, w, x, ti, row, table, "rows")
    with pytest.raises(ValueError, match="x must have shape"):
        ops.mv_terms(tv, v, x[:, :2], ti, row, table, "rows")
    with pytest.raises(TypeError, match="v must be a floating-point"):
        ops.mv_terms(tv, v.int(), x, ti, row, table, "rows")
    with pytest.raises(ValueError, match="tail_index must have shape"):
        ops.mv_terms(tv, v, x, torch.tensor([0, 2, 1]), row, table, "rows")
    with pytest.raises(ValueError, match=r"tail_index must hold values in \[0, 3\)"):
        ops.mv_terms(tv, v, x, torch.tensor([0, 3]), row, table, "rows")
    with pytest.raises(TypeError, match="tail_index"):
        ops.mv_terms(tv, v, x, ti.float(), row, table, "rows")
    with pytest.raises(ValueError, match="backend"):
        ops.mv_terms(tv, v, x, ti, row, table, "rows", backend="triton-gpu")
    with pytest.raises(ValueError, match="x must be on the same device as tv"):
        ops.mv_terms(tv, v, x.to("meta"), ti, row, table, "rows")


@pytest.mark.parametrize("grouping", GROUPINGS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("kind", LAYOUTS)
def test_the_ops_lean_forward_is_the_differentiable_one_bit_for_bit(grouping, dtype, kind):
    """The PyTorch path runs ``_forward_lean`` (in place, fewer temporaries) and create_graph recomputes
    ``_forward_torch``: two copies of one algebra, which must give the same bits."""
    mv = importlib.import_module("rsg_fast.ops.mv_terms")    # the module: the package exports the function

    tv, v, x, ti, row, table = _inputs(4, 3, 5, 17, 3, 5, dtype=dtype)
    tv, v, x = (layout(t, kind) for t in (tv, v, x))
    lean = mv._forward_lean(tv, v, x, ti, row, table, grouping)
    plain = mv._forward_torch(tv, v, x, ti, row, table, grouping)
    for a, b in zip(lean, plain):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert torch.equal(a, b)
