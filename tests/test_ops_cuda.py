"""GPU-only checks of the Triton kernels: bf16/fp16 at the paper's shapes, large and >2^31-element
inputs (int64 offsets), determinism, Triton vs PyTorch on the same card. Skipped without CUDA.
Tolerances: statistics (fp32 accumulation) rtol 1e-4 against fp64 on the same low-precision values;
low-precision tensor outputs within about one rounding of their dtype (fp16 2e-3, bf16 1.6e-2).
"""
from __future__ import annotations

import pytest
import torch

from helpers import close, leaf
from rsg_fast import ops
from rsg_fast.ops import naive

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

DEV = "cuda"
LOWP = [(torch.float16, 2e-3), (torch.bfloat16, 1.6e-2)]


def _params(L, K, C):
    return (torch.randn(L, K, C, device=DEV), 0.3 * torch.randn(L, C, K, device=DEV), torch.randn(L, K, device=DEV))


@pytest.mark.parametrize("dtype,tol", LOWP)
@pytest.mark.parametrize("shape", [(128, 10, 15, 32, 16, 16, 100), (64, 100, 15, 1024, 14, 14, 96)])
def test_cuda_lowp_paper_shapes(dtype, tol, shape):
    """CIFAR (ResNet-32 stage 2) and ImageNet-LT (ResNet-50 layer 3) insertion points."""
    N, L, K, C, H, W, M = shape
    x = torch.randn(N, C, H, W, device=DEV).to(dtype)
    target = torch.randint(0, L, (N,), device=DEV)
    centers, linear, bias = _params(L, K, C)                 # fp32 parameters, low-precision maps
    gamma, dist, row, cesc = ops.center_assign(x, target, centers, linear, bias, backend="triton")
    rg, rd, _, rc = naive.center_assign(x.double(), target, centers.double(), linear.double(), bias.double())
    close(gamma, rg, rtol=1e-4)
    close(dist, rd, rtol=1e-4)
    close(cesc, rc, rtol=1e-4)

    table = centers.flatten(0, 1)
    index = torch.randint(0, N, (M,), device=DEV)
    out = ops.displacement(x, index, row, table, backend="triton")
    assert out.dtype == dtype
    close(out, naive.displacement(x.double(), index, row, table.double()), rtol=tol)

    # |v| about twice |tv| at every location: the MV term |(|tv| - |v|)| has a kink where the norms tie,
    # and at a near-tie the fp32 and float64 signs can differ (a gradient jump, not an error)
    tv, v = torch.randn(M, C, H, W, device=DEV).to(dtype), (2 * torch.randn(M, C, H, W, device=DEV)).to(dtype)
    for grouping in ("location", "rows"):
        tvl = leaf(tv)
        new, terms = ops.mv_terms(tvl, v, x, index, row, table, grouping, backend="triton")
        assert new.dtype == dtype and terms.dtype == torch.float32
        rnew, rterms = naive.mv_terms(tv.double(), v.double(), x.double(), index, row, table.double(), grouping)
        close(new, rnew, rtol=tol)
        close(terms, rterms, rtol=1e-4)
        g = torch.randn(2, device=DEV)
        (terms * g).sum().backward()
        tvr = leaf(tv.double())
        (naive.mv_terms(tvr, v.double(), x.double(), index, row, table.double(), grouping)[1] * g.double()).sum().backward()
        close(tvl.grad, tvr.grad, rtol=tol)


@pytest.mark.parametrize("grouping", ["location", "rows"])
def test_cuda_triton_matches_torch_large_fp32(grouping):
    """ImageNet-like shapes, channels_last, all gradients: Triton vs the PyTorch path on the same card."""
    N, L, K, C, H, W, M = 64, 50, 15, 256, 14, 14, 96
    x = torch.randn(N, C, H, W, device=DEV).contiguous(memory_format=torch.channels_last)
    target = torch.randint(0, L, (N,), device=DEV)
    params = _params(L, K, C)
    index = torch.randint(0, N, (M,), device=DEV)
    tv, v = torch.randn(M, C, H, W, device=DEV), 2 * torch.randn(M, C, H, W, device=DEV)   # no near-ties (above)
    res = {}
    for be in ("torch", "triton"):
        xs, tvs, vs = leaf(x), leaf(tv), leaf(v)
        ps = [leaf(p) for p in params]
        gamma, dist, row, cesc = ops.center_assign(xs, target, *ps, backend=be)
        table = ps[0].flatten(0, 1)
        out = ops.displacement(xs, index, row, table, backend=be)
        new, terms = ops.mv_terms(tvs, vs, xs, index, row, table, grouping, backend=be)
        loss = gamma.sum() + 1e-3 * dist.sum() + 1e-3 * cesc.mean() + out.square().mean() + new.square().mean() \
            + terms.sum()
        loss.backward()
        res[be] = [gamma, dist, row, cesc, out, new, terms, xs.grad, tvs.grad, vs.grad] + [p.grad for p in ps]
    for a, b in zip(res["triton"], res["torch"]):
        close(a, b, rtol=1e-4)


def test_cuda_deterministic():
    """Same inputs, same bits: no atomics anywhere (index-add by gather, segmented parameter sums)."""
    N, L, K, C, H, W, M = 32, 4, 5, 64, 16, 16, 200
    x = leaf(torch.randn(N, C, H, W, device=DEV))
    target = torch.randint(0, L, (N,), device=DEV)
    params = [leaf(p) for p in _params(L, K, C)]
    index = torch.randint(0, 4, (M,), device=DEV)  # heavy repetition: many m per row
    row = torch.randint(0, L * K, (N,), device=DEV)
    results = []
    torch.use_deterministic_algorithms(True)
    try:
        for _ in range(2):
            for t in [x, *params]:
                t.grad = None
            out = ops.displacement(x, index, row, params[0].detach().flatten(0, 1), backend="triton")
            _, _, _, cesc = ops.center_assign(x, target, *params, backend="triton")
            (0.1 * out.sum() + cesc.sum()).backward()
            results.append([t.grad.clone() for t in [x, *params]])
    finally:
        torch.use_deterministic_algorithms(False)
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_cuda_int64_offsets():
    """A map with more than 2^31 elements (4.6 GB of fp16): the last sample is read correctly."""
    N, C, H, W = 17, 64, 1024, 2048
    x = torch.empty(N, C, H, W, device=DEV, dtype=torch.float16)
    assert x.numel() > 2**31
    x[:-1].zero_()
    x[-1].normal_()
    target = torch.zeros(N, dtype=torch.long, device=DEV)
    centers = torch.zeros(1, 2, C, device=DEV)
    _, dist, _, _ = ops.center_assign(x, target, centers, torch.zeros(1, C, 2, device=DEV),
                                   torch.zeros(1, 2, device=DEV), backend="triton")
    last = x[-1:].float()
    torch.testing.assert_close(dist[-1, 0], last.square().sum().double().float(), rtol=1e-4, atol=0.0)
    index = torch.tensor([N - 1], device=DEV)
    out = ops.displacement(x, index, torch.zeros(N, dtype=torch.long, device=DEV),
                           torch.zeros(1, C, device=DEV, dtype=torch.float16), backend="triton")
    assert torch.equal(out[0], x[-1])
    del out
    torch.cuda.empty_cache()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_cuda_rsg_on_a_gpu_that_is_not_current():
    """Triton launches on the current device; RSG on cuda:1 while cuda:0 is current must run on cuda:1
    (on cuda:0's stream it would fail, or with peer access race the work that made its inputs) and
    match the same module on cuda:0, values and gradients, in the generation phase."""
    import copy

    from rsg_fast import RSG
    torch.manual_seed(0)
    rsg0 = RSG(4, [8, 5, 5], 6, 16, [0, 1], 1.0, 0, backend="triton").to("cuda:0")
    rsg1 = copy.deepcopy(rsg0).to("cuda:1")
    x = torch.randn(12, 8, 5, 5)
    y = torch.tensor([0, 1, 0, 2, 3, 1, 4, 5, 0, 2, 1, 3])
    results = []
    for rsg, dev in ((rsg0, "cuda:0"), (rsg1, "cuda:1")):
        torch.cuda.set_device(0)
        xd = x.to(dev).requires_grad_()
        maps, cesc, mv, labels = rsg(xd, [0, 1], y.to(dev), 1)
        (maps.square().sum() + cesc + mv).backward()
        torch.cuda.synchronize(dev)
        grads = [p.grad for p in rsg.parameters() if p.grad is not None]     # the frozen classifier has none
        results.append([t.cpu() for t in (maps, cesc, mv, labels.double(), xd.grad, *grads)])
    assert len(results[0]) == len(results[1]) > 6
    for a, b in zip(*results):
        close(b, a, rtol=1e-5)
