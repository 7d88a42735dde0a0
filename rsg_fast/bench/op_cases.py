"""The fused ops on their own: one forward(+backward) of each op, per implementation (public).

This is the ONE file that knows the fused ops' call signatures (``rsg_fast.ops``:
``center_assign(x, target, centers, linear, bias)``, ``displacement(x, index, row, table)``,
``mv_terms(tv, v, x, tail_index, row, table, grouping)``, ``relu_tap_window_means(pre)``); when
their API changes, this file changes and nothing else in the bench.

- ``OPS``: what is timed. ``mv_terms`` uses the per-location grouping (Eq. 6 as written),
  ``mv_terms_rows`` the published code's row grouping; ``tap_window_means`` is the contrastive
  module's ReLU + pooled 3x3 convolution (Eq. 2) on the generation phase's (head, Tv) pairs.
- ``OP_IMPLS``: ``reference`` (``rsg_fast.ops.naive``, the plain reference beside the ops), ``torch``
  (the ops' PyTorch path) and ``triton`` (their Triton kernels, CUDA only).
- ``op_case(op, impl, setting, pool, dtype=...)``: a ``Case`` whose ``fn()`` runs one call at the
  setting's shapes, on the next rotation of ``pool``'s feature maps, with inputs requiring grad
  exactly where the module's do, and ``bytes_moved`` the bytes one call must move (for GB/s).
"""
from __future__ import annotations

import torch

from rsg_fast.bench.cases import LAMBDA_MV, Case, triton_unavailable
from rsg_fast.bench.inputs import InputPool
from rsg_fast.bench.settings import Setting, pair_count

OPS = ("center_assign", "displacement", "mv_terms", "mv_terms_rows", "tap_window_means")
OP_IMPLS = ("reference", "torch", "triton")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def op_unavailable(impl: str, device) -> str | None:
    """Why ``impl`` cannot be timed on ``device`` (a sentence), or None."""
    return triton_unavailable(device) if impl == "triton" else None


def op_case(op: str, impl: str, setting: Setting, pool: InputPool, *, seed: int = 0, mode: str = "eager") -> Case:
    """One call of ``op`` by ``impl`` at ``setting``'s shapes in ``pool``'s dtype (see the module
    docstring). ``mode`` only labels the case ("cuda-graph": the timer replays it from a graph)."""
    from rsg_fast import ops
    from rsg_fast.ops import naive

    if op not in OPS:
        raise ValueError(f"op must be one of {OPS}, got {op!r}")
    if impl not in OP_IMPLS:
        raise ValueError(f"impl must be one of {OP_IMPLS}, got {impl!r}")
    s, device, dtype = setting, pool.device, pool.dtype
    e = dtype.itemsize
    N, (C, H, W), K = s.batch, s.maps, s.centers
    M = max(1, pair_count(s))
    plane = C * H * W * e
    dtype_name = next(k for k, v in DTYPES.items() if v == dtype)
    salt = iter(range(seed * 100 + 7000, seed * 100 + 7100))

    def randn(*shape, grad=False, like_params=False):
        # Parameters (centres) stay fp32 as in the module; activations take the pool's dtype.
        t = pool.randn(shape, next(salt), dtype=torch.float32 if like_params else dtype)
        return t.requires_grad_(grad)

    def case(fn, bytes_moved):
        return Case("op", f"{op}:{impl}", "-", fn, bytes_moved, dtype=dtype_name, mode=mode)

    L, D = s.num_classes, s.dim
    gen = torch.Generator().manual_seed(seed + 23)
    labels = torch.randint(0, L, (N,), generator=gen).to(device)
    if op == "center_assign":
        params = [randn(L, K, C, grad=True, like_params=True), randn(L, C, K, grad=True, like_params=True),
                  randn(L, K, grad=True, like_params=True)]
        g_cesc = randn(N, like_params=True)

        def fn():
            x, _ = pool.next()
            x = x.detach()
            for p in params:
                p.grad = None
            if impl == "reference":
                cesc = naive.center_assign(x, labels, *params)[3]
            else:   # labels in range by construction, as in the module: no range check
                cesc = ops.center_assign(x, labels, *params, backend=impl, check_target=False)[3]
            cesc.backward(g_cesc.to(cesc.dtype))
        # reads x and each sample's centres and linear map; writes the three dense parameter gradients
        return case(fn, N * plane + 2 * N * K * C * 4 + 2 * L * K * C * 4)

    index = torch.randint(0, N, (2 * M,), generator=gen).to(device)
    row = torch.randint(0, L * K, (N,), generator=gen).to(device)
    table = randn(L * K, C, like_params=True)
    if op == "displacement":
        head_index = index[:M]

        def fn():
            x, _ = pool.next()
            x = x.detach()
            if impl == "reference":
                naive.displacement(x, head_index, row, table)
            else:   # indices in range by construction, as in the module: no range check
                ops.displacement(x, head_index, row, table, backend=impl, check_indices=False)
        return case(fn, 2 * M * plane)   # reads M gathered samples, writes M displacements

    if op == "tap_window_means":
        pre = randn(M, H, W, D, grad=True)
        g_means = randn(M, D, 3, 3, like_params=True)

        def fn():
            pre.grad = None
            means = (naive.tap_window_means(pre) if impl == "reference"
                     else ops.relu_tap_window_means(pre, backend=impl))
            means.backward(g_means.to(means.dtype))
        return case(fn, 3 * M * H * W * D * e)    # reads pre forward and backward, writes its gradient

    grouping = "rows" if op == "mv_terms_rows" else "location"
    tail_index = index[M:]
    v = randn(M, C, H, W)
    tv = randn(M, C, H, W, grad=True)
    g_new = randn(M, C, H, W)
    g_terms = torch.tensor([LAMBDA_MV / M, LAMBDA_MV / M], device=device)

    def fn():
        x, _ = pool.next()
        x = x.detach()
        tv.grad = None
        if impl == "reference":
            new, terms = naive.mv_terms(tv, v, x, tail_index, row, table, grouping)
        else:
            new, terms = ops.mv_terms(tv, v, x, tail_index, row, table, grouping, backend=impl, check_indices=False)
        torch.autograd.backward([new, terms], [g_new, g_terms.to(terms.dtype)])
    # forward reads tv, v, x[tail] (u is rebuilt from x and the centre) and writes new; backward reads
    # g_new, tv, x[tail] and writes grad tv
    return case(fn, 8 * M * plane)
