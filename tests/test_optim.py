"""rsg_fast.optim: under fp16 loss scaling the fused SGD step reads GradScaler's overflow flag on the
device (no ``.item()``), steps exactly as the plain SGD the published scripts use, overflowed steps
included, and a checkpoint of either kind continues with the kernel the run asks for.

Tolerance, fused against plain SGD: float32 on the CPU, each parameter within 1e-5 of its largest
magnitude after 8 steps (the fused kernel contracts multiply-adds that the plain step rounds one by
one: 3e-7 seen). The same kernel on both sides (a resumed optimiser): ``torch.equal``.
"""
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


def _net(seed=0):
    """Conv + BN + linear in channels_last (the trainer's --channels-last), and a branch that gets
    gradients only from the third step on, as RSG's transformation T after the threshold."""
    torch.manual_seed(seed)
    net = nn.ModuleDict({"conv": nn.Conv2d(3, 5, 3), "bn": nn.BatchNorm2d(5), "fc": nn.Linear(5, 4),
                         "late": nn.Linear(5, 4)})
    return net.to(memory_format=torch.channels_last)


def _loss(net, x, step, overflow):
    h = net["bn"](net["conv"](x)).mean(dim=(2, 3))
    out = net["fc"](h) + (net["late"](h) if step >= 2 else 0.0)
    return out.square().mean() * (float("inf") if overflow else 1.0)


def _train(loss_scaling, overflow_at, steps=8, state=None):
    net = _net()
    opt = optim.sgd(net.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4, loss_scaling=loss_scaling)
    if state is not None:
        optim.load_state(opt, state)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    g = torch.Generator().manual_seed(1)
    for step in range(steps):
        x = torch.randn(4, 3, 6, 7, generator=g).to(memory_format=torch.channels_last)
        opt.zero_grad(set_to_none=True)
        scaler.scale(_loss(net, x, step, step in overflow_at)).backward()
        scaler.step(opt)
        scaler.update()
    return net, opt, scaler


@pytest.mark.parametrize("overflow_at", [(), (0,), (0, 1, 4), (3,)],
                         ids=["none", "first", "first-two-and-later", "later"])
def test_fused_steps_equal_the_plain_ones_overflows_included(overflow_at):
    """Fails without ``_zero_momentum`` for overflows at the first step (torch 2.9 to 2.14 fill the
    buffers with empty_like memory there and skip writing them)."""
    plain, plain_opt, plain_scaler = _train(False, overflow_at)
    fused, fused_opt, fused_scaler = _train(True, overflow_at)
    assert fused_opt.param_groups[0]["fused"] and not plain_opt.param_groups[0]["fused"]
    assert plain_scaler.get_scale() == fused_scaler.get_scale() == 2.0 ** (10 - len(overflow_at))
    for (name, a), b in zip(plain.named_parameters(), fused.parameters()):
        assert (a - b).abs().max() <= 1e-5 * a.abs().max(), name
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
    checkpoint's: the momentum and weights equal an optimiser built that way from the start, and a
    fused continuation of a plain checkpoint gets zero buffers for parameters that had none."""
    _, opt, _ = _train(saved_with, overflow_at=(0,), steps=2)        # "late" has no momentum buffer yet
    state = opt.state_dict()
    assert len(state["state"]) == (8 if saved_with else 6)
    net, cont, _ = _train(continued_with, overflow_at=(0,), steps=4, state=state)
    assert all(group["fused"] == (True if continued_with else None) for group in cont.param_groups)
    assert all(cont.state[p]["momentum_buffer"] is not None for p in net.parameters())
    same_kernel = _train(continued_with, overflow_at=(0,), steps=2)[1].state_dict()
    reference, _, _ = _train(continued_with, overflow_at=(0,), steps=4, state=same_kernel)
    for a, b in zip(net.parameters(), reference.parameters()):
        assert torch.equal(a, b)
