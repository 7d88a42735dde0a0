"""Inputs that once gave silent wrong answers or deep crashes (the fuzzing findings of issue 10):
each is now handled exactly like ReferenceRSG handles it, or rejected up front with a clear error
that changes nothing."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from helpers import BACKENDS, close
from rsg_fast import RSG, ReferenceRSG


def _pair(mv_loss="original", backend="torch", dtype=torch.float32, **kw):
    ref = ReferenceRSG(3, [4, 3, 3], 4, 6, [0], 1.0, 3, mv_loss=mv_loss, **kw).to(dtype)
    with torch.no_grad():
        ref.centers.normal_(0, 0.5)
    fast = RSG(3, [4, 3, 3], 4, 6, [0], 1.0, 3, mv_loss=mv_loss, backend=backend, **kw).to(dtype)
    fast.load_state_dict(ref.state_dict())
    return ref, fast


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.uint16,
                                   torch.uint32, torch.uint64])
def test_every_integer_label_dtype_gives_the_int64_result(backend, dtype):
    """A uint8 index would act as a boolean mask (N == num_classes makes it look valid); int8/int16
    used to fail deep inside an index op. Labels of any integer dtype give the int64 results, and the
    returned labels keep the caller's dtype."""
    ref, fast = _pair(backend=backend)
    x = torch.randn(4, 4, 3, 3)                      # N == num_classes == 4
    y = torch.tensor([0, 1, 0, 3])
    for epoch in (0, 9):
        want = fast(x, [0], y, epoch)
        got = fast(x, [0], y.to(dtype), epoch)
        expect = ref(x, [0], y.to(dtype), epoch)
        assert got[3].dtype == dtype and torch.equal(got[3].long(), want[3])
        for a, b, c in zip(got[:3], want[:3], expect[:3]):
            torch.testing.assert_close(a, b)
            close(a, c, rtol=2e-5)


@pytest.mark.parametrize("cls", [RSG, ReferenceRSG])
def test_maps_of_another_dtype_than_the_module_are_rejected_at_the_first_call(cls):
    m = cls(3, [4, 3, 3], 4, 6, [0], 1.0, 3)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    y = torch.tensor([0, 1, 0, 3])
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        with pytest.raises(TypeError, match=f"feature_maps is {dtype} but the RSG parameters are torch.float32"):
            m(torch.randn(4, 4, 3, 3, dtype=dtype), [0], y, 0)      # before the threshold already
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in before.items())
    with torch.autocast("cpu", dtype=torch.bfloat16):                # under autocast they are expected
        m(torch.randn(4, 4, 3, 3, dtype=torch.bfloat16), [0], y, 9)


FLOATS = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


@pytest.mark.parametrize("autocast_dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("module_dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_under_autocast_maps_of_a_dtype_that_cannot_run_are_rejected_at_the_first_call(module_dtype, autocast_dtype):
    """Under autocast the maps may be float32 or autocast's dtype (float64 parameters: only float64,
    which autocast leaves alone). Any other dtype once passed the first epochs and crashed in T's
    convolution at the first generation epoch (or deep in autocast), after caching its head table."""
    y = torch.tensor([0, 0, 1, 2, 3, 0, 1, 2])
    for maps_dtype in FLOATS:
        runs = maps_dtype in ((torch.float64,) if module_dtype == torch.float64 else (torch.float32, autocast_dtype))
        for cls in (RSG, ReferenceRSG):
            m = cls(3, [4, 3, 3], 4, 6, [0, 1], 1.0, 3).to(module_dtype)
            x = torch.randn(8, 4, 3, 3).to(maps_dtype).requires_grad_(True)
            with torch.autocast("cpu", dtype=autocast_dtype):
                if not runs:
                    with pytest.raises(TypeError, match=f"feature_maps is {maps_dtype}; under torch.autocast"):
                        m(x, [1], y, 0)        # at the first call, before the threshold
                    assert not getattr(m, "_head_tables", None)
                    continue
                out = m(x, [1], y, 9)          # the generation phase runs forward and backward
            (out[0].float().sum() + out[1] + out[2]).backward()
            assert out[0].shape[0] > 8 and torch.isfinite(x.grad).all(), (cls.__name__, maps_dtype)


@pytest.mark.parametrize("autocast_dtype", [torch.bfloat16, torch.float16])
def test_float64_module_under_autocast_computes_in_float64(autocast_dtype):
    """Autocast leaves float64 alone, so a float64 module under it gives what it gives outside it (and
    what ReferenceRSG gives), float64 losses included. The contrastive module's 1x1 convolution, done
    as a matrix product, once ran in autocast's dtype: loss_cesc off by 2e-3 before the threshold,
    loss_mv off and returned in float32 after it."""
    ref, fast = _pair(dtype=torch.float64)
    x = torch.randn(8, 4, 3, 3, dtype=torch.float64)
    y = torch.tensor([0, 0, 1, 2, 3, 0, 1, 2])
    for epoch in (0, 9):
        plain = fast(x, [0], y, epoch)
        with torch.autocast("cpu", dtype=autocast_dtype):
            got = fast(x, [0], y, epoch)
            expect = ref(x, [0], y, epoch)
        assert got[0].shape[0] == expect[0].shape[0] and torch.equal(got[3], expect[3])
        for a, b, c in zip(got[:3], plain[:3], expect[:3]):
            assert a.dtype == torch.float64, epoch
            torch.testing.assert_close(a, b, rtol=1e-12, atol=0)
            close(a, c, rtol=1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fp16_autocast_losses_past_fp16s_range_stay_exact(backend):
    """rsg-fast train --amp fp16: sums far past fp16's largest value (65504), as at any real map size,
    are accumulated and returned in fp32 from fp16 maps, on both backends: CESC's distances (a sample's
    sum of |x - c|^2 here about 2e5) and the MV terms' squared norms (C = 256 values of about 500 per
    row or location). Finite, and within fp16 input rounding of a float64 ReferenceRSG given the same
    fp16 maps, parameter gradients too, in both MV-loss groupings."""
    for mv_loss in ("original", "paper"):
        torch.manual_seed(0)
        ref = ReferenceRSG(3, [256, 3, 5], 4, 6, [0, 1], 1.0, 3, mv_loss=mv_loss).double()
        fast = RSG(3, [256, 3, 5], 4, 6, [0, 1], 1.0, 3, mv_loss=mv_loss, backend=backend)
        fast.load_state_dict(ref.state_dict())
        x = (torch.randn(8, 256, 3, 5) * 16).half()
        y = torch.tensor([0, 0, 1, 0, 2, 3, 3, 2])
        for epoch in (0, 9):
            with torch.autocast("cpu", dtype=torch.float16):
                got = fast(x, [0, 1], y, epoch)
            expect = ref(x.double(), [0, 1], y, epoch)
            assert got[1].dtype == got[2].dtype == torch.float32 and got[1] > 2 * 65504, (epoch, got[1])
            for a, b in zip(got[1:3], expect[1:3]):
                close(a, b, rtol=2e-3)
            for model, out in ((fast, got), (ref, expect)):
                model.zero_grad()
                (out[1] + out[2]).backward()
            for (name, p), q in zip(fast.named_parameters(), ref.parameters()):
                if q.grad is not None:
                    assert p.grad is not None and torch.isfinite(p.grad).all(), (mv_loss, epoch, name)
                    close(p.grad, q.grad, rtol=2e-2)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("offset", [1e3, 1e4])
def test_large_common_offset_keeps_the_cesc_loss_and_centre_gradients_exact(backend, offset):
    """fp32 maps at offset +- 0.01 with centres on the data: loss_cesc and the centre gradients
    within 1e-5 of an fp64 ReferenceRSG (the mean-then-subtract form lost 2e-4 at 1e3, 1.3e-3 at 1e4)."""
    torch.manual_seed(1)
    fast = RSG(3, [4, 3, 3], 4, 6, [0], 1.0, 3, backend=backend)
    with torch.no_grad():
        fast.centers.copy_(offset + 0.01 * torch.randn_like(fast.centers))
    ref = ReferenceRSG(3, [4, 3, 3], 4, 6, [0], 1.0, 3).double()
    ref.load_state_dict(fast.state_dict())             # the same fp32 values, in fp64
    x = (offset + 0.01 * torch.randn(6, 4, 3, 3, dtype=torch.float64)).float()
    y = torch.tensor([0, 1, 0, 2, 3, 1])
    cesc_ref = ref(x.double(), [0], y, 9)[1]
    cesc = fast(x, [0], y, 9)[1]
    cesc_ref.backward()
    cesc.backward()
    torch.testing.assert_close(cesc.double(), cesc_ref.detach(), rtol=1e-5, atol=0)
    close(fast.centers.grad, ref.centers.grad, rtol=1e-5)


@pytest.mark.parametrize("cls", [RSG, ReferenceRSG])
def test_nan_and_infinite_epochs_are_errors(cls):
    m = cls(3, [4, 3, 3], 4, 6, [0], 1.0, 3)
    x, y = torch.randn(4, 4, 3, 3), torch.tensor([0, 1, 0, 3])
    for epoch in (math.nan, math.inf, -math.inf, np.float32("nan"), np.float64("inf"), np.float64("-inf")):
        with pytest.raises(ValueError, match="epoch must be a finite number"):
            m(x, [0], y, epoch)
    with pytest.raises(ValueError, match="epoch_thresh must be a number.*got nan"):
        cls(3, [4, 3, 3], 4, 6, [0], 1.0, math.nan)
    never = cls(3, [4, 3, 3], 4, 6, [0], 1.0, math.inf)          # inf: never generate, by choice
    assert never(x, [0], y, 10**6)[0].shape[0] == 4


@pytest.mark.parametrize("cls", [RSG, ReferenceRSG])
@pytest.mark.parametrize("epoch", [0, 9])
def test_check_finite_is_honoured_without_validate(cls, epoch):
    m = cls(3, [4, 3, 3], 4, 6, [0], 1.0, 3, validate=False, check_finite=True)
    x = torch.randn(4, 4, 3, 3)
    x[1, 2, 0, 0] = math.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        m(x, [0], torch.tensor([0, 1, 0, 3]), epoch)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mv_loss", ["original", "paper"])
def test_near_tied_centre_logits_pick_the_reference_centre(backend, mv_loss):
    """Two centre logits one float32 ulp apart give equal softmax weights: RSG picks the first, as
    ReferenceRSG and the published code (argmax of the softmax) do, so loss_mv matches."""
    ref, fast = _pair(mv_loss=mv_loss, backend=backend)
    with torch.no_grad():
        for m in (ref, fast):
            m.linear.zero_()
            b = torch.tensor(0.1)
            m.bias.copy_(torch.stack([b, torch.nextafter(b, torch.tensor(1.0)), b - 1]).expand(4, 3))
            m.centers.copy_(torch.arange(3.0).view(1, 3, 1).expand(4, 3, 4) * 3)
    x, y = torch.randn(6, 4, 3, 3), torch.tensor([0, 1, 0, 2, 3, 0])
    want, got = ref(x, [0], y, 9), fast(x, [0], y, 9)
    close(got[2], want[2], rtol=2e-5)
    close(got[0], want[0], rtol=2e-5)


def test_a_rejected_call_leaves_the_head_table_cache_alone():
    m = RSG(3, [4, 3, 3], 4, 6, [0], 1.0, 3)
    with pytest.raises(ValueError, match="label 7"):
        m(torch.randn(4, 4, 3, 3), [0, 2], torch.tensor([0, 1, 7, 3]), 0)
    assert m._head_tables == {}
    m(torch.randn(4, 4, 3, 3), [0, 2], torch.tensor([0, 1, 2, 3]), 0)
    assert len(m._head_tables) == 1


def test_the_head_table_cache_stays_small():
    """One table per head list and device, kept between calls; a caller that passes a new head list
    each call (e.g. recomputed from running counts) must not grow the cache without bound."""
    m = RSG(3, [4, 3, 3], 40, 6, [0], 1.0, 3)
    x, y = torch.randn(2, 4, 3, 3), torch.tensor([0, 1])
    for c in range(40):
        m(x, [c], y, 0)
        assert 1 <= len(m._head_tables) <= 16


def test_head_lists_in_any_form_and_order_and_a_module_built_on_meta():
    """The head-class table is built on the device from the classes' runs (no host tensor to copy;
    compiled code: tests/test_compile_for_cuda.py) and is no buffer, so a module built on the meta
    device, given memory with to_empty and loaded from a state_dict, generates as the original does."""
    from rsg_fast.module import _runs

    assert _runs([]) == [] and _runs([0, 1, 2, 5, 7, 8]) == [(0, 3), (5, 6), (7, 9)]
    fast = RSG(3, [4, 3, 3], 6, 6, [3, 0, 5, 4], 1.0, 2)
    ref = ReferenceRSG(3, [4, 3, 3], 6, 6, [3, 0, 5, 4], 1.0, 2)
    ref.load_state_dict(fast.state_dict())
    assert list(dict(fast.named_buffers())) == []
    x, y = torch.randn(8, 4, 3, 3), torch.tensor([0, 1, 3, 2, 0, 4, 3, 1])
    for heads in ([0, 3, 4, 5], (5, 4, 3, 0), np.array([4, 0, 5, 3]), torch.tensor([3, 5, 0, 4]), None, [1]):
        close(fast(x, heads, y, 5)[2], ref(x, heads, y, 5)[2])
    assert fast._head_tables[((0, 3, 4, 5), torch.device("cpu"))].tolist() == [True, False, False, True, True, True]
    meta = RSG(3, [4, 3, 3], 6, 6, [3, 0, 5, 4], 1.0, 2).to("meta").to_empty(device="cpu")
    meta.load_state_dict(fast.state_dict())
    got, want = meta(x, None, y, 5), fast(x, None, y, 5)
    assert got[0].shape == want[0].shape and got[0].shape[0] > 8
    close(got[2], want[2])


@pytest.mark.parametrize("backend", BACKENDS)
def test_channels_last_maps_and_deterministic_mode(backend):
    """channels_last feature maps give the NCHW results, the batch RSG returns stays channels_last
    (as ReferenceRSG's does; downstream convolutions of a channels_last network expect it), and under
    torch.use_deterministic_algorithms(True) two runs give the same bits."""
    ref, fast = _pair(backend=backend)
    x = torch.randn(8, 4, 3, 3)
    y = torch.tensor([0, 1, 0, 2, 3, 0, 1, 0])
    runs = []
    torch.use_deterministic_algorithms(True)
    try:
        for maps in (x, x.contiguous(memory_format=torch.channels_last), x):
            for epoch in (0, 9):
                fast.zero_grad(set_to_none=True)
                leaf = maps.clone().requires_grad_(True)
                out, cesc, mv, _ = fast(leaf, [0], y, epoch)
                assert out.shape[0] > 8 or epoch == 0
                assert out.is_contiguous(memory_format=torch.channels_last) == (maps.stride(1) == 1)
                (out.square().mean() + cesc + mv).backward()
                runs.append([out.detach(), cesc.detach(), mv.detach(), leaf.grad]
                            + [p.grad.clone() for p in fast.parameters() if p.grad is not None])
    finally:
        torch.use_deterministic_algorithms(False)
    for a, b in zip(runs[0] + runs[1], runs[4] + runs[5]):   # the same input twice: the same bits
        assert torch.equal(a, b)
    for a, b in zip(runs[0] + runs[1], runs[2] + runs[3]):   # channels_last: the same values
        close(a, b, rtol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_strided_labels_are_the_labels(backend):
    """A column of a label matrix (stride 2): the kernels read labels as a flat array, so RSG must
    hand them a contiguous copy; the label check must see the real values too."""
    _, fast = _pair(backend=backend)
    x = torch.randn(6, 4, 3, 3)
    y = torch.tensor([0, 1, 0, 2, 3, 0])
    both = torch.stack([y, torch.tensor([3, 3, 1, 0, 0, 2])], dim=1)         # (6, 2): both[:, 0] == y
    for epoch in (0, 9):
        want, got = fast(x, [0], y, epoch), fast(x, [0], both[:, 0], epoch)
        for a, b in zip(got, want):
            assert torch.equal(a, b)
    bad = torch.stack([torch.tensor([0, 1, 0, 2, 3, 7]), y], dim=1)
    with pytest.raises(ValueError, match="label 7"):
        fast(x, [0], bad[:, 0], 9)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("backend", BACKENDS)
def test_half_precision_module_outside_autocast(dtype, backend):
    """RSG converted to bf16/fp16 (with bf16/fp16 maps) runs in both phases and stays within a few
    roundings of an fp64 ReferenceRSG holding the same values."""
    fast = RSG(3, [4, 3, 3], 4, 6, [0], 1.0, 3, backend=backend).to(dtype)
    ref = ReferenceRSG(3, [4, 3, 3], 4, 6, [0], 1.0, 3).double()
    ref.load_state_dict(fast.state_dict())
    x = torch.randn(6, 4, 3, 3).to(dtype)
    y = torch.tensor([0, 1, 0, 2, 3, 0])
    for epoch in (0, 9):
        got, want = fast(x, [0], y, epoch), ref(x.double(), [0], y, epoch)
        assert got[0].dtype == dtype and torch.equal(got[3], want[3])
        for a, b in zip(got[:3], want[:3]):
            close(a, b, rtol=5e-2)


@pytest.mark.parametrize("cls", [RSG, ReferenceRSG])
def test_head_class_lists_attribute_set_after_construction_is_checked_when_forward_falls_back_to_it(cls):
    """forward(..., head_class_lists=None, ...) uses the module's ``head_class_lists``, a public attribute
    a training script may set once it knows the class counts. It was used unchecked: a class id past
    num_classes was silently ignored (no heads, no new samples) and a tensor or repeats went through."""
    m = cls(3, [4, 3, 3], 4, 6, [0], 1.0, 3)
    x, y = torch.randn(6, 4, 3, 3), torch.tensor([0, 1, 0, 2, 3, 1])
    before = {k: v.clone() for k, v in m.state_dict().items()}
    for heads, error, match in (([4], ValueError, r"head_class_lists holds 4, outside \[0, num_classes=4\)"),
                                ([0, 0], ValueError, "head_class_lists repeats class ids"),
                                ({0, 1}, TypeError, "head_class_lists must be a sequence")):
        m.head_class_lists = heads
        with pytest.raises(error, match=match):
            m(x, None, y, 9)
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in before.items())
    assert not getattr(m, "_head_tables", None)
    m.head_class_lists = torch.tensor([1, 0])       # what forward's argument takes, the attribute takes
    got, want = m(x, None, y, 9), m(x, [0, 1], y, 9)
    assert torch.equal(got[3], want[3]) and got[0].shape == want[0].shape


@pytest.mark.parametrize("cls", [RSG, ReferenceRSG])
def test_a_head_list_is_checked_once_and_again_when_it_changes(cls, monkeypatch):
    """Eager mode checks each distinct list of plain ints once (a long list cost about 1 ms a call);
    a list changed in place is a new list, checked again; other forms are checked every call."""
    import rsg_fast.parameters as parameters

    checks = []
    check = parameters.check_head_classes
    monkeypatch.setattr(parameters, "check_head_classes", lambda *a, **k: checks.append(a[0]) or check(*a, **k))
    m = cls(3, [4, 3, 3], 6, 6, [0], 1.0, 3)
    x, y = torch.randn(6, 4, 3, 3), torch.tensor([0, 1, 0, 2, 3, 5])
    heads = [0, 1]
    first = m(x, heads, y, 9)
    again = m(x, [0, 1], y, 9)
    assert len(checks) == 1 and torch.equal(first[3], again[3])
    heads.append(6)                                   # changed in place: checked again, and refused
    with pytest.raises(ValueError, match=r"head_class_lists holds 6, outside \[0, num_classes=6\)"):
        m(x, heads, y, 9)
    heads[-1] = 2
    m(x, heads, y, 9)
    m(x, (torch.tensor(0), 1), y, 9)                  # not plain ints: checked every call
    m(x, (torch.tensor(0), 1), y, 9)
    assert len(checks) == 5
