"""ops.center_assign (Eq. 1 and Eq. 5) on both backends against the plain fp64 reference
(rsg_fast.ops.naive.center_assign). Tolerances: tests/helpers.py."""
from __future__ import annotations

import pytest
import torch

from helpers import BACKENDS, DEVICE, LAYOUTS, close, grads, layout, leaf
from rsg_fast import ops
from rsg_fast.kernels._common import poisoned_outputs
from rsg_fast.ops import naive

SHAPES = [  # N, L, K, C, H, W
    (1, 1, 1, 1, 1, 1),
    (5, 3, 4, 7, 3, 5),
    (4, 6, 15, 70, 3, 3),    # C > 32: several channel blocks, the partial-sum finish kernel
    (3, 2, 3, 5, 1, 7),
    # C = 130 at K = 15: two channel blocks in the parameters' backward (128 channels at BLOCK_K = 16);
    # H*W = 132: two spatial blocks in the forward (128 positions at 32 channels), so the variance merge
    (3, 2, 15, 130, 12, 11),
]


def _inputs(N, L, K, C, H, W, dtype=torch.float32, offset=0.0, spread=1.0):
    x = offset + spread * torch.randn(N, C, H, W, device=DEVICE, dtype=torch.float64)
    target = torch.randint(0, L, (N,), device=DEVICE)
    centers = offset + spread * torch.randn(L, K, C, device=DEVICE, dtype=torch.float64)
    linear = 0.3 * torch.randn(L, C, K, device=DEVICE, dtype=torch.float64)
    bias = torch.randn(L, K, device=DEVICE, dtype=torch.float64)
    return x.to(dtype), target, centers.to(dtype), linear.to(dtype), bias.to(dtype)


def _check(backend, x, target, centers, linear, bias, rtol=1e-5):
    """Values of all outputs and gradients of every floating input (x, centers, linear, bias)."""
    ref_in = [leaf(t.double()) for t in (x, centers, linear, bias)]
    rg, rd, rrow, rc = naive.center_assign(ref_in[0], target, *ref_in[1:])
    wg, wd, wc = torch.randn_like(rg), torch.randn_like(rd), torch.randn_like(rc)
    ref_grads = grads([rg, rd, rc], ref_in, [wg, wd, wc])
    ins = [leaf(t) for t in (x, centers, linear, bias)]
    with poisoned_outputs():
        gamma, dist, row, cesc = ops.center_assign(ins[0], target, *ins[1:], backend=backend)
        got_grads = grads([gamma, dist, cesc], ins, [wg, wd, wc])
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    assert gamma.dtype == dist.dtype == cesc.dtype == acc and row.dtype == torch.int64
    close(gamma, rg, rtol)
    close(dist, rd, rtol)
    close(cesc, rc, rtol)
    assert torch.equal(row.cpu(), rrow.cpu())
    for name, g, r in zip(("x", "centers", "linear", "bias"), got_grads, ref_grads):
        assert g.dtype == ins[["x", "centers", "linear", "bias"].index(name)].dtype, name
        close(g, r, rtol)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_values_and_grads(backend, shape):
    _check(backend, *_inputs(*shape))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", LAYOUTS[1:])
def test_layouts_and_strided_parameters(backend, kind):
    x, target, centers, linear, bias = _inputs(3, 4, 3, 6, 3, 5)
    lin_t = linear.transpose(1, 2).contiguous().transpose(1, 2)        # (L, C, K) with K-major strides
    cen_t = centers.transpose(0, 2).contiguous().transpose(0, 2)       # (L, K, C) with L fastest
    assert not (lin_t.is_contiguous() or cen_t.is_contiguous())
    _check(backend, layout(x, kind), target, cen_t, lin_t, bias.t().contiguous().t())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("offset", [1e3, 1e4])
def test_large_common_offset_keeps_its_digits(backend, offset):
    """Maps and centres at offset +- 0.01 (trained centres sit on the data): the squared distances
    and the centre gradients are 1e-5-accurate in fp32 (a mean formed before subtracting the centre
    would lose 2e-4 at 1e3 and 1e-3 at 1e4); the weighted CESC sum too."""
    x, target, centers, linear, bias = _inputs(4, 3, 5, 7, 4, 4, offset=offset, spread=0.01)
    ref_in = [leaf(t.double()) for t in (centers, linear, bias)]
    _, rd, _, rc = naive.center_assign(x.double(), target, *ref_in)
    loss_ref = rc.sum()
    ref_grads = torch.autograd.grad(loss_ref, ref_in)
    ins = [leaf(t) for t in (centers, linear, bias)]
    _, dist, _, cesc = ops.center_assign(x, target, *ins, backend=backend)
    loss = cesc.sum()
    got = torch.autograd.grad(loss, ins)
    torch.testing.assert_close(dist.double().cpu(), rd.detach().cpu(), rtol=1e-5, atol=0)
    torch.testing.assert_close(loss.double().cpu(), loss_ref.detach().cpu(), rtol=1e-5, atol=0)
    close(got[0], ref_grads[0], rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("offset", [1e3, 1e4])
def test_large_common_offset_keeps_its_digits_with_create_graph(backend, offset):
    """The same with create_graph=True (a gradient penalty) on maps without a gradient, as RSG passes
    them: the recomputation had only the saved means to go on and formed shift + dmean before
    subtracting the centre, losing the digits the previous test keeps (3e-4 at 1e3); the centres'
    gradient and its own gradient stay 1e-5-accurate."""
    x, target, centers, linear, bias = _inputs(4, 3, 5, 7, 4, 4, offset=offset, spread=0.01)

    def centre_grads(fn, dtype):
        c = leaf(centers.to(dtype))
        _, _, _, cesc = fn(x.to(dtype), target, c, linear.to(dtype), bias.to(dtype))
        (g,) = torch.autograd.grad(cesc.sum(), c, create_graph=True)
        (gg,) = torch.autograd.grad(g.square().sum(), c)
        return g.detach(), gg

    want = centre_grads(naive.center_assign, torch.float64)
    got = centre_grads(lambda *a: ops.center_assign(*a, backend=backend), torch.float32)
    close(got[0], want[0], rtol=1e-5)
    close(got[1], want[1], rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_large_maps_keep_the_digits_of_the_softmax_gradient(backend):
    """cesc reaches the logits as gamma_k (dist_k - sum_j gamma_j dist_j), two cancellations in fp32
    (a fuzzer's finding; at the paper's CIFAR stage below, grad_linear and grad_bias were 7e-3 off):
    - the distances share V = sum (x - mean)^2, which dwarfs their differences once the centres sit
      near the data, as trained ones do: the backward uses HW |mean - centre|^2, where V cancels exactly;
    - where the softmax saturates, sum_j gamma_j dist_j is nearly dist_k: the backward first shifts
      the distances by the one at the largest gamma.
    32 x 16 x 16 maps, centres near the channel means, biases that saturate some samples' softmax
    (with either half of the fix undone, a draw here fails: 4e-5 without the shift)."""
    for seed in range(10):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(8, 32, 16, 16, generator=g, dtype=torch.float64)
        centers = x.mean((0, 2, 3))[None, None, :] + 0.1 * torch.randn(1, 3, 32, generator=g, dtype=torch.float64)
        linear = torch.randn(1, 32, 3, generator=g, dtype=torch.float64)
        bias = 3 * torch.randn(1, 3, generator=g, dtype=torch.float64)
        target = torch.zeros(8, dtype=torch.long)
        ref_in = [leaf(t) for t in (linear, bias)]
        want = torch.autograd.grad(naive.center_assign(x, target, centers, *ref_in)[3].sum(), ref_in)
        ins = [leaf(t.float().to(DEVICE)) for t in (linear, bias)]
        cesc = ops.center_assign(x.float().to(DEVICE), target.to(DEVICE), centers.float().to(DEVICE), *ins,
                                 backend=backend)[3]
        for got, expected in zip(torch.autograd.grad(cesc.sum(), ins), want):
            close(got, expected, rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_near_tied_logits_pick_the_first_centre_like_the_softmax(backend):
    """Two logits one float32 ulp apart round to the same softmax weight: the closest centre is the
    argmax of gamma (the first of the tie), as in ReferenceRSG and the published code, not of the logits."""
    N, L, K, C = 2, 1, 3, 2
    x = torch.zeros(N, C, 2, 2, device=DEVICE)
    linear = torch.zeros(L, C, K, device=DEVICE)
    b = torch.tensor(0.1, dtype=torch.float32)
    bias = torch.stack([b, torch.nextafter(b, torch.tensor(1.0)), b - 1]).view(1, K).to(DEVICE)
    centers = torch.randn(L, K, C, device=DEVICE)
    target = torch.zeros(N, dtype=torch.long, device=DEVICE)
    gamma, _, row, _ = ops.center_assign(x, target, centers, linear, bias, backend=backend)
    assert gamma[0, 0] == gamma[0, 1] and bias[0, 1] > bias[0, 0]
    assert row.tolist() == [0, 0]
    assert naive.center_assign(x, target, centers, linear, bias)[2].tolist() == [0, 0]


# the interpreter evaluates the kernels in numpy, which warns about the NaN arithmetic this test asks for
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_maps_keep_the_closest_centre_inside_the_class(backend, bad):
    """A NaN/Inf in a sample's maps makes every gamma NaN. The closest centre must still be one of
    that sample's class's K rows (the first, as torch.argmax takes the first NaN): the later ops
    read the centre table at that row without a bounds check. K = 3 is not a power of two, so a
    padding lane of the kernel's argmax would point past the last class's centres."""
    x, target, centers, linear, bias = _inputs(4, 4, 3, 5, 2, 3)
    target = torch.tensor([3, 1, 3, 0], device=DEVICE)
    x[0, 2, 1, 1] = bad
    x[2, 0, 0, 0] = bad
    gamma, _, row, _ = ops.center_assign(x, target, centers, linear, bias, backend=backend)
    assert torch.isnan(gamma[[0, 2]]).all()
    assert row[[0, 2]].tolist() == [9, 9]                     # class 3, its first centre
    assert row.tolist() == naive.center_assign(x, target, centers, linear, bias)[2].tolist()


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:All-NaN slice encountered:RuntimeWarning")
@pytest.mark.parametrize("K", [3, 4])
def test_non_finite_maps_give_the_torch_paths_nan_gradients(K):
    """The backward of a sample whose gammas are all NaN: the Triton path must run (at K = 4 its
    softmax shift once took an argmax over NaN alone, which the interpreter refuses) and leave NaN
    exactly where the PyTorch path does, in the gradient of every input."""
    x, target, centers, linear, bias = _inputs(4, 3, K, 5, 2, 3)
    target = torch.tensor([2, 1, 2, 0], device=DEVICE)
    x[1, 0, 0, 0] = float("nan")
    found = {}
    for backend in BACKENDS:
        inputs = [leaf(t) for t in (x, centers, linear, bias)]
        gamma, dist, _, cesc = ops.center_assign(inputs[0], target, *inputs[1:], backend=backend)
        (gamma.sum() + dist.sum() + cesc.sum()).backward()
        found[backend] = [torch.isnan(t.grad) for t in inputs]
    assert found["torch"][0].any()
    for got, want in zip(found["triton"], found["torch"]):
        assert torch.equal(got, want)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fp16_maps_accumulate_in_fp32(backend):
    x, target, centers, linear, bias = _inputs(3, 2, 4, 7, 5, 5, offset=3.0)
    x = x.half()
    gamma, dist, _, _ = ops.center_assign(x, target, centers, linear, bias, backend=backend)
    assert gamma.dtype == dist.dtype == torch.float32
    rg, rd, _, _ = naive.center_assign(x.double(), target, centers.double(), linear.double(), bias.double())
    close(dist, rd, rtol=1e-5)
    close(gamma, rg, rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fp64_gradcheck(backend):
    x, target, centers, linear, bias = _inputs(2, 2, 2, 3, 2, 2, dtype=torch.float64)
    inputs = [leaf(t) for t in (x, centers, linear, bias)]
    assert torch.autograd.gradcheck(lambda *a: ops.center_assign(a[0], target, *a[1:], backend=backend)[::3], inputs)


def test_fp64_gradgradcheck():
    """create_graph=True (e.g. a gradient penalty): the backward is itself differentiable. Both
    backends take the same recomputation there, so one backend is checked."""
    x, target, centers, linear, bias = _inputs(2, 2, 2, 2, 2, 2, dtype=torch.float64)
    inputs = [leaf(t) for t in (x, centers, linear, bias)]
    assert torch.autograd.gradgradcheck(lambda *a: ops.center_assign(a[0], target, *a[1:], backend="torch")[::3],
                                        inputs)


@pytest.mark.parametrize("backend", BACKENDS)
def test_maps_without_a_gradient_may_change_in_place_after_the_call(backend):
    """RSG passes detached maps and, before the threshold, returns them to the caller, whose next op
    may work in place (nn.ReLU(inplace=True)). The op kept x for its backward, which then failed
    ("modified by an inplace operation") where ReferenceRSG's did not; x is kept only when it needs
    a gradient, and the parameters' gradients, first order (the fast backward) and with
    create_graph=True (the recomputation), are those of the plain fp64 reference on the unchanged maps."""
    x, target, centers, linear, bias = _inputs(5, 3, 4, 7, 3, 5, dtype=torch.float64)
    weights = [torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64),
               torch.randn(5, dtype=torch.float64)]

    def gradients(fn, in_place, create_graph):
        params = [leaf(t) for t in (centers, linear, bias)]
        maps = x.clone()
        gamma, dist, _, cesc = fn(maps, target, *params)
        if in_place:
            maps.relu_()
        first = grads([gamma, dist, cesc], params, weights) if not create_graph else torch.autograd.grad(
            sum((o * w).sum() for o, w in zip((gamma, dist, cesc), weights)), params, create_graph=True)
        if not create_graph:
            return first
        return [g.detach() for g in first] + list(torch.autograd.grad(sum(g.square().sum() for g in first), params))

    for create_graph in (False, True):
        want = gradients(naive.center_assign, False, create_graph)
        got = gradients(lambda *a: ops.center_assign(*a, backend=backend), True, create_graph)
        for g, r in zip(got, want):
            close(g, r, rtol=1e-9)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch(backend):
    x, target, centers, linear, bias = _inputs(0, 3, 4, 5, 2, 2)
    ins = [leaf(t) for t in (x, centers, linear, bias)]
    gamma, dist, row, cesc = ops.center_assign(ins[0], target, *ins[1:], backend=backend)
    assert gamma.shape == dist.shape == (0, 4) and row.shape == cesc.shape == (0,)
    (gamma.sum() + dist.sum() + cesc.sum()).backward()
    for t in ins:
        assert t.grad.shape == t.shape and not t.grad.any()


@pytest.mark.parametrize("backend", BACKENDS)
def test_autocast_sees_inputs_unchanged_and_gives_fp32(backend):
    x, target, centers, linear, bias = _inputs(3, 2, 3, 4, 3, 3)
    dt = torch.float16 if DEVICE.type == "cuda" else torch.bfloat16
    with torch.autocast(device_type=DEVICE.type, dtype=dt):
        gamma, dist, _, _ = ops.center_assign(x, target, centers, linear, bias, backend=backend)
    assert gamma.dtype == dist.dtype == torch.float32
    rg, rd, _, _ = naive.center_assign(*[t.double() if t.is_floating_point() else t
                                      for t in (x, target, centers, linear, bias)])
    close(dist, rd)
    close(gamma, rg)


def test_bad_arguments():
    x, target, centers, linear, bias = _inputs(2, 3, 4, 5, 2, 2)
    call = ops.center_assign
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        call(x.numpy(), target, centers, linear, bias)
    with pytest.raises(TypeError, match="x must be a floating-point"):
        call(x.long(), target, centers, linear, bias)
    with pytest.raises(ValueError, match="centers must have shape"):
        call(x, target, centers[:, :, :3], linear, bias)
    with pytest.raises(ValueError, match="linear must have shape"):
        call(x, target, centers, linear[:, :, :2], bias)
    with pytest.raises(ValueError, match="bias must have shape"):
        call(x, target, centers, linear, bias[:2])
    with pytest.raises(ValueError, match="target must have shape"):
        call(x, target[:1], centers, linear, bias)
    with pytest.raises(ValueError, match=r"target must hold values in \[0, 3\)"):
        call(x, torch.tensor([0, 3]), centers, linear, bias)
    with pytest.raises(ValueError, match="backend"):
        call(x, target, centers, linear, bias, backend="gpu")
    with pytest.raises(ValueError, match="centers must be on the same device as x"):
        call(x, target, centers.to("meta"), linear, bias)


@pytest.mark.parametrize("backend", BACKENDS)
def test_incoming_gradients_in_any_strides(backend):
    """The backward reads the incoming gradients of gamma, dist and cesc with their own strides (a
    transposed one, one expanded along N, a gapped one), not as if they were contiguous."""
    x, target, centers, linear, bias = _inputs(5, 3, 3, 7, 3, 5)
    wg = torch.randn(3, 5, device=DEVICE).t()               # (N, K) with K-major strides
    wd = torch.randn(1, 3, device=DEVICE).expand(5, 3)       # stride 0 along N
    wc = torch.randn(10, device=DEVICE)[::2]                 # stride 2
    assert not (wg.is_contiguous() or wd.is_contiguous() or wc.is_contiguous())
    ref_in = [leaf(t.double()) for t in (x, centers, linear, bias)]
    rg, rd, _, rc = naive.center_assign(ref_in[0], target, *ref_in[1:])
    want = torch.autograd.grad([rg, rd, rc], ref_in, [wg.double(), wd.double(), wc.double()])
    ins = [leaf(t) for t in (x, centers, linear, bias)]
    gamma, dist, _, cesc = ops.center_assign(ins[0], target, *ins[1:], backend=backend)
    got = torch.autograd.grad([gamma, dist, cesc], ins, [wg, wd, wc])
    for g, r in zip(got, want):
        close(g, r)


@pytest.mark.parametrize("backend", BACKENDS)
def test_float64_parameters_make_the_op_float64(backend):
    """fp32 maps with fp64 parameters: the acc dtype is float64 (any input's float64 counts, not only
    x's), so the outputs are float64 and as exact as an all-fp64 computation on the same values."""
    x, target, centers, linear, bias = _inputs(4, 3, 3, 5, 3, 2)
    params = [leaf(t.double()) for t in (centers, linear, bias)]
    ref_in = [leaf(t.double()) for t in (centers, linear, bias)]
    rg, rd, rrow, rc = naive.center_assign(x.double(), target, *ref_in)
    wg, wd, wc = torch.randn_like(rg), torch.randn_like(rd), torch.randn_like(rc)
    gamma, dist, row, cesc = ops.center_assign(x, target, *params, backend=backend)
    assert gamma.dtype == dist.dtype == cesc.dtype == torch.float64
    for got, want in ((gamma, rg), (dist, rd), (cesc, rc)):
        close(got, want, rtol=1e-10)
    assert torch.equal(row.cpu(), rrow.cpu())
    for g, r in zip(grads([gamma, dist, cesc], params, [wg, wd, wc]), grads([rg, rd, rc], ref_in, [wg, wd, wc])):
        assert g.dtype == torch.float64
        close(g, r, rtol=1e-10)


def test_large_parameter_gradients_are_ordinary_dense_tensors(monkeypatch):
    """Above CALLOC_BYTES the CPU path's class-parameter gradients start from calloc'd zeros (no pass
    over every class): the same values as from torch.zeros, and ordinary tensors an optimiser takes."""
    from rsg_fast.ops import _common

    # on the CPU wherever the suite runs: the calloc zeros are the CPU path's
    x, target, centers, linear, bias = (t.cpu() for t in _inputs(6, 40, 3, 64, 2, 2))
    monkeypatch.setattr(_common, "CALLOC_BYTES", centers.numel() * 4)   # the centres' and linear's grads
    from_numpy, calls = torch.from_numpy, []
    monkeypatch.setattr(torch, "from_numpy", lambda a: calls.append(a.shape) or from_numpy(a))

    def run():
        params = [leaf(t) for t in (centers, linear, bias)]
        gamma, dist, _, cesc = ops.center_assign(x, target, *params, backend="torch")
        (gamma.sum() + dist.sum() + cesc.sum()).backward()
        return params

    got = run()
    assert calls == [(40, 3, 64), (40, 64, 3)]
    monkeypatch.setattr(_common, "CALLOC_BYTES", float("inf"))
    want = run()
    for p, q in zip(got, want):
        assert p.grad.is_contiguous() and p.grad.dtype == p.dtype
        assert torch.equal(p.grad, q.grad)
    torch.optim.SGD(got, lr=0.1, momentum=0.9, weight_decay=1e-4).step()
    got[0].grad.zero_()
