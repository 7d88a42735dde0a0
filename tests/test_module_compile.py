"""RSG as a PyTorch 2 citizen: torch.compile(fullgraph=True) of the module and of a ResNet-32 holding
it (aot_eager and inductor, both phases, one graph per phase however the labels change), the number
of ops one forward+backward dispatches, higher-order gradients and torch.func."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch._dynamo

from helpers import COMPILERS, close, compile_setting
from rsg_fast import RSG, ReferenceRSG
from rsg_fast.models import build_model

THRESH = 3
PHASES = {"contrastive": 1, "generation": THRESH + 2}


def _graphs() -> int:
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


def _batches(N, L, heads, count, seed):
    """Label batches whose head counts differ (so the number of new samples differs), one with no tail."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(count):
        y = torch.randint(0, L, (N,), generator=g)
        y[: 2 + 2 * i] = heads[i % len(heads)]
        out.append(y)
    out.append(torch.full((N,), heads[0], dtype=torch.long))      # heads only: no pair to make
    return out


def _step(model, x, y, epoch):
    out = model(x, [0, 1], y, epoch)
    maps, cesc, mv, target = out
    loss = maps.square().mean() + cesc + mv
    params = [p for p in model.parameters()]
    grads = torch.autograd.grad(loss, [x] + params, allow_unused=True)
    # a parameter the compiled graph gives a zero gradient (T when a batch makes no pair) and eager
    # gives none: the same for an optimiser step without weight decay; compare as zeros
    grads = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, [x] + params)]
    return [maps, cesc, mv, target], grads


# (5, 3, 7): inductor could not split the data-dependent size u0 * 21 of the MV term's rows back into
# (u0, 5, 3, 7) before mv_terms kept the sample dimension apart
@pytest.mark.parametrize("maps", [(6, 5, 3), (5, 3, 7)])
@pytest.mark.parametrize("compiler", COMPILERS)
def test_compiled_rsg_matches_eager_with_one_graph_per_phase(compiler, maps):
    torch.manual_seed(0)
    eager = RSG(4, list(maps), 5, 8, [0, 1], 1.0, THRESH)        # the module's default arguments
    compiled = torch.compile(eager, backend=compiler, fullgraph=True)
    with compile_setting():
        for phase, epoch in PHASES.items():
            before = None
            for y in _batches(10, 5, [0, 1], 3, seed=epoch):
                x = torch.randn(10, *maps, requires_grad=True)
                got_out, got_grads = _step(compiled, x, y, epoch)
                want_out, want_grads = _step(eager, x, y, epoch)
                before = _graphs() if before is None else before
                assert _graphs() == before, f"{phase}: a new graph for a new label batch"
                for a, b in zip(got_out, want_out):
                    assert a.shape == b.shape
                    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
                for a, b in zip(got_grads, want_grads):
                    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


# module "channels_last": RSG moved with its network, model.to(memory_format=torch.channels_last), so
# its convolutions' weights are channels_last: T's output over the data-dependent number of new
# samples failed a view in the compiled graph (fake and real convolution strides differ)
@pytest.mark.parametrize("module", ["nchw", "channels_last"])
@pytest.mark.parametrize("compiler", COMPILERS)
def test_compiled_rsg_keeps_channels_last_maps_channels_last(compiler, module):
    """A channels_last batch stays channels_last through compiled RSG in both phases, as in eager mode
    (the next convolution of a channels_last network would convert an NCHW batch back), with eager
    values and gradients and one graph per phase as the number of new samples changes."""
    torch.manual_seed(0)
    eager = RSG(4, [6, 5, 3], 5, 8, [0, 1], 1.0, THRESH)
    if module == "channels_last":
        eager = eager.to(memory_format=torch.channels_last)
        assert eager.vec_transformation_module[0].weight.is_contiguous(memory_format=torch.channels_last)
    compiled = torch.compile(eager, backend=compiler, fullgraph=True)
    with compile_setting():
        for phase, epoch in PHASES.items():
            before = None
            for y in _batches(10, 5, [0, 1], 2, seed=epoch)[:2]:
                x = torch.randn(10, 6, 5, 3).contiguous(memory_format=torch.channels_last).requires_grad_()
                got_out, got_grads = _step(compiled, x, y, epoch)
                want_out, want_grads = _step(eager, x, y, epoch)
                before = _graphs() if before is None else before
                assert _graphs() == before, f"{phase}: a new graph for a new label batch"
                assert got_out[0].shape[0] > 10 or phase == "contrastive"
                for maps in (got_out[0], want_out[0]):
                    assert maps.is_contiguous(memory_format=torch.channels_last), (phase, maps.stride())
                for a, b in zip(got_out + got_grads, want_out + want_grads):
                    assert a.shape == b.shape
                    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


# Each failed to compile in the generation phase before (found by fuzzing torch.compile): D = 1 (the
# contrastive margin's squeeze), 1x1 maps (inductor: the 3x3 convolution's backward over a
# data-dependent batch; compiled code now takes the centre tap's matrix, checked here against the
# eager convolution), D = 3 (inductor: the tap sums' einsum as a bmm).
@pytest.mark.parametrize("maps, dim", [((3, 2, 2), 1), ((1, 1, 1), 4), ((4, 3, 5), 3)])
@pytest.mark.parametrize("compiler", COMPILERS)
def test_compiled_generation_phase_at_corner_shapes(compiler, maps, dim):
    torch.manual_seed(0)
    eager = RSG(3, list(maps), 5, dim, [0, 1], 1.0, THRESH)
    with torch.no_grad():
        eager.centers.normal_(0, 0.5)
    compiled = torch.compile(eager, backend=compiler, fullgraph=True)
    with compile_setting():
        for y in _batches(9, 5, [0, 1], 2, seed=3):
            x = torch.randn(9, *maps, requires_grad=True)
            got_out, got_grads = _step(compiled, x, y, PHASES["generation"])
            want_out, want_grads = _step(eager, x, y, PHASES["generation"])
            for a, b in zip(got_out + got_grads, want_out + want_grads):
                assert a.shape == b.shape
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


# Found by fuzzing: dynamo makes the class ids (a range's bounds) that changed since the first call
# symbolic, and the head table sorted them, the argument check iterated the range: neither traces
# (an error with fullgraph=True at the second list of two or more classes, at the second range).
@pytest.mark.parametrize("lists", [([0, 1], [1, 2], [3, 1, 2]), (range(0, 2), range(1, 4, 2))], ids=["list", "range"])
def test_compiled_rsg_takes_a_new_head_list(lists):
    torch.manual_seed(0)
    eager = RSG(3, [4, 3, 2], 5, 4, [0, 1], 1.0, THRESH)
    compiled = torch.compile(eager, backend="aot_eager", fullgraph=True)
    y = torch.tensor([0, 1, 2, 3, 4, 0, 2, 4])
    with compile_setting():
        for heads in lists:
            x = torch.randn(8, 4, 3, 2)
            for a, b in zip(compiled(x, heads, y, PHASES["generation"]), eager(x, heads, y, PHASES["generation"])):
                assert a.shape == b.shape
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_compiled_rsg_takes_many_head_lists_without_a_graph_each():
    """Found by fuzzing: the repeat check hashed the class ids (a set), which specialised the graph
    on each, so every new list of the same length compiled again and the ninth failed fullgraph at
    dynamo's recompile limit."""
    torch.manual_seed(0)
    eager = RSG(2, [3, 2, 3], 6, 4, [0, 1], 1.0, THRESH)
    compiled = torch.compile(eager, backend="aot_eager", fullgraph=True)
    x, y = torch.randn(8, 3, 2, 3), torch.tensor([0, 1, 2, 3, 4, 5, 0, 1])
    lists = [[0, 1], [1, 4], [2, 3], [0, 4], [5, 2], [3, 1], [0, 2], [1, 5], [2, 4], [3, 4], [4, 5]]
    with compile_setting():
        before = _graphs()
        for i, heads in enumerate(lists):
            for a, b in zip(compiled(x, heads, y, PHASES["generation"]), eager(x, heads, y, PHASES["generation"])):
                assert a.shape == b.shape
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
            if i == 2:   # the first list, then ids made symbolic at their first change
                settled = _graphs()
        assert _graphs() == settled and settled - before <= 3, "a graph per new head list"
        # a repeated id: compiled code's device assert (checking every pair in the graph is n^2 guards: a
        # list of 400 took 19 s to compile instead of 1 s, dynamo with backend "eager", a review found)
        with pytest.raises(RuntimeError, match="head_class_lists repeats class ids"):
            compiled(x, [1, 1, 4], y, PHASES["generation"])


# A run: the epochs, each epoch's batch sizes, and the most graphs compiled over the whole run.
RUNS = {
    # dynamo specialises the first epoch, makes it dynamic at the first change, and the phase test
    # splits that graph at the threshold; then no more graphs however long the run (with
    # dynamic=False each epoch would be a graph of its own, and fullgraph=True fails at dynamo's
    # recompile limit of 8: README)
    "equal batches": (range(THRESH + 12), (10,), 3),
    # an epoch's smaller last batch (a loader without drop_last): its size, too, is specialised once
    "a smaller last batch": (range(THRESH + 10), (10, 10, 7), 4),
    # a last batch of 2 or 3: the contrastive phase's one pair is a size of 1, which dynamo compiles
    # apart (found by fuzzing the README's count)
    "a last batch of three": (range(THRESH + 4), (10, 10, 3), 5),
    # a last batch of one: dynamo compiles a size of 1 apart in each phase, before and after the
    # epoch becomes dynamic
    "a last batch of one": (range(THRESH + 4), (10, 10, 1), 6),
    # fractional epochs (epoch + step / steps): a dynamic float from its second value, whose check
    # with math.isfinite was a dynamo error under fullgraph=True
    "float epochs": ((0.0, 0.5, 1.25, 2.75, THRESH + 0.5, THRESH + 1.5, THRESH + 2.25), (10,), 3),
    # dynamic=True: the epoch and the batch size are dynamic from the first call, so one graph per
    # phase (README), and one more per phase for a batch of one
    "dynamic=True, a smaller last batch": (range(THRESH + 4), (10, 10, 7), 2, True),
    "dynamic=True, a last batch of three": (range(THRESH + 4), (10, 10, 3), 3, True),
    "dynamic=True, a last batch of one": (range(THRESH + 4), (10, 10, 1), 4, True),
}


@pytest.mark.parametrize("run", list(RUNS))
def test_a_run_of_epochs_compiles_few_graphs(run):
    """Training calls RSG with a new epoch every epoch: a whole run compiles a few graphs (README),
    with eager values in both phases. The graph count does not depend on the backend, so aot_eager
    (inductor's values are compared with eager mode above)."""
    epochs, sizes, most, dynamic = (*RUNS[run], None)[:4]
    torch.manual_seed(0)
    eager = RSG(3, [4, 3, 5], 5, 6, [0, 1], 1.0, THRESH)
    compiled = torch.compile(eager, backend="aot_eager", fullgraph=True, dynamic=dynamic)
    with compile_setting():
        start = _graphs()
        for i, epoch in enumerate(epochs):
            for n in sizes:
                x = torch.randn(n, 4, 3, 5, requires_grad=True)
                y = _batches(n, 5, [0, 1], 1, seed=i)[0]
                got_out, _ = _step(compiled, x, y, epoch)
                want_out, _ = _step(eager, x, y, epoch)
                if n > 3:    # a batch of 3 may hold no tail (two of its labels are heads)
                    assert (got_out[0].shape[0] > n) == (epoch > THRESH), f"epoch {epoch}, batch {n}"
                for a, b in zip(got_out, want_out):
                    assert a.shape == b.shape
                    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
        assert 2 <= _graphs() - start <= most, f"{run}: {_graphs() - start} graphs"


@pytest.mark.parametrize("compiler", COMPILERS)
def test_compiled_batches_of_one_and_none(compiler):
    """An epoch's last batch may hold one sample (or, sharded, none): no pair can be made, and the
    compiled module must still trace (with n_new <= N = 1 it could not trace the pairs' backward)."""
    torch.manual_seed(0)
    eager = RSG(3, [5, 3, 7], 6, 6, [0, 2], 1.0, THRESH)
    compiled = torch.compile(eager, backend=compiler, fullgraph=True)
    with compile_setting():
        for epoch in PHASES.values():
            for y in (torch.tensor([0]), torch.tensor([4]), torch.zeros(0, dtype=torch.long)):
                x = torch.randn(y.shape[0], 5, 3, 7, requires_grad=True)
                got_out, got_grads = _step(compiled, x, y, epoch)
                want_out, want_grads = _step(eager, x, y, epoch)
                for a, b in zip(got_out + got_grads, want_out + want_grads):
                    assert a.shape == b.shape
                    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("compiler", COMPILERS)
def test_compiled_resnet32_holding_rsg(compiler):
    """The paper's network: ResNet-32 with RSG after stage 2 (32 x 16 x 16 maps), compiled whole."""
    torch.manual_seed(0)
    model = build_model("resnet32", 10, rsg=dict(n_center=3, contrastive_module_dim=16, epoch_thresh=THRESH),
                        head_classes=[0, 1])
    with torch.no_grad():   # distinct centres: at their all-zero start the centre weights' gradient is 0 +- rounding
        model.rsg.centers.normal_(0, 0.5)
    compiled = torch.compile(model, backend=compiler, fullgraph=True)
    images = torch.randn(8, 3, 32, 32)
    with compile_setting():
        for epoch in PHASES.values():
            y = torch.tensor([0, 1, 0, 2, 3, 4, 5, 0])
            model.zero_grad(set_to_none=True)
            logits, target, cesc, mv = compiled(images, y, epoch)
            (torch.nn.functional.cross_entropy(logits, target) + 0.1 * cesc + 0.01 * mv).backward()
            got = [p.grad.clone() for p in model.parameters() if p.grad is not None]
            model.zero_grad(set_to_none=True)
            logits_e, target_e, cesc_e, mv_e = model(images, y, epoch)
            (torch.nn.functional.cross_entropy(logits_e, target_e) + 0.1 * cesc_e + 0.01 * mv_e).backward()
            want = [p.grad.clone() for p in model.parameters() if p.grad is not None]
            assert torch.equal(target, target_e) and len(got) == len(want)
            close(logits, logits_e, rtol=1e-4)
            for a, b in zip(got, want):   # fp32 reassociation through 32 layers: 1e-3 of each gradient's scale
                close(a, b, rtol=1e-3)


class _OpCounter(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts the ops that can launch a kernel (views and detaches cannot)."""
    VIEWS = {"detach", "view", "t", "permute", "slice", "expand", "_unsafe_view", "select", "alias", "unsqueeze",
             "squeeze", "transpose", "as_strided", "split", "unbind", "_reshape_alias"}

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ not in self.VIEWS:
            self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("epoch, budget", [(0, 31), (THRESH + 2, 37)])
def test_one_forward_backward_dispatches_few_ops(epoch, budget):
    """The paper's CIFAR setting on the Triton backend: every top-level op of one forward+backward,
    the seeds of the backward included (each of rsg_fast's own ops launches a few kernels on a GPU,
    the centre assignment's backward three: the labels' CSR, the parameters' and x's gradients). The
    budgets are today's counts, so that launches cannot creep back up: 29 + 2 seeds before the
    threshold, 34 + 3 after it."""
    torch.manual_seed(0)
    rsg = RSG(15, [32, 16, 16], 10, 64, [0, 1], 1.0, THRESH, backend="triton")
    x = torch.randn(32, 32, 16, 16, requires_grad=True)     # the backbone's maps
    y = torch.randint(0, 10, (32,))
    y[:8] = 0
    rsg(x, [0, 1], y, epoch)                         # warm the head table
    with _OpCounter() as counter:
        maps, cesc, mv, _ = rsg(x, [0, 1], y, epoch)
        outs = [t for t in (maps, cesc, mv) if t.requires_grad]    # phase 1's loss_mv is a constant 0
        torch.autograd.backward(outs, [torch.ones_like(t) for t in outs])
    assert len(counter.ops) <= budget, counter.ops
    assert sum(op.startswith("rsg_fast.") for op in counter.ops) == (5 if epoch == 0 else 9)   # the fused ops ran


def test_gradient_penalty_matches_the_reference():
    """create_graph=True through every fused op: the gradient of a gradient-norm penalty on RSG's
    parameters equals ReferenceRSG's (fp64)."""
    torch.manual_seed(0)
    ref = ReferenceRSG(3, [4, 3, 3], 4, 6, [0], 1.0, THRESH).double()
    with torch.no_grad():
        ref.centers.normal_(0, 0.5)
    fast = RSG(3, [4, 3, 3], 4, 6, [0], 1.0, THRESH, backend="triton").double()
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(8, 4, 3, 3, dtype=torch.float64)
    y = torch.tensor([0, 1, 0, 2, 3, 0, 1, 2])
    for epoch in PHASES.values():
        results = []
        for module in (ref, fast):
            module.zero_grad(set_to_none=True)
            _, cesc, mv, _ = module(x, [0], y, epoch)
            params = [p for p in module.parameters() if p.requires_grad]
            first = torch.autograd.grad(cesc + mv, params, create_graph=True, allow_unused=True)
            penalty = sum(g.square().sum() for g in first if g is not None)
            penalty.backward()
            results.append([torch.zeros_like(p) if p.grad is None else p.grad for p in params])
        for a, b in zip(*results):
            torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-9)


def test_torch_func_transforms_fail_with_a_clear_message():
    rsg = RSG(3, [4, 3, 3], 4, 6, [0], 1.0, THRESH)
    x, y = torch.randn(6, 4, 3, 3), torch.tensor([0, 1, 0, 2, 3, 0])
    with pytest.raises(RuntimeError, match="does not support torch.func transforms"):
        torch.func.grad(lambda maps: rsg(maps, [0], y, 0)[1])(x)


def test_compiled_label_check_is_a_device_assert():
    """Under torch.compile the label range is checked without a host synchronisation (eager keeps its
    ValueError naming the label); on the CPU the assert raises at once."""
    rsg = RSG(3, [4, 3, 3], 4, 6, [0], 1.0, THRESH)
    compiled = torch.compile(rsg, backend="aot_eager", fullgraph=True)
    x = torch.randn(6, 4, 3, 3)
    with compile_setting():
        compiled(x, [0], torch.tensor([0, 1, 0, 2, 3, 0]), 0)
        with pytest.raises(RuntimeError, match=r"target holds a label outside \[0, num_classes=4\)"):
            compiled(x, [0], torch.tensor([0, 1, 0, 2, 9, 0]), 0)


def test_compiled_argument_errors_carry_the_eager_message():
    """A rejected argument under torch.compile: the eager ValueError without fullgraph (dynamo runs
    the frame eagerly), and with fullgraph=True dynamo's own error quoting it (README)."""
    rsg = RSG(3, [4, 3, 3], 4, 6, [0], 1.0, THRESH)
    bad = torch.randn(6, 5, 3, 3)                      # 5 channels, the module has 4
    y = torch.tensor([0, 1, 0, 2, 3, 0])
    words = r"feature_maps must have \(C, H, W\) = \(4, 3, 3\)"
    with compile_setting():
        with pytest.raises(ValueError, match=words):
            torch.compile(rsg, backend="aot_eager")(bad, [0], y, 0)
        torch._dynamo.reset()
        with pytest.raises(Exception, match=words):
            torch.compile(rsg, backend="aot_eager", fullgraph=True)(bad, [0], y, 0)


def test_compiled_epoch_as_a_tensor():
    """An integer tensor epoch picks the phase under compile as in eager mode; a floating-point one is
    our TypeError with fullgraph=True, quoted by dynamo (it was dynamo's "Could not guard on
    data-dependent expression"); without fullgraph and in eager mode it works. Numpy epochs likewise."""
    torch.manual_seed(0)
    rsg = RSG(3, [4, 3, 3], 5, 6, [0, 1], 1.0, THRESH)
    x, y = torch.randn(6, 4, 3, 3), torch.tensor([0, 0, 1, 2, 3, 4])
    compiled = torch.compile(rsg, backend="aot_eager", fullgraph=True)
    words = "epoch as a floating-point tensor cannot pick RSG's phase under torch.compile"
    with compile_setting():
        for epoch in (0, THRESH + 1, THRESH, THRESH + 2):
            got, want = compiled(x, [0, 1], y, torch.tensor(epoch)), rsg(x, [0, 1], y, torch.tensor(epoch))
            assert got[0].shape[0] == want[0].shape[0] == (6 if epoch <= THRESH else 9)
            torch.testing.assert_close(got[0], want[0], rtol=1e-4, atol=1e-4)
        with pytest.raises(Exception, match=words):
            compiled(x, [0, 1], y, torch.tensor(THRESH + 1.5))
        # a numpy scalar, which eager mode reads as a number, is traced as an array: our message too
        # (it was "epoch must be a number, got ndarray", or dynamo's guard error at a later epoch)
        with pytest.raises(Exception, match="epoch as a numpy scalar or array cannot pick RSG's phase"):
            compiled(x, [0, 1], y, np.int64(THRESH + 1))
        torch._dynamo.reset()
        # without fullgraph dynamo runs such a frame eagerly, which takes it
        got = torch.compile(rsg, backend="aot_eager")(x, [0, 1], y, torch.tensor(THRESH + 1.5))
    torch.testing.assert_close(got[0], rsg(x, [0, 1], y, torch.tensor(THRESH + 1.5))[0])
    assert got[0].shape[0] == 9
    for epoch in (np.int64(THRESH + 1), np.array(THRESH + 1), np.float32(THRESH + 0.5)):   # eager mode
        assert rsg(x, [0, 1], y, epoch)[0].shape[0] == 9


@pytest.mark.parametrize("heads", [torch.tensor([0, 1]), np.array([0, 1])], ids=["tensor", "ndarray"])
def test_compiled_head_classes_as_a_tensor_are_a_clear_error(heads):
    """Found by fuzzing: a head-class tensor or array (fine in eager mode) failed under torch.compile
    on a data-dependent guard or an untraceable attribute; now our TypeError asks for a list of ints."""
    rsg = RSG(3, [4, 3, 3], 4, 6, [0], 1.0, THRESH)
    x, y = torch.randn(6, 4, 3, 3), torch.tensor([0, 1, 0, 2, 3, 0])
    with compile_setting():
        with pytest.raises(Exception, match="under torch.compile pass head_class_lists as a list"):
            torch.compile(rsg, backend="aot_eager", fullgraph=True)(x, heads, y, THRESH + 1)
