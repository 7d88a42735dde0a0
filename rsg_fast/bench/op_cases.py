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
- ``DTYPES``: the --dtypes names (``cases.DTYPES``, re-exported).
- ``op_case(op, impl, setting, pool, mode=...)``: a ``Case`` whose ``fn()`` runs one call at the
  setting's shapes, on the next rotation of ``pool``'s feature maps (in the pool's dtype), with inputs requiring grad
  exactly where the module's do, and ``bytes_moved`` the bytes one call must move (for GB/s).

The pairs are the module's: Algorithm 1 on the pool's long-tailed labels (each head used once and
each tail several times, or the other way round), each sample's centre row in its own class. The
bytes are the least a call must move from device memory, so that a share of copy bandwidth is never
flattered by cache hits: a sample (or centre row) read by several pairs counts once per pass, and the
backward's re-read of ``tap_window_means``' input only for the part the device's L2 cache cannot hold
(a forward and backward timed back to back could otherwise take it from there).
"""
from __future__ import annotations

import itertools

import torch

from rsg_fast.bench.cases import DTYPES, LAMBDA_MV, Case, autocast_to, dtype_name, triton_unavailable
from rsg_fast.bench.inputs import InputPool, rotations_for
from rsg_fast.bench.settings import Setting, label_counts

OPS = ("center_assign", "displacement", "mv_terms", "mv_terms_rows", "tap_window_means")
OP_IMPLS = ("reference", "torch", "triton")
__all__ = ["OPS", "OP_IMPLS", "DTYPES", "op_unavailable", "op_case"]   # DTYPES: from cases


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
    plane = C * H * W * e
    salt = iter(range(seed * 100 + 7000, seed * 100 + 7100))

    def randn(*shape, grad=False, like_params=False):
        # Parameters (centres) stay fp32 as in the module; activations take the pool's dtype.
        t = pool.randn(shape, next(salt), dtype=torch.float32 if like_params else dtype)
        return t.requires_grad_(grad)

    def case(fn, bytes_moved):
        return Case("op", f"{op}:{impl}", "-", fn, bytes_moved, dtype=dtype_name(dtype), mode=mode)

    L, D = s.num_classes, s.dim
    gen = torch.Generator().manual_seed(seed + 23)
    if op == "center_assign":
        params = [randn(L, K, C, grad=True, like_params=True), randn(L, C, K, grad=True, like_params=True),
                  randn(L, K, grad=True, like_params=True)]
        g_cesc = randn(N, like_params=True)

        def fn():
            x, labels = pool.next()     # the long-tailed labels: a few classes hold most samples
            x = x.detach()
            for p in params:
                p.grad = None
            if impl == "reference":
                # half-precision maps with fp32 parameters meet in one bmm: the published code runs
                # so only under autocast (a dtype error otherwise)
                with autocast_to(x.device, dtype):
                    cesc = naive.center_assign(x, labels, *params)[3]
            else:   # labels in range by construction, as in the module: no range check
                cesc = ops.center_assign(x, labels, *params, backend=impl, check_target=False)[3]
            cesc.backward(g_cesc.to(cesc.dtype))
        # reads x and the centres and linear map of each class present; writes the three dense
        # parameter gradients (every class's, zeros for the absent ones)
        present = sum(1 for n in label_counts(s) if n)
        return case(fn, N * plane + 2 * present * K * C * 4 + (2 * L * K * C + L * K) * 4)

    head_index, tail_index = _pairs(s, pool.host_labels[0], device)
    M = head_index.shape[0]
    # each sample's closest centre is one of its own class's K (the module's rows)
    row = (pool.host_labels[0] * K + torch.randint(0, K, (N,), generator=gen)).to(device)
    table = randn(L * K, C, like_params=True)
    distinct_heads, distinct_tails = (int(t.unique().numel()) for t in (head_index, tail_index))
    # centre rows the heads read: several heads of a class often share their closest centre
    distinct_rows = int(row[head_index].unique().numel())
    if op == "displacement":

        def fn():
            x, _ = pool.next()
            x = x.detach()
            if impl == "reference":
                naive.displacement(x, head_index, row, table)
            else:   # indices in range by construction, as in the module: no range check
                ops.displacement(x, head_index, row, table, backend=impl, check_indices=False)
        # reads the gathered samples and their centre rows (each distinct one once), writes M displacements
        return case(fn, (distinct_heads + M) * plane + distinct_rows * C * 4)

    if op == "tap_window_means":
        pre_bytes = M * H * W * D * e
        # rotated like the feature maps, so a replayed CUDA graph does not find its input in cache
        pres = [randn(M, H, W, D, grad=True) for _ in range(rotations_for(pre_bytes, device))]
        rotation = itertools.count()
        g_means = randn(M, D, 3, 3, like_params=True)

        def fn():
            pre = pres[next(rotation) % len(pres)]
            pre.grad = None
            means = (naive.tap_window_means(pre) if impl == "reference"
                     else ops.relu_tap_window_means(pre, backend=impl))
            means.backward(g_means.to(means.dtype))
        # reads pre forward, writes its gradient, and re-reads backward what the L2 cache cannot have
        # kept of it (all of it off CUDA; none where it fits): a step from 2 to 3 passes at the L2's
        # size would count up to one whole pass that the cache may serve
        return case(fn, 2 * pre_bytes + max(0, pre_bytes - _l2_bytes(device)))

    grouping = "rows" if op == "mv_terms_rows" else "location"
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
    # g_new, tv, x[tail] and writes grad tv (each distinct tail sample once per pass)
    return case(fn, (6 * M + 2 * distinct_tails) * plane)


def _pairs(setting: Setting, labels: torch.Tensor, device) -> tuple[torch.Tensor, torch.Tensor]:
    """The generation phase's (head_index, tail_index) for one batch of labels (Algorithm 1, the
    library's pairing), on ``device``; at least one pair (the setting's batch always has a head and
    a tail, see ``settings.label_counts``)."""
    from rsg_fast import ops

    head_table = torch.zeros(setting.num_classes, dtype=torch.bool)
    head_table[list(setting.head_classes)] = True
    is_head, counts = ops.batch_plan(labels.cpu(), head_table, setting.transfer_strength, backend="torch")
    n_new = int(counts[1])
    if n_new < 1:
        raise ValueError(f"setting {setting.name!r} makes no pair from its labels; the fused ops need one")
    head_index, tail_index = ops.pair_indices(is_head, counts, n_new, backend="torch")
    return head_index.to(device), tail_index.to(device)


def _l2_bytes(device: torch.device) -> int:
    """The device's L2 cache size in bytes (0 off CUDA: no re-read is assumed to hit a cache there)."""
    return torch.cuda.get_device_properties(device).L2_cache_size if device.type == "cuda" else 0

