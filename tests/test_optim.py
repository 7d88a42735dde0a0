"""rsg_fast.optim: under fp16 loss scaling the fused SGD step reads GradScaler's overflow flag on the
device (no ``.item()``), steps exactly as the plain SGD the published scripts use, overflowed steps
included, and a checkpoint of either kind continues with the kernel the run asks for.

Tolerance, fused against plain SGD: float32 on the CPU, each parameter within 1e-5 of its largest
magnitude after 8 steps (the fused kernel contracts multiply-adds that the plain step rounds one by
one: 3e-7 seen). The same kernel on both sides (a resumed optimiser): ``torch.equal``.
"""
import copy

import pytest
import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode

from rsg_fast import optim


class ScalarReads(TorchDispatchMode):
    """Counts the tensor-to-Python-number reads (``.item()``, ``bool(t)``): on CUDA each one waits for the GPU."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func is torch.ops.aten._local_scalar_dense.default
        return func(*args, **(kwargs or {}))


def _net(seed=0, channels_last=True):
    """Conv + BN + linear, in channels_last (the trainer's --channels-last) or not, and a branch that
    may get gradients only from a later step on, as RSG's transformation T after the threshold."""
    torch.manual_seed(seed)
    net = nn.ModuleDict({"conv": nn.Conv2d(3, 5, 3), "bn": nn.BatchNorm2d(5), "fc": nn.Linear(5, 4),
                         "late": nn.Linear(5, 4)})
    return net.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def _loss(net, x, step, overflow, late_from=2):
    h = net["bn"](net["conv"](x)).mean(dim=(2, 3))
    out = net["fc"](h) + (net["late"](h) if step >= late_from else 0.0)
    return out.square().mean() * (float("inf") if overflow else 1.0)


def _train(loss_scaling, overflow_at, steps=8, state=None, late_from=2, channels_last=True, check_loaded=None):
    net = _net(channels_last=channels_last)
    opt = optim.sgd(net.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4, loss_scaling=loss_scaling)
    if state is not None:   # a copy, as torch.load gives: a loaded state_dict shares the saved optimiser's tensors
        optim.load_state(opt, copy.deepcopy(state))
        if check_loaded is not None:
            check_loaded(net, opt)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    g = torch.Generator().manual_seed(1)
    for step in range(steps):
        x = torch.randn(4, 3, 6, 7, generator=g).to(memory_format=torch.channels_last)
        opt.zero_grad(set_to_none=True)
        scaler.scale(_loss(net, x, step, step in overflow_at, late_from)).backward()
        scaler.step(opt)
        scaler.update()
    return net, opt, scaler


def _close(plain, fused):
    for (name, a), b in zip(plain.named_parameters(), fused.parameters()):
        assert (a - b).abs().max() <= 1e-5 * a.abs().max(), name


@pytest.mark.parametrize("late_from", [0, 2], ids=["all-from-the-start", "one-later"])
@pytest.mark.parametrize("overflow_at", [(), (0,), (0, 1, 4), (3,)],
                         ids=["none", "first", "first-two-and-later", "later"])
def test_fused_steps_equal_the_plain_ones_overflows_included(overflow_at, late_from):
    """Without ``_fit_momentum_buffers`` this fails for overflows at the first step whenever the memory
    empty_like gives is not zero (torch 2.9 to 2.14 fill the buffers with it there and skip writing
    them: 1e26 off on 2.14.1) and, whatever overflows, when a parameter's first gradient comes later
    (a TypeError)."""
    plain, plain_opt, plain_scaler = _train(False, overflow_at, late_from=late_from)
    fused, fused_opt, fused_scaler = _train(True, overflow_at, late_from=late_from)
    assert fused_opt.param_groups[0]["fused"] and not plain_opt.param_groups[0]["fused"]
    assert plain_scaler.get_scale() == fused_scaler.get_scale() == 2.0 ** (10 - len(overflow_at))
    _close(plain, fused)
    for a, b in zip(plain.parameters(), fused.parameters()):
        assert b.is_contiguous(memory_format=torch.channels_last) == a.is_contiguous(memory_format=torch.channels_last)


def test_a_fused_step_reads_nothing_on_the_host():
    """The point of the fused kernel: GradScaler's step and update queue everything; the plain SGD's
    step reads the overflow flag (the positive control)."""
    for loss_scaling, reads in ((True, 0), (False, 1)):
        net = _net()
        opt = optim.sgd(net.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4, loss_scaling=loss_scaling)
        scaler = torch.amp.GradScaler("cpu")
        for step in range(3):
            x = torch.randn(2, 3, 5, 5).to(memory_format=torch.channels_last)
            opt.zero_grad(set_to_none=True)
            scaler.scale(_loss(net, x, step, False)).backward()
            with ScalarReads() as counted:
                scaler.step(opt)
                scaler.update()
            assert counted.count == reads, (loss_scaling, step)


@pytest.mark.parametrize("saved_with,continued_with", [(False, True), (True, False), (True, True)])
def test_a_checkpoint_continues_with_the_kernel_the_run_asks_for(saved_with, continued_with):
    """An fp32 run continued with --amp fp16 (and the reverse) steps with this run's kernel, not the
    checkpoint's: the weights equal an optimiser built that way from the start, and a fused
    continuation of a plain checkpoint gets zero buffers for the parameters that had none."""
    _, opt, _ = _train(saved_with, overflow_at=(0,), steps=2)        # "late" has no momentum buffer yet
    state = opt.state_dict()
    assert len(state["state"]) == (8 if saved_with else 6)

    def late_buffers_are_zero(net, cont):
        if continued_with:
            assert all(torch.equal(cont.state[p]["momentum_buffer"], torch.zeros_like(p))
                       for p in net["late"].parameters())

    net, cont, _ = _train(continued_with, overflow_at=(0,), steps=4, state=state, check_loaded=late_buffers_are_zero)
    assert all(group["fused"] == (True if continued_with else None) for group in cont.param_groups)
    same_kernel = _train(continued_with, overflow_at=(0,), steps=2)[1].state_dict()
    reference, _, _ = _train(continued_with, overflow_at=(0,), steps=4, state=same_kernel)
    for a, b in zip(net.parameters(), reference.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("saved_with", [False, True], ids=["plain", "fused"])
@pytest.mark.parametrize("layouts", [(False, True), (True, False)], ids=["to-channels-last", "to-nchw"])
def test_a_checkpoint_continues_in_another_memory_layout(saved_with, layouts):
    """A run resumed with --channels-last switched: the loaded buffers keep the checkpoint's strides,
    which the fused kernel would pair with the parameters' element by element (1e-2 off on the CPU;
    a RuntimeError on CUDA) unless laid out again as the parameters are."""
    saved_layout, continued_layout = layouts
    state = _train(saved_with, overflow_at=(), steps=3, channels_last=saved_layout)[1].state_dict()
    plain, _, _ = _train(False, overflow_at=(), steps=4, state=state, channels_last=continued_layout)
    fused, fused_opt, _ = _train(True, overflow_at=(), steps=4, state=state, channels_last=continued_layout)
    _close(plain, fused)
    assert all(fused_opt.state[p]["momentum_buffer"].stride() == p.stride() for p in fused.parameters())
