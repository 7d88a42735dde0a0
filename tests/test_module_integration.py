"""RSG under what a training script layers on top of it: no_grad and inference_mode, activation
checkpointing (also compiled), autocast with a scaled loss, torch.compile(dynamic=True), channels_last
maps under autocast, deterministic mode compiled, parameters the user froze and optimiser steps, module
hooks, an in-place op after it, a whole module copied or saved, and a ResNet trained with it. Each is
compared with ReferenceRSG, or with RSG's own plain call where the feature must change nothing, in
both phases, at maps of no power-of-two size and at batches of one sample, without heads or without
tails. torch.compile here is aot_eager: inductor's values are compared with eager mode in
test_module_compile.py, and its cold compiles would take minutes on the CPU."""
from __future__ import annotations

import contextlib
import copy
import io

import pytest
import torch
import torch._dynamo
import torch.nn.functional as F

from helpers import close, compile_setting, leaf
from rsg_fast import RSG, ReferenceRSG
from rsg_fast.models import build_model
from rsg_fast.testing import TOLERANCES, assert_close

THRESH = 3
EPOCHS = (0, THRESH + 2)               # before and after the threshold
C, H, W, K, D, L, HEADS = 5, 3, 7, 3, 6, 5, [0, 1]
LABELS = {                              # every branch of a forward: pairs, none to make, one sample
    "mixed": [0, 2, 1, 3, 0, 4, 2],
    "no-heads": [2, 3, 4, 2, 3],
    "no-tails": [0, 1, 0, 0],
    "one": [3],
}


def _pair(dtype=torch.float64, mv_loss="original"):
    """A ReferenceRSG and an RSG holding the same parameters, centres and biases off their constant
    start (so the closest centres differ between samples)."""
    torch.manual_seed(0)
    ref = ReferenceRSG(K, [C, H, W], L, D, HEADS, 1.0, THRESH, mv_loss=mv_loss)
    with torch.no_grad():
        ref.centers.normal_(0, 0.5)
        ref.bias.normal_(1, 0.3)
        ref.linear.mul_(0.3)
    ref = ref.to(dtype)
    fast = RSG(K, [C, H, W], L, D, HEADS, 1.0, THRESH, mv_loss=mv_loss).to(dtype)
    fast.load_state_dict(ref.state_dict())
    return ref, fast


def _batch(kind: str, dtype=torch.float64, seed=0):
    y = torch.tensor(LABELS[kind])
    x = torch.randn(len(y), C, H, W, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (2 * x + 0.5).to(dtype), y


def _step(call, rsg, x, y, epoch, context=None, scaler=None):
    """``call(x, heads, y, epoch)`` (RSG itself, or a wrapper of it) inside ``context``, then the
    backward of a fixed linear function of all four outputs (scaled by ``scaler``, a GradScaler),
    outside it. Returns the outputs, x's gradient and each of ``rsg``'s parameter gradients (None
    where none arrived), unscaled."""
    x = leaf(x)
    rsg.zero_grad(set_to_none=True)
    with context if context is not None else contextlib.nullcontext():
        maps, cesc, mv, y_out = call(x, HEADS, y, epoch)
    weight = torch.randn(maps.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    objective = (maps.double() * weight).sum() + 0.37 * cesc.double() + 1.3 * mv.double()
    scale = 1.0 if scaler is None else scaler.get_scale()
    (objective if scaler is None else scaler.scale(objective)).backward()
    grads = {n: None if p.grad is None else p.grad / scale for n, p in rsg.named_parameters()}
    return dict(outs=[maps.detach(), cesc.detach(), mv.detach()], y=y_out, x=x.grad / scale, grads=grads)


def _assert_matches(got, want, rtol, what, exact=False):
    """Same labels and shapes; values and every gradient within ``rtol`` (``exact``: the same bits).
    A parameter one side gives no gradient must get none or zeros on the other (compiled graphs give
    T zeros where eager mode gives none)."""
    assert torch.equal(got["y"], want["y"]), f"{what}: labels"
    pairs = list(zip(got["outs"] + [got["x"]], want["outs"] + [want["x"]], ("maps", "cesc", "mv", "x grad")))
    for name in want["grads"]:
        a, b = got["grads"][name], want["grads"][name]
        if a is None or b is None:
            assert (a is None or not a.any()) and (b is None or not b.any()), f"{what}: gradient of {name}"
            continue
        pairs.append((a, b, f"gradient of {name}"))
    for a, b, name in pairs:
        assert a.shape == b.shape, f"{what}: {name} shape"
        if exact:
            assert torch.equal(a, b), f"{what}: {name} differs"
        else:
            assert_close(a, b, rtol, what=f"{what}: {name}")


# -- no_grad, inference_mode ---------------------------------------------------------------------
@pytest.mark.parametrize("kind", list(LABELS))
@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_no_grad_and_inference_mode_give_the_training_values_and_record_nothing(mode, kind):
    """An evaluation of RSG's losses without autograd: the values of a grad-enabled call, bit for bit,
    no graph (only the input passed through keeps its own), no state changed; and a first call in
    inference mode (which caches the head table as an inference tensor) leaves training working."""
    ref, fast = _pair()
    x, y = _batch(kind)
    for epoch in EPOCHS:
        fresh = copy.deepcopy(fast)
        before = {k: v.clone() for k, v in fresh.state_dict().items()}
        xg = x.clone().requires_grad_()
        with mode():
            got = fresh(xg, HEADS, y, epoch)
        assert all(not t.requires_grad and t.grad_fn is None for t in got if t is not xg)
        assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in before.items())
        assert all(p.grad is None for p in fresh.parameters())
        trained = _step(fresh, fresh, x, y, epoch)
        want = _step(ref, ref, x, y, epoch)
        _assert_matches(trained, want, TOLERANCES[torch.float64] * 10, f"{kind} epoch {epoch} after {mode.__name__}")
        for a, b in zip(got, [*trained["outs"], trained["y"]]):
            assert torch.equal(a.detach(), b), f"{kind} epoch {epoch}: {mode.__name__} changed a value"


# -- activation checkpointing --------------------------------------------------------------------
class _Checkpointed(torch.nn.Module):
    def __init__(self, rsg, use_reentrant):
        super().__init__()
        self.rsg, self.use_reentrant = rsg, use_reentrant

    def forward(self, x, heads, y, epoch):
        return torch.utils.checkpoint.checkpoint(self.rsg, x, heads, y, epoch, use_reentrant=self.use_reentrant)


@pytest.mark.parametrize("kind", list(LABELS))
@pytest.mark.parametrize("use_reentrant", [False, True])
def test_activation_checkpointing_gives_the_plain_gradients(use_reentrant, kind):
    """torch.utils.checkpoint around RSG recomputes its forward in the backward (the same pairs, as
    they depend on the labels only): the outputs and gradients of a plain call, bit for bit, and
    ReferenceRSG's."""
    ref, fast = _pair()
    x, y = _batch(kind)
    wrapped = _Checkpointed(fast, use_reentrant)
    for epoch in EPOCHS:
        got = _step(wrapped, fast, x, y, epoch)
        _assert_matches(got, _step(fast, fast, x, y, epoch), 0, f"{kind} epoch {epoch}", exact=True)
        _assert_matches(got, _step(ref, ref, x, y, epoch), TOLERANCES[torch.float64] * 10, f"{kind} epoch {epoch}")


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_activation_checkpointing_under_autocast(use_reentrant):
    """The checkpoint's recomputation runs under the autocast state of the forward: the plain
    autocast call's bits, in both phases, for a batch with pairs and for one without tails."""
    _, fast = _pair(torch.float32)
    wrapped = _Checkpointed(fast, use_reentrant)
    for epoch in EPOCHS:
        for kind in ("mixed", "no-tails"):
            x, y = _batch(kind, torch.float32)
            got = _step(wrapped, fast, x, y, epoch, torch.autocast("cpu", dtype=torch.bfloat16))
            want = _step(fast, fast, x, y, epoch, torch.autocast("cpu", dtype=torch.bfloat16))
            _assert_matches(got, want, 0, f"{kind} epoch {epoch}", exact=True)


def test_checkpointed_rsg_compiles_with_eager_values():
    """The non-reentrant checkpoint traced by torch.compile(fullgraph=True): eager values and
    gradients in both phases, for a batch with pairs and one of the same size without (one graph per
    phase serves both)."""
    _, fast = _pair(torch.float32)
    compiled = torch.compile(_Checkpointed(fast, False), backend="aot_eager", fullgraph=True)
    x, mixed = _batch("mixed", torch.float32)
    with compile_setting():
        for epoch in EPOCHS:
            for y in (mixed, torch.tensor([0, 1, 0, 0, 1, 1, 0])):
                got, want = _step(compiled, fast, x, y, epoch), _step(fast, fast, x, y, epoch)
                _assert_matches(got, want, 1e-5, f"labels {y.tolist()} epoch {epoch}")


# -- autocast, scaled loss ---------------------------------------------------------------------
@pytest.mark.parametrize("maps_dtype", ["float32", "autocast"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_autocast_with_a_scaled_loss_follows_the_reference(dtype, maps_dtype):
    """Mixed precision as a training script runs it: forward under CPU autocast (maps in fp32, or in
    autocast's dtype), a GradScaler's scaled loss backward, unscale, step. Over steps in both phases
    and at every kind of batch, RSG's losses and unscaled gradients stay within a few roundings of
    ReferenceRSG's under the same autocast, and the two modules' parameters after the steps too."""
    ref, fast = _pair(torch.float32)
    rtol = 4 * TOLERANCES[dtype]
    optimisers = [torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9) for m in (ref, fast)]
    scalers = [torch.amp.GradScaler("cpu", init_scale=2.0 ** 12) for _ in (ref, fast)]
    overflowed = False
    for step, (kind, epoch) in enumerate([(k, e) for e in EPOCHS for k in LABELS]):
        x, y = _batch(kind, torch.float32, seed=step)
        if maps_dtype == "autocast":
            x = x.to(dtype)
        results = []
        for module, optimiser, scaler in zip((ref, fast), optimisers, scalers):
            results.append(_step(module, module, x, y, epoch, torch.autocast("cpu", dtype=dtype), scaler))
            scaler.unscale_(optimiser)
            scaler.step(optimiser)
            scaler.update()
        want, got = results
        assert got["outs"][1].dtype == got["outs"][2].dtype == torch.float32, "RSG's losses stay fp32"
        assert got["outs"][0].dtype == x.dtype
        for name, g in want["grads"].items():      # an fp16 gradient that overflowed at this scale: the
            if g is not None and not torch.isfinite(g).all():      # same one on both, whose step is skipped
                assert not torch.isfinite(got["grads"][name]).all(), f"{kind} epoch {epoch}: {name}"
                overflowed = True
                got["grads"][name] = want["grads"][name] = None
        _assert_matches(got, want, rtol, f"{kind} epoch {epoch}")
        assert scalers[0].get_scale() == scalers[1].get_scale(), "one module's gradients overflowed"
    # fp16 at this scale overflows T's gradient once (both modules), so the scalers' back-off ran too
    assert overflowed == (dtype == torch.float16)
    for (name, a), b in zip(fast.named_parameters(), ref.parameters()):
        close(a, b, rtol)


# -- torch.compile(dynamic=True), channels_last, deterministic -----------------------------------------
def test_compiled_with_dynamic_true_over_changing_batch_sizes():
    """torch.compile(dynamic=True, fullgraph=True): batches of 7, 5 and 4 samples (with and without
    pairs) in both phases give eager values and gradients, and once those compiled, batches of
    sizes not seen before (9, 6, 11) compile nothing more (2 or 3 would: the contrastive phase's single
    pair is a size of 1, which dynamo compiles apart; README)."""
    _, fast = _pair(torch.float32)
    compiled = torch.compile(fast, backend="aot_eager", dynamic=True, fullgraph=True)
    gen = torch.Generator().manual_seed(5)
    unseen = []
    for n in (9, 6, 11):
        y = torch.randint(0, L, (n,), generator=gen)
        y[0], y[-1] = HEADS[0], L - 1
        unseen.append((torch.randn(n, C, H, W, generator=gen), y))
    with compile_setting():
        for epoch in EPOCHS:
            for kind in ("mixed", "no-heads", "no-tails"):
                x, y = _batch(kind, torch.float32)
                got, want = _step(compiled, fast, x, y, epoch), _step(fast, fast, x, y, epoch)
                _assert_matches(got, want, 1e-5, f"{kind} epoch {epoch}")
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        for epoch in EPOCHS:
            for x, y in unseen:
                got, want = _step(compiled, fast, x, y, epoch), _step(fast, fast, x, y, epoch)
                _assert_matches(got, want, 1e-5, f"batch of {len(y)}, epoch {epoch}")
        assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs, "a graph for a new batch size"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_channels_last_maps_under_autocast_eager_and_compiled(dtype):
    """channels_last maps under autocast: the returned batch stays channels_last, eager and compiled,
    with the values of NCHW maps, and the compiled module's values and gradients are eager's."""
    _, fast = _pair(torch.float32)
    compiled = torch.compile(fast, backend="aot_eager", fullgraph=True)
    rtol = 4 * TOLERANCES[dtype]
    with compile_setting():
        for epoch in EPOCHS:
            x, y = _batch("mixed", torch.float32)
            nhwc = x.contiguous(memory_format=torch.channels_last)
            eager = _step(fast, fast, nhwc, y, epoch, torch.autocast("cpu", dtype=dtype))
            nchw = _step(fast, fast, x, y, epoch, torch.autocast("cpu", dtype=dtype))
            got = _step(compiled, fast, nhwc, y, epoch, torch.autocast("cpu", dtype=dtype))
            for maps in (eager["outs"][0], got["outs"][0]):
                assert maps.is_contiguous(memory_format=torch.channels_last), (epoch, maps.stride())
            _assert_matches(eager, nchw, rtol, f"channels_last vs NCHW, epoch {epoch}")
            _assert_matches(got, eager, rtol, f"compiled vs eager, epoch {epoch}")


def test_compiled_under_deterministic_algorithms_repeats_bit_for_bit():
    """torch.use_deterministic_algorithms(True) with the compiled module: two runs of the same batch
    give the same bits, in both phases (eager mode: test_module_inputs.py)."""
    _, fast = _pair(torch.float32)
    compiled = torch.compile(fast, backend="aot_eager", fullgraph=True)
    torch.use_deterministic_algorithms(True)
    try:
        with compile_setting():
            for epoch in EPOCHS:
                x, y = _batch("mixed", torch.float32)
                first, second = (_step(compiled, fast, x, y, epoch) for _ in range(2))
                assert first["outs"][0].shape[0] > x.shape[0] or epoch <= THRESH
                _assert_matches(first, second, 0, f"epoch {epoch}", exact=True)
    finally:
        torch.use_deterministic_algorithms(False)


# -- frozen parameters, optimiser steps ---------------------------------------------------------------
@pytest.mark.parametrize("optimiser", ["sgd", "adamw"])
@pytest.mark.parametrize("frozen", [
    ("centers",),
    ("linear", "bias"),
    ("vec_transformation_module.0.weight",),
    ("contrastive_module.0.weight", "contrastive_fc.bias"),
], ids=["centres", "centre-weights", "T-weight", "contrastive"])
def test_frozen_parameters_and_optimiser_steps_follow_the_reference(frozen, optimiser):
    """Parameters the user froze (requires_grad_(False)) get no gradient and stay put; the others
    follow ReferenceRSG's trajectory over steps in both phases and every kind of batch."""
    ref, fast = _pair()
    optimisers = []
    for module in (ref, fast):
        for name, p in module.named_parameters():
            p.requires_grad_(name not in frozen)
        trainable = [p for p in module.parameters() if p.requires_grad]
        optimisers.append(torch.optim.SGD(trainable, lr=1e-3, momentum=0.9, weight_decay=1e-3)
                          if optimiser == "sgd" else torch.optim.AdamW(trainable, lr=1e-3))
    start = {k: v.clone() for k, v in fast.state_dict().items()}
    for step, (epoch, kind) in enumerate([(e, k) for e in EPOCHS for k in LABELS]):
        x, y = _batch(kind, seed=step)
        results = []
        for module, opt in zip((ref, fast), optimisers):
            results.append(_step(module, module, x, y, epoch))
            opt.step()
        want, got = results
        for name in frozen:
            assert got["grads"][name] is None, name
        _assert_matches(got, want, 1e-8, f"step {step}: {kind} epoch {epoch}")
    for (name, a), b in zip(fast.named_parameters(), ref.parameters()):
        if name in frozen:
            assert torch.equal(a, start[name]), name
        close(a, b, 1e-8)


# -- hooks, in-place ops after RSG, copies ---------------------------------------------------------
def test_forward_and_full_backward_hooks_see_what_they_see_on_the_reference():
    """register_forward_pre_hook / register_forward_hook / register_full_backward_hook on RSG, and a
    forward hook on its transformation T: the same calls, the extended batch, the same gradients of
    the outputs and of the input maps as on ReferenceRSG."""
    ref, fast = _pair()
    seen = {ref: [], fast: []}
    for module in (ref, fast):
        log = seen[module]
        module.register_forward_pre_hook(lambda m, args, log=log: log.append(("pre", args[0].shape[0])))
        module.register_forward_hook(lambda m, args, out, log=log: log.append(("forward", out[0].shape[0])))
        module.register_full_backward_hook(
            lambda m, g_in, g_out, log=log: log.append(("backward", g_in[0].clone(), g_out[0].clone())))
        module.vec_transformation_module.register_forward_hook(
            lambda m, args, out, log=log: log.append(("T", out.shape[0])))
    x, y = _batch("mixed")
    for epoch in EPOCHS:
        want, got = _step(ref, ref, x, y, epoch), _step(fast, fast, x, y, epoch)
        _assert_matches(got, want, 1e-9, f"epoch {epoch}")
    names = [[entry[0] for entry in seen[m]] for m in (ref, fast)]
    assert names[0] == names[1] == ["pre", "forward", "backward", "pre", "T", "forward", "backward"]
    for a, b in zip(seen[fast], seen[ref]):
        for u, v in zip(a[1:], b[1:]):
            if isinstance(v, torch.Tensor):
                close(u, v, 1e-9)
            else:
                assert u == v


@pytest.mark.parametrize("kind", list(LABELS))
def test_an_in_place_op_on_the_returned_maps(kind):
    """Before the threshold, and after it for a batch that makes no pair, RSG returns the maps it was
    given, and the caller's next op may work on them in place (nn.ReLU(inplace=True)). RSG's backward
    kept those maps and failed ("modified by an inplace operation") where ReferenceRSG's works; now
    both give the same gradients."""
    ref, fast = _pair()
    x, y = _batch(kind)

    def relu_after(module):
        return lambda maps, heads, target, epoch: (lambda out: (F.relu(out[0], inplace=True), *out[1:]))(
            module(maps * 1.0, heads, target, epoch))     # maps * 1.0: a backbone's output, not a leaf

    for epoch in EPOCHS:
        want, got = _step(relu_after(ref), ref, x, y, epoch), _step(relu_after(fast), fast, x, y, epoch)
        _assert_matches(got, want, 1e-9, f"{kind} epoch {epoch}")


def test_a_double_module_deep_copied_saved_and_loaded_whole():
    """.double() of an fp32 RSG matches an fp64 ReferenceRSG; copy.deepcopy and torch.save/torch.load
    of the whole module (its cached head tables included) give the same values and gradients."""
    ref, fast = _pair(torch.float32)
    ref, fast = ref.double(), fast.double()
    x, y = _batch("mixed")
    for epoch in EPOCHS:       # fills the head-table cache that a copy carries along
        _assert_matches(_step(fast, fast, x, y, epoch), _step(ref, ref, x, y, epoch), 1e-9, f"epoch {epoch}")
    buffer = io.BytesIO()
    torch.save(fast, buffer)
    buffer.seek(0)
    for other in (copy.deepcopy(fast), torch.load(buffer, weights_only=False)):
        for epoch in EPOCHS:
            _assert_matches(_step(other, other, x, y, epoch), _step(fast, fast, x, y, epoch), 0, f"epoch {epoch}",
                            exact=True)


# -- a network trained with it -------------------------------------------------------------------------
def test_resnet_trained_with_rsg_follows_the_one_trained_with_the_reference():
    """A ResNet-8 holding RSG and the same network holding ReferenceRSG, trained by SGD over steps of
    both phases (batches of 9, 8, 5, 1 and 6 images): the same losses and, after the steps, the same
    weights and BatchNorm statistics, RSG's parameters included."""
    torch.manual_seed(0)
    net = build_model("resnet8", 7, rsg=dict(n_center=3, contrastive_module_dim=6, epoch_thresh=1),
                      head_classes=[0, 2], input_size=12)          # RSG on 32 x 6 x 6 maps
    with torch.no_grad():
        net.rsg.centers.normal_(0, 0.5)
    other = copy.deepcopy(net)
    other.rsg = ReferenceRSG(3, net.rsg.feature_maps_shape, 7, 6, [0, 2], 1.0, 1)
    other.rsg.load_state_dict(net.rsg.state_dict())
    nets = (other, net)
    optimisers = [torch.optim.SGD(n.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4) for n in nets]
    gen = torch.Generator().manual_seed(0)
    for step, n in enumerate((9, 8, 5, 9, 1, 6)):
        images, y = torch.randn(n, 3, 12, 12, generator=gen), torch.randint(0, 7, (n,), generator=gen)
        epoch = step // 2                    # epochs 0, 1: contrastive; 2: generation
        losses = []
        for model, opt in zip(nets, optimisers):
            opt.zero_grad(set_to_none=True)
            logits, y_out, cesc, mv = model(images, y, epoch)
            loss = F.cross_entropy(logits, y_out) + 0.1 * cesc + 0.01 * mv
            loss.backward()
            opt.step()
            losses.append(loss.detach())
        close(losses[1], losses[0], 1e-5)
    for (name, a), b in zip(net.state_dict().items(), other.state_dict().values()):
        if a.is_floating_point():
            close(a, b, 1e-4)
        else:
            assert torch.equal(a, b), name
