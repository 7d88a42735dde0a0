"""``forward(..., host_target=labels_on_cpu)``: Algorithm 1's counts and pairs from the labels the caller
still holds on the host, so a forward needs no device-to-host synchronisation. It must change nothing
but where that bookkeeping runs: the same outputs and gradients, bit for bit, in both phases, both
MV-loss groupings, both backends, at odd and degenerate batches, eager and compiled; and bad input is
a clear error that changes no state. The no-synchronisation claim itself needs a GPU (the last test)."""
from __future__ import annotations

import pytest
import torch
import torch._dynamo

from helpers import BACKENDS, COMPILERS, close, compile_setting, cuda_syncs, host_waits_for_gpu, leaf, requires_cuda
from rsg_fast import RSG, ReferenceRSG
from rsg_fast.models import build_model

THRESH = 3
PHASES = {"contrastive": 0, "generation": THRESH + 1}
C, H, W, K, D, L, HEADS = 5, 3, 7, 3, 6, 6, [0, 2]


def _labels(kind: str, gen: torch.Generator) -> torch.Tensor:
    """Label batches that reach every branch: mixed (N odd), no head, no tail, one sample, none."""
    if kind == "mixed":
        y = torch.randint(0, L, (11,), generator=gen)
        y[0], y[1], y[2] = 0, 1, 2
        return y
    return {"no-heads": torch.tensor([1, 3, 4, 5, 1]), "no-tails": torch.tensor([0, 2, 2, 0]),
            "one": torch.tensor([2]), "empty": torch.zeros(0, dtype=torch.long)}[kind]


def _modules(backend: str, mv_loss: str, dtype=torch.float32):
    torch.manual_seed(0)
    ref = ReferenceRSG(K, [C, H, W], L, D, HEADS, 1.0, THRESH, mv_loss=mv_loss).to(dtype)
    with torch.no_grad():   # centres and biases off their constant start, so gamma and rows differ
        ref.centers.normal_(0, 0.5)
        ref.bias.normal_(1, 0.3)
    fast = RSG(K, [C, H, W], L, D, HEADS, 1.0, THRESH, mv_loss=mv_loss, backend=backend).to(dtype)
    fast.load_state_dict(ref.state_dict())
    return ref, fast


def _step(module, x, y, epoch, **extra):
    """Outputs and the gradients of x and every parameter of a random linear function of all four."""
    x = leaf(x)   # keeps a sliced layout
    maps, cesc, mv, y_out = module(x, HEADS, y, epoch, **extra)
    weight = torch.randn(maps.shape, generator=torch.Generator().manual_seed(1), dtype=maps.dtype).to(maps.device)
    objective = (maps * weight).sum() + 0.37 * cesc + 1.3 * mv
    params = list(module.parameters())
    found = torch.autograd.grad(objective, [x] + params, allow_unused=True)
    found = [torch.zeros_like(t) if g is None else g for g, t in zip(found, [x] + params)]
    return [maps.detach(), cesc.detach(), mv.detach(), y_out], found


@pytest.mark.parametrize("kind", ["mixed", "no-heads", "no-tails", "one", "empty"])
@pytest.mark.parametrize("mv_loss", ["original", "paper"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_host_target_changes_nothing_but_where_the_plan_is_made(backend, mv_loss, kind):
    gen = torch.Generator().manual_seed(7)
    y = _labels(kind, gen)
    x = torch.randn(y.shape[0], C, H, W, generator=gen)
    _, fast = _modules(backend, mv_loss)
    for phase, epoch in PHASES.items():
        want_out, want_grads = _step(fast, x, y, epoch)
        # another integer dtype on the host, as a DataLoader may give
        got_out, got_grads = _step(fast, x, y, epoch, host_target=y.to(torch.int32))
        for i, (a, b) in enumerate(zip(got_out + got_grads, want_out + want_grads)):
            assert a.dtype == b.dtype and torch.equal(a, b), f"{phase} {kind}: item {i} differs"


@pytest.mark.parametrize("mv_loss", ["original", "paper"])
def test_host_target_matches_the_reference_in_float64(mv_loss):
    gen = torch.Generator().manual_seed(3)
    y = _labels("mixed", gen)
    x = torch.randn(y.shape[0], C, H, W, generator=gen, dtype=torch.float64)
    ref, fast = _modules("triton", mv_loss, torch.float64)
    for epoch in PHASES.values():
        got_out, got_grads = _step(fast, x, y, epoch, host_target=y)
        want_out, want_grads = _step(ref, x, y, epoch, host_target=y)
        assert torch.equal(got_out[3], want_out[3])
        for a, b in zip(got_out[:3] + got_grads, want_out[:3] + want_grads):
            close(a, b, rtol=1e-9)


@pytest.mark.parametrize("bad, error, words", [
    ([0, 1, 2, 3], TypeError, "host_target must be a CPU torch.Tensor"),
    (torch.zeros(4, dtype=torch.long, device="meta"), ValueError, r"host_target must be on the CPU.*device_ids=None"),
    (torch.zeros(4), TypeError, "host_target must be a 1-D integer tensor"),
    (torch.zeros(4, 1, dtype=torch.long), TypeError, "host_target must be a 1-D integer tensor"),
    (torch.zeros(3, dtype=torch.long), ValueError, "target has length 4, host_target has length 3"),
    (torch.tensor([0, 1, 3, 2]), ValueError, "host_target must hold the same labels as target"),
])
@pytest.mark.parametrize("cls", [RSG, ReferenceRSG])
def test_bad_host_target_is_a_clear_error_that_changes_nothing(cls, bad, error, words):
    module = cls(K, [C, H, W], L, D, HEADS, 1.0, THRESH)
    x, y = torch.randn(4, C, H, W), torch.tensor([0, 1, 2, 3])
    before = {k: v.clone() for k, v in module.state_dict().items()}
    tables = dict(getattr(module, "_head_tables", {}))
    for epoch in PHASES.values():
        with pytest.raises(error, match=words):
            module(x, HEADS, y, epoch, host_target=bad)
    assert all(torch.equal(v, before[k]) for k, v in module.state_dict().items())
    assert dict(getattr(module, "_head_tables", {})) == tables


def test_labels_out_of_range_are_still_caught_with_host_target():
    module = RSG(K, [C, H, W], L, D, HEADS, 1.0, THRESH)
    y = torch.tensor([0, 1, 9, 3])
    with pytest.raises(ValueError, match=r"target holds label 9, outside \[0, num_classes=6\)"):
        module(torch.randn(4, C, H, W), HEADS, y, THRESH + 1, host_target=y)


def test_without_validate_a_mismatch_is_not_checked():
    """``validate=False`` skips the value checks, this one included (documented): the plan then follows
    host_target (its one head, label 0 at position 3, pairs with tails 0, 1, 2), the new samples'
    labels follow target."""
    module = RSG(K, [C, H, W], L, D, HEADS, 1.0, THRESH, validate=False)
    y = torch.tensor([0, 1, 2, 3])
    out = module(torch.randn(4, C, H, W), HEADS, y, THRESH + 1, host_target=torch.tensor([1, 1, 1, 0]))
    assert out[0].shape[0] == 4 + 3 and torch.equal(out[3], torch.tensor([0, 1, 2, 3, 0, 1, 2]))


@pytest.mark.parametrize("compiler", COMPILERS)
def test_compiled_with_host_target_matches_eager_with_one_graph_per_phase(compiler):
    _, eager = _modules("torch", "original")
    compiled = torch.compile(eager, backend=compiler, fullgraph=True)
    gen = torch.Generator().manual_seed(5)
    with compile_setting():
        for phase, epoch in PHASES.items():
            graphs = None
            for heads_in_batch in (2, 5, 8):   # a different number of new samples each time
                y = torch.randint(0, L, (11,), generator=gen)
                y[:heads_in_batch] = 0
                y[-1] = 1
                x = torch.randn(11, C, H, W, generator=gen)
                got_out, got_grads = _step(compiled, x, y, epoch, host_target=y.clone())
                want_out, want_grads = _step(eager, x, y, epoch)
                stats = torch._dynamo.utils.counters["stats"]["unique_graphs"]
                graphs = stats if graphs is None else graphs
                assert stats == graphs, f"{phase}: a new graph for a new label batch"
                assert torch.equal(got_out[3], want_out[3])
                for a, b in zip(got_out[:3] + got_grads, want_out[:3] + want_grads):
                    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
        y = torch.tensor([0, 1, 0, 2, 3, 0])
        with pytest.raises(RuntimeError, match="host_target must hold the same labels as target"):
            compiled(torch.randn(6, C, H, W), HEADS, y, THRESH + 1, host_target=y.flip(0))


def test_a_model_passes_host_target_to_rsg():
    torch.manual_seed(0)
    model = build_model("resnet32", 10, rsg=dict(n_center=3, contrastive_module_dim=16, epoch_thresh=THRESH),
                        head_classes=[0, 1])
    images, y = torch.randn(6, 3, 32, 32), torch.tensor([0, 1, 0, 2, 3, 4])
    model(images, y, THRESH + 1, host_target=y)    # passed through: a mismatch below is caught
    with pytest.raises(ValueError, match="host_target must hold the same labels as target"):
        model(images, y, THRESH + 1, host_target=y.flip(0))


@requires_cuda
@pytest.mark.parametrize("backend", BACKENDS)
def test_cuda_forward_and_backward_with_host_target_never_synchronise(backend):
    fast = RSG(15, [32, 16, 16], 10, 64, [0, 1], 1.0, 3, backend=backend).cuda()
    x = torch.randn(64, 32, 16, 16, device="cuda", requires_grad=True)
    y_host = torch.randint(0, 10, (64,))
    y_host[0], y_host[1] = 0, 5
    y = y_host.cuda()
    for epoch in (0, 9):
        out = fast(x, [0, 1], y, epoch, host_target=y_host)   # warm-up: caches, kernels
        (out[0].square().mean() + out[1] + out[2]).backward()
        with cuda_syncs() as syncs:
            out = fast(x, [0, 1], y, epoch, host_target=y_host)
            (out[0].square().mean() + out[1] + out[2]).backward()
        assert not syncs, syncs

        def step():
            out = fast(x, [0, 1], y, epoch, host_target=y_host)
            (out[0].square().mean() + out[1] + out[2]).backward()

        assert not host_waits_for_gpu(step), "the host waited for the GPU (e.g. a copy from pageable memory)"
        reference = fast(x, [0, 1], y, epoch)
        assert torch.equal(out[0], reference[0]) and torch.equal(out[3], reference[3])


@requires_cuda
def test_cuda_compiled_with_host_target_matches_eager_without_synchronising():
    """Inductor on CUDA, generation phase only (where the plan matters; one cold compile in the
    device script's time limit): eager values and gradients, and no synchronisation once compiled."""
    torch.manual_seed(0)
    eager = RSG(4, [16, 8, 8], 5, 32, HEADS, 1.0, THRESH).cuda()
    compiled = torch.compile(eager, fullgraph=True)
    y_host = torch.tensor([0, 1, 0, 2, 3, 4, 0, 1] * 2)
    y = y_host.cuda()
    x = torch.randn(16, 16, 8, 8, device="cuda")
    with compile_setting():
        epoch = PHASES["generation"]
        got_out, got_grads = _step(compiled, x, y, epoch, host_target=y_host)   # compiles
        want_out, want_grads = _step(eager, x, y, epoch)
        assert torch.equal(got_out[3], want_out[3])
        for a, b in zip(got_out[:3] + got_grads, want_out[:3] + want_grads):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)

        def step():
            maps, cesc, mv, _ = compiled(x.clone().requires_grad_(), HEADS, y, epoch, host_target=y_host)
            torch.autograd.backward([t for t in (maps.square().mean(), cesc, mv) if t.requires_grad])

        with cuda_syncs() as syncs:
            step()
        assert not syncs, syncs
        assert not host_waits_for_gpu(step), "the host waited for the GPU"
