"""GPU-only checks of the Triton kernels: bf16/fp16 at the paper's shapes, large and >2^31-element
inputs (int64 offsets), determinism, Triton vs PyTorch on the same card. Skipped without CUDA.
Tolerances: statistics (fp32 accumulation) rtol 1e-4 against fp64 on the same low-precision values;
low-precision tensor outputs within about one rounding of their dtype (fp16 2e-3, bf16 1.6e-2).
"""
from __future__ import annotations

import pytest
import torch

from rsg_fast import ops
try:  # tests/ on sys.path (pytest's default rootdir-less import) or tests as a package
    from test_ops import close, leaf, ref_center_distance, ref_displacement, ref_mv_terms
except ImportError:  # pragma: no cover
    from tests.test_ops import close, leaf, ref_center_distance, ref_displacement, ref_mv_terms

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

DEV = "cuda"
LOWP = [(torch.float16, 2e-3), (torch.bfloat16, 1.6e-2)]


@pytest.mark.parametrize("dtype,tol", LOWP)
def test_cuda_lowp_paper_shapes(dtype, tol):
    """CIFAR ResNet-32 insertion point: N=128, C=32, 16x16, K=15, M=100."""
    N, K, C, H, W, M = 128, 15, 32, 16, 16, 100
    x = torch.randn(N, C, H, W, device=DEV).to(dtype)
    centers = torch.randn(N, K, C, device=DEV)            # fp32 parameters, low-precision maps
    mean, dist = ops.center_distance(x, centers, backend="triton")
    assert mean.dtype == dist.dtype == torch.float32
    rm, rd = ref_center_distance(x, centers)
    close(mean, rm, rtol=1e-4, atol=1e-5)
    close(dist, rd, rtol=1e-4, atol=1e-5)

    index = torch.randint(0, N, (M,), device=DEV)
    cr = torch.randn(M, C, device=DEV).to(dtype)
    out = ops.displacement(x, index, cr, backend="triton")
    assert out.dtype == dtype
    close(out, ref_displacement(x, index, cr), rtol=tol, atol=tol)

    tv, v, u = (torch.randn(M, C, H, W, device=DEV).to(dtype) for _ in range(3))
    for grouping in ("location", "rows"):
        tvl = leaf(tv)
        new, terms = ops.mv_terms(tvl, v, u, x, index, grouping, backend="triton")
        assert new.dtype == dtype and terms.dtype == torch.float32
        rnew, rterms = ref_mv_terms(tv, v, u, x, index, grouping)
        close(new, rnew, rtol=tol, atol=tol)
        close(terms, rterms, rtol=1e-4)
        g = torch.randn(2, device=DEV)
        (terms * g).sum().backward()
        tvr = leaf(tv.double())
        (ref_mv_terms(tvr, v, u, x, index, grouping)[1] * g.double()).sum().backward()
        close(tvl.grad, tvr.grad, rtol=tol, atol=tol)


@pytest.mark.parametrize("grouping", ["location", "rows"])
def test_cuda_triton_matches_torch_large_fp32(grouping):
    """ImageNet-like shapes, channels_last, all gradients: Triton vs the PyTorch path on the same card."""
    N, K, C, H, W, M = 64, 15, 256, 14, 14, 96
    x = torch.randn(N, C, H, W, device=DEV).contiguous(memory_format=torch.channels_last)
    centers = torch.randn(N, K, C, device=DEV)
    index = torch.randint(0, N, (M,), device=DEV)
    tv, v, u = (torch.randn(M, C, H, W, device=DEV) for _ in range(3))
    res = {}
    for be in ("torch", "triton"):
        xs, cs, tvs, vs, us = (leaf(t) for t in (x, centers, tv, v, u))
        mean, dist = ops.center_distance(xs, cs, backend=be)
        out = ops.displacement(xs, index, cs[index, 0], backend=be)
        new, terms = ops.mv_terms(tvs, vs, us, xs, index, grouping, backend=be)
        loss = mean.sum() + 1e-3 * dist.sum() + out.square().mean() + new.square().mean() + terms.sum()
        loss.backward()
        res[be] = [mean, dist, out, new, terms, xs.grad, cs.grad, tvs.grad, vs.grad, us.grad]
    for a, b in zip(res["triton"], res["torch"]):
        close(a, b, rtol=1e-4, atol=1e-5)


def test_cuda_deterministic():
    """Same inputs, same bits: no atomics anywhere (index-add by gather, partials summed by torch)."""
    N, C, H, W, M = 32, 64, 16, 16, 200
    x = leaf(torch.randn(N, C, H, W, device=DEV))
    index = torch.randint(0, 4, (M,), device=DEV)  # heavy repetition: many m per row
    cr = torch.randn(M, C, device=DEV)
    grads = []
    torch.use_deterministic_algorithms(True)
    try:
        for _ in range(2):
            x.grad = None
            ops.displacement(x, index, cr, backend="triton").backward(torch.ones(M, C, H, W, device=DEV) * 0.1)
            grads.append(x.grad.clone())
    finally:
        torch.use_deterministic_algorithms(False)
    assert torch.equal(grads[0], grads[1])


def test_cuda_int64_offsets():
    """A map with more than 2^31 elements (4.6 GB of fp16): the last sample is read correctly."""
    N, C, H, W = 17, 64, 1024, 2048
    x = torch.empty(N, C, H, W, device=DEV, dtype=torch.float16)
    assert x.numel() > 2**31
    x[:-1].zero_()
    x[-1].normal_()
    centers = torch.zeros(N, 2, C, device=DEV)
    mean, dist = ops.center_distance(x, centers, backend="triton")
    last = x[-1:].float()
    torch.testing.assert_close(mean[-1], last.mean(dim=(2, 3))[0], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(dist[-1, 0], last.square().sum().double().float(), rtol=1e-4, atol=0.0)
    index = torch.tensor([N - 1], device=DEV)
    out = ops.displacement(x, index, torch.zeros(1, C, device=DEV, dtype=torch.float16), backend="triton")
    assert torch.equal(out[0], x[-1])
    del out
    torch.cuda.empty_cache()
