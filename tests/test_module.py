"""RSG against ReferenceRSG (and a transcription of the published code): outputs and every gradient.

Tolerances: fp64 runs compare at rtol=1e-9 (same math, different association); fp32 runs at
rtol=2e-4 with an absolute floor scaled by the quantity's magnitude (the CESC loss is a raw sum over
C*H*W elements, thousands).
"""
import contextlib
import copy
import random

import pytest
import torch
import torch._dynamo

from rsg_fast import RSG, ReferenceRSG
from helpers import cuda_syncs, leaf, requires_cuda
from published_rsg import PublishedRSG

PUBLISHED_KEYS = {
    "linear": lambda C, K, D, L: (L, C, K),
    "bias": lambda C, K, D, L: (L, K),
    "centers": lambda C, K, D, L: (L, K, C),
    "vec_transformation_module.0.weight": lambda C, K, D, L: (C, C, 3, 3),
    "vec_transformation_module.0.bias": lambda C, K, D, L: (C,),
    "contrastive_module.0.weight": lambda C, K, D, L: (D, 2 * C, 1, 1),
    "contrastive_module.0.bias": lambda C, K, D, L: (D,),
    "contrastive_module.2.weight": lambda C, K, D, L: (D, D, 3, 3),
    "contrastive_module.2.bias": lambda C, K, D, L: (D,),
    "contrastive_fc.weight": lambda C, K, D, L: (2, D),
    "contrastive_fc.bias": lambda C, K, D, L: (2,),
}

TOL = {torch.float64: dict(rtol=1e-9, atol=1e-9), torch.float32: dict(rtol=2e-4, atol=2e-4)}


def make_pair(C, H, W, K, D, L, heads, beta=1.0, thresh=3, mv_loss="paper", backend="torch",
              dtype=torch.float32, device="cpu", cls=ReferenceRSG):
    """A reference (or published transcription) and an RSG holding identical, non-trivial parameters."""
    ref = cls(K, [C, H, W], L, D, heads, beta, thresh, mv_loss=mv_loss)
    with torch.no_grad():  # move centres and biases off their constant initial values
        ref.centers.normal_(0, 0.5)
        ref.bias.normal_(1, 0.3)
        ref.linear.mul_(0.3)
    ref = ref.to(device=device, dtype=dtype)
    fast = RSG(K, [C, H, W], L, D, heads, beta, thresh, mv_loss=mv_loss, backend=backend).to(device=device, dtype=dtype)
    fast.load_state_dict(ref.state_dict(), strict=True)
    return ref, fast


def run(module, x, heads, y, epoch, seed=1, forward_context=None, **forward_kwargs):
    """Forward (inside ``forward_context`` if given, e.g. autocast; ``forward_kwargs`` such as
    ``host_target`` passed on), then backward of a random linear function of all four outputs,
    outside it, as training loops do."""
    x = leaf(x)   # keeps a sliced layout
    module.zero_grad(set_to_none=True)
    with forward_context if forward_context is not None else contextlib.nullcontext():
        out, cesc, mv, y_out = module(x, heads, y, epoch, **forward_kwargs)
    g = torch.Generator(device="cpu").manual_seed(seed)
    weight = torch.randn(out.shape, generator=g, dtype=out.dtype).to(out.device)
    objective = (out * weight).sum() + 0.37 * cesc + 1.3 * mv
    objective.backward()
    grads = {n: (p.grad.clone() if p.grad is not None else None) for n, p in module.named_parameters()}
    return dict(out=out.detach(), cesc=cesc.detach(), mv=mv.detach(), y=y_out, x_grad=x.grad.clone(),
                grads=grads, weight=weight)


def assert_same(a, b, dtype, what=""):
    tol = TOL[dtype]
    assert torch.equal(a["y"], b["y"]), f"{what}: targets differ"
    assert a["out"].shape == b["out"].shape, f"{what}: output shapes differ"
    for key in ("out", "cesc", "mv", "x_grad"):
        scale = max(1.0, b[key].abs().max().item()) if b[key].numel() else 1.0
        torch.testing.assert_close(a[key], b[key], rtol=tol["rtol"], atol=tol["atol"] * scale,
                                   msg=lambda m: f"{what} {key}: {m}")
    for name in b["grads"]:
        ga, gb = a["grads"][name], b["grads"][name]
        if gb is None or ga is None:
            assert (ga is None or not ga.abs().any()) and (gb is None or not gb.abs().any()), f"{what} grad {name}"
            continue
        scale = max(1.0, gb.abs().max().item())
        torch.testing.assert_close(ga, gb, rtol=tol["rtol"], atol=tol["atol"] * scale,
                                   msg=lambda m: f"{what} grad of {name}: {m}")


def random_case(rng):
    C = rng.choice([3, 5, 6, 7, 12])
    H = rng.choice([1, 3, 5, 6])
    W = rng.choice([1, 2, 4, 7])
    K = rng.choice([1, 2, 3, 5])
    D = rng.choice([4, 6, 9])
    L = rng.choice([3, 4, 7])
    N = rng.choice([5, 8, 9, 13])
    n_heads = rng.choice([1, 2])
    heads = sorted(rng.sample(range(L), n_heads))
    return C, H, W, K, D, L, N, heads


def labels_with_heads_and_tails(N, L, heads, gen):
    y = torch.randint(0, L, (N,), generator=gen)
    tails = [c for c in range(L) if c not in heads]
    y[0], y[-1] = heads[0], tails[0]
    return y


@pytest.mark.parametrize("mv_loss", ["paper", "original"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", range(4))
def test_rsg_matches_reference_random_shapes(case, dtype, mv_loss):
    rng = random.Random(100 + case)
    C, H, W, K, D, L, N, heads = random_case(rng)
    gen = torch.Generator().manual_seed(case)
    x = torch.randn(N, C, H, W, generator=gen, dtype=dtype) * 2 + 0.5
    y = labels_with_heads_and_tails(N, L, heads, gen)
    ref, fast = make_pair(C, H, W, K, D, L, heads, thresh=3, mv_loss=mv_loss, dtype=dtype)
    for epoch in (0, 3, 4, 9):   # before, at and after the threshold
        a, b = run(fast, x, heads, y, epoch), run(ref, x, heads, y, epoch)
        assert_same(a, b, dtype, f"case {case} epoch {epoch}")
        if epoch > 3:
            assert a["out"].shape[0] > N, "the generation phase must add samples"


@pytest.mark.parametrize("mv_loss", ["paper", "original"])
@pytest.mark.parametrize("epoch", [0, 7])
def test_rsg_on_triton_backend_matches_reference(mv_loss, epoch):
    """The whole module on the Triton kernels (the interpreter on a CPU): small shapes."""
    C, H, W, K, D, L, N, heads = 5, 3, 4, 3, 6, 4, 7, [0]
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(N, C, H, W, generator=gen)
    y = labels_with_heads_and_tails(N, L, heads, gen)
    ref, fast = make_pair(C, H, W, K, D, L, heads, thresh=3, mv_loss=mv_loss, backend="triton")
    _, torch_path = make_pair(C, H, W, K, D, L, heads, thresh=3, mv_loss=mv_loss, backend="torch")
    torch_path.load_state_dict(ref.state_dict())
    a, b, c = run(fast, x, heads, y, epoch), run(ref, x, heads, y, epoch), run(torch_path, x, heads, y, epoch)
    assert_same(a, b, torch.float32, "triton vs reference")
    assert_same(a, c, torch.float32, "triton vs torch")


@pytest.mark.parametrize("epoch", [0, 9])
@pytest.mark.parametrize("beta", [1.0, 0.5, 0.01])
def test_original_mode_matches_published_transcription(epoch, beta):
    """mv_loss="original" reproduces the published computation (even batch, square maps)."""
    C, H, W, K, D, L, N, heads = 6, 5, 5, 3, 8, 5, 12, [0, 1]
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(N, C, H, W, generator=gen)
    y = labels_with_heads_and_tails(N, L, heads, gen)
    pub, fast = make_pair(C, H, W, K, D, L, heads, beta=beta, thresh=3, mv_loss="original", cls=PublishedRSG)
    a, b = run(fast, x, heads, y, epoch), run(pub, x, heads, y, epoch)
    assert_same(a, b, torch.float32, f"published beta={beta}")


def expected_new_labels(y, heads, beta):
    """The segment rule, written out independently of the module's vectorised gather."""
    head_ids = [i for i, c in enumerate(y.tolist()) if c in heads]
    tail_ids = [i for i, c in enumerate(y.tolist()) if c not in heads]
    nh, nt = len(head_ids), len(tail_ids)
    if nh == 0 or nt == 0:
        return []
    labels = []
    if nh >= nt:
        for _ in range(max(1, int(nh * beta / nt))):
            labels += [y[i].item() for i in tail_ids]
    else:
        seg = max(1, int(nt * beta / nh))
        for j in range(seg):
            labels += [y[i].item() for i in tail_ids[j * nh:(j + 1) * nh]]
    return labels


@pytest.mark.parametrize("beta", [1.0, 0.6, 0.3, 0.01])
@pytest.mark.parametrize("composition", ["many_heads", "many_tails", "balanced"])
def test_number_and_labels_of_new_samples_follow_segment_rule(beta, composition):
    L, heads = 6, [0, 1]
    y = {"many_heads": [0, 1, 0, 0, 1, 0, 2, 0, 3, 1, 0],
         "many_tails": [2, 0, 3, 4, 5, 2, 1, 3, 4, 5, 2, 3, 4],
         "balanced": [0, 2, 1, 3, 0, 4, 1, 5]}[composition]
    y = torch.tensor(y)
    x = torch.randn(len(y), 4, 3, 3)
    ref, fast = make_pair(4, 3, 3, 2, 5, L, heads, beta=beta, thresh=0)
    expected = expected_new_labels(y, heads, beta)
    for module in (fast, ref):
        out, _, mv, y_out = module(x, heads, y, 1)
        assert out.shape[0] == len(y) + len(expected)
        assert y_out[len(y):].tolist() == expected
        assert torch.equal(y_out[:len(y)], y)
        assert torch.isfinite(mv)


@pytest.mark.parametrize("mv_loss", ["paper", "original"])
@pytest.mark.parametrize("labels", [
    [2, 3, 2, 4, 3],        # no head sample
    [0, 1, 0, 0],           # no tail sample
    [0],                    # one sample (head)
    [3],                    # one sample (tail)
    [2, 2, 2, 2, 2, 2],     # one class only
    [0, 2, 1, 3, 0, 4, 2],  # odd N
    [],                     # empty batch
])
def test_edge_batches_match_reference(labels, mv_loss):
    C, H, W, K, D, L, heads = 5, 3, 2, 3, 4, 5, [0, 1]
    y = torch.tensor(labels, dtype=torch.long)
    x = torch.randn(len(labels), C, H, W, dtype=torch.float64)
    ref, fast = make_pair(C, H, W, K, D, L, heads, mv_loss=mv_loss, dtype=torch.float64)
    for epoch in (0, 10):
        a, b = run(fast, x, heads, y, epoch), run(ref, x, heads, y, epoch)
        assert_same(a, b, torch.float64, f"labels {labels} epoch {epoch}")
        assert torch.isfinite(a["cesc"]) and torch.isfinite(a["mv"])
        if epoch == 10 and not (set(labels) & set(heads) and set(labels) - set(heads)):
            assert a["out"].shape[0] == len(labels) and a["mv"].item() == 0.0


@pytest.mark.parametrize("epoch", [0, 10])
def test_original_samples_keep_their_gradient_path(epoch):
    """Rows of the output that are the input carry the upstream gradient to the backbone exactly;
    nothing else reaches the backbone (RSG's losses work on detached features)."""
    ref, fast = make_pair(4, 3, 5, 2, 6, 4, [0])
    y = torch.tensor([0, 1, 0, 2, 3, 0])
    x = torch.randn(6, 4, 3, 5)
    r = run(fast, x, [0], y, epoch)
    torch.testing.assert_close(r["x_grad"], r["weight"][:6], rtol=0, atol=0)
    # the transformation T learns through the new samples and the MV loss after the threshold only
    t_grad = r["grads"]["vec_transformation_module.0.weight"]
    assert (t_grad is not None and t_grad.abs().sum() > 0) == (epoch == 10)


def test_contrastive_classifier_frozen_in_generation_phase_without_touching_requires_grad():
    ref, fast = make_pair(4, 3, 3, 2, 6, 4, [0])
    y = torch.tensor([0, 1, 0, 2, 3, 0, 1, 0])
    r = run(fast, torch.randn(8, 4, 3, 3), [0], y, 10)
    for name in ("contrastive_module.0.weight", "contrastive_module.2.weight", "contrastive_fc.weight"):
        assert r["grads"][name] is None
    assert all(p.requires_grad for p in fast.parameters())
    r0 = run(fast, torch.randn(8, 4, 3, 3), [0], y, 0)
    assert r0["grads"]["contrastive_fc.weight"].abs().sum() > 0


def test_state_dict_has_exactly_the_published_keys_and_round_trips():
    C, K, D, L = 7, 4, 9, 6
    for cls in (RSG, ReferenceRSG):
        m = cls(K, [C, 5, 3], L, D, [0, 1], 0.5, 10)
        sd = m.state_dict()
        assert set(sd) == set(PUBLISHED_KEYS)
        for key, shape in PUBLISHED_KEYS.items():
            assert tuple(sd[key].shape) == shape(C, K, D, L), key
        other = cls(K, [C, 5, 3], L, D, [0, 1], 0.5, 10)
        other.load_state_dict(copy.deepcopy(sd), strict=True)
        for key in sd:
            assert torch.equal(other.state_dict()[key], sd[key])


def test_published_initialisation():
    m = RSG(15, [32, 16, 16], 10, 256, [0, 1], 1.0, 100)
    assert torch.equal(m.bias, torch.ones(10, 15)) and torch.equal(m.centers, torch.zeros(10, 15, 32))
    assert abs(m.linear.std().item() - 1.0) < 0.05   # standard normal
    assert abs(m.contrastive_fc.weight.std().item() - 1.0) < 0.1
    # Kaiming normal (fan_in, gain sqrt(2)): std = sqrt(2 / fan_in)
    w = m.contrastive_module[2].weight
    assert abs(w.std().item() / (2 / (256 * 9)) ** 0.5 - 1) < 0.05
    for conv in (m.vec_transformation_module[0], m.contrastive_module[0], m.contrastive_module[2]):
        assert not conv.bias.any()


def test_published_defaults_and_positional_arguments():
    m = RSG()
    assert (m.n_center, m.feature_maps_shape, m.num_classes, m.contrastive_module_dim) == (3, [32, 16, 16], 10, 128)
    assert (m.head_class_lists, m.transfer_strength, m.epoch_thresh, m.mv_loss) == ([], 1.0, 100, "original")


def test_head_class_lists_none_uses_constructor_list():
    ref, fast = make_pair(4, 3, 3, 2, 5, 4, [0, 1])
    y, x = torch.tensor([0, 2, 1, 3, 0]), torch.randn(5, 4, 3, 3)
    a, b = fast(x, None, y, 10), fast(x, [0, 1], y, 10)
    assert torch.equal(a[3], b[3]) and torch.allclose(a[2], b[2])


def test_head_classes_as_tensor_or_numpy_array():
    """The published code only tests `label in head_class_lists`, so arrays worked there too."""
    import numpy as np
    ref, fast = make_pair(4, 3, 3, 2, 5, 4, [0, 1])
    y, x = torch.tensor([0, 2, 1, 3, 0]), torch.randn(5, 4, 3, 3)
    expect = fast(x, [0, 1], y, 10)
    for heads in (np.array([0, 1]), torch.tensor([0, 1]), (0, 1), range(2), range(1, -1, -1)):
        got = fast(x, heads, y, 10)
        assert torch.equal(got[3], expect[3]) and torch.equal(got[2], expect[2])
    with pytest.raises(TypeError, match="head_class_lists"):
        fast(x, np.array([0.0, 1.0]), y, 10)
    with pytest.raises(ValueError, match=r"holds 4, outside \[0, num_classes=4\)"):   # read no further than that
        fast(x, range(10**12), y, 10)


@pytest.mark.parametrize("cls", [RSG, ReferenceRSG])
def test_head_classes_as_list_of_scalar_tensors(cls):
    """The published code builds torch.Tensor(head_class_lists), which takes a list of 0-d tensors
    (list(counts.topk(k).indices)); the drop-in must take it too, in the constructor and in forward.
    A set, which torch.Tensor refuses too, stays a TypeError naming the argument."""
    torch.manual_seed(0)
    m = cls(2, [4, 3, 3], 4, 5, [torch.tensor(0), torch.tensor(1)], 1.0, 3)
    assert m.head_class_lists == [0, 1]
    y, x = torch.tensor([0, 2, 1, 3, 0]), torch.randn(5, 4, 3, 3)
    expect = m(x, [0, 1], y, 10)
    for heads in ([torch.tensor(0), torch.tensor(1)], torch.tensor([1, 0]).unbind()):
        got = m(x, heads, y, 10)
        assert torch.equal(got[3], expect[3]) and torch.equal(got[2], expect[2])
    for bad in ([torch.tensor(0.0)], [torch.tensor([0, 1])], {0, 1}):
        with pytest.raises(TypeError, match="head_class_lists"):
            m(x, bad, y, 10)


def test_non_square_maps_and_fp32_default():
    m = RSG(3, [6, 3, 8], 5, 7, [0], 1.0, 1)
    out, cesc, mv, y = m(torch.randn(4, 6, 3, 8), [0], torch.tensor([0, 1, 2, 0]), 2)
    assert out.shape[1:] == (6, 3, 8) and cesc.dtype == torch.float32 and mv.dtype == torch.float32


def test_autocast_bf16_losses_accumulate_in_fp32():
    ref, fast = make_pair(6, 4, 5, 3, 8, 4, [0])
    y = torch.tensor([0, 1, 0, 2, 3, 0, 1, 2])
    x = torch.randn(8, 6, 4, 5)
    expect = fast(x, [0], y, 10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = fast(x.bfloat16(), [0], y, 10)
    assert got[1].dtype == torch.float32 and got[2].dtype == torch.float32
    torch.testing.assert_close(got[1], expect[1], rtol=2e-2, atol=1e-2)
    torch.testing.assert_close(got[2], expect[2], rtol=5e-2, atol=5e-2)
    assert got[0].dtype == torch.bfloat16 and torch.equal(got[3], expect[3])
    # the zero MV loss too (contrastive phase; a batch without tails), in both modules: the oracle gave
    # a bf16 zero there, while its non-zero losses are fp32
    for module in (fast, ref):
        for epoch, heads in ((0, [0]), (10, [0, 1, 2, 3])):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                losses = module(x.bfloat16(), heads, y, epoch)[1:3]
            assert [t.dtype for t in losses] == [torch.float32] * 2, (type(module).__name__, epoch)
            assert losses[1].item() == 0


@pytest.mark.parametrize("input_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("epoch", [0, 10])
def test_autocast_forward_and_backward_with_fp32_or_bf16_maps(input_dtype, epoch):
    """Under autocast the maps may arrive in fp32 (after a GroupNorm, say) or bf16: both run forward
    and backward, the losses are fp32, and fp32 maps keep fp32 new samples (x_tail + Tv)."""
    ref, fast = make_pair(6, 4, 5, 3, 8, 4, [0])
    y = torch.tensor([0, 1, 0, 2, 3, 0, 1, 2])
    x = torch.randn(8, 6, 4, 5)
    expect = run(ref, x, [0], y, epoch)
    got = run(fast, x.to(input_dtype), [0], y, epoch, forward_context=torch.autocast("cpu", dtype=torch.bfloat16))
    assert got["cesc"].dtype == torch.float32 and got["mv"].dtype == torch.float32
    assert got["out"].dtype == input_dtype and torch.equal(got["y"], expect["y"])
    torch.testing.assert_close(got["cesc"], expect["cesc"], rtol=2e-2, atol=1e-2)
    torch.testing.assert_close(got["mv"], expect["mv"], rtol=5e-2, atol=5e-2)
    new_rows = slice(8, None)
    tol = dict(rtol=0, atol=0.1) if input_dtype == torch.float32 else dict(rtol=2e-2, atol=0.1)
    torch.testing.assert_close(got["out"][new_rows].float(), expect["out"][new_rows], **tol)
    for name, g in expect["grads"].items():
        if g is not None:
            assert got["grads"][name] is not None and torch.isfinite(got["grads"][name]).all(), name


def test_validate_false_gives_same_results():
    ref, fast = make_pair(4, 3, 3, 2, 5, 4, [0])
    quick = RSG(2, [4, 3, 3], 4, 5, [0], 1.0, 3, validate=False, mv_loss="paper")
    quick.load_state_dict(fast.state_dict())
    x, y = torch.randn(6, 4, 3, 3), torch.tensor([0, 1, 0, 2, 3, 0])
    for epoch in (0, 9):
        assert_same(run(quick, x, [0], y, epoch), run(fast, x, [0], y, epoch), torch.float32)


# -- validation ----------------------------------------------------------------------------------
def _snapshot(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


@pytest.mark.parametrize("kwargs, exc, words", [
    (dict(feature_maps=torch.randn(4, 4, 3)), ValueError, "4-D"),
    (dict(feature_maps=torch.randn(4, 5, 3, 3)), ValueError, "feature_maps_shape"),
    (dict(feature_maps=torch.randn(4, 4, 3, 2)), ValueError, "feature_maps_shape"),
    (dict(feature_maps=torch.ones(4, 4, 3, 3, dtype=torch.long)), TypeError, "floating"),
    (dict(feature_maps=[[1.0]]), TypeError, "feature_maps"),
    (dict(target=torch.tensor([0.0, 1.0, 2.0, 0.0])), TypeError, "integer"),
    (dict(target=torch.tensor([[0, 1, 2, 0]])), TypeError, "1-D"),
    (dict(target=torch.tensor([0, 1, 2])), ValueError, "length"),
    (dict(target=torch.tensor([0, 1, 4, 0])), ValueError, "num_classes"),
    (dict(target=torch.tensor([0, -1, 2, 0])), ValueError, "label -1"),
    (dict(heads=[0, 7]), ValueError, "head_class_lists"),
    (dict(heads=[0, 0]), ValueError, "repeats"),
    (dict(heads=[0.5]), TypeError, "head_class_lists"),
    (dict(epoch=-1), ValueError, "epoch"),
    (dict(epoch="3"), TypeError, "epoch"),
])
@pytest.mark.parametrize("cls", [RSG, ReferenceRSG])
def test_bad_forward_arguments_raise_clear_errors_and_change_nothing(cls, kwargs, exc, words):
    m = cls(2, [4, 3, 3], 4, 5, [0], 1.0, 3)
    args = dict(feature_maps=torch.randn(4, 4, 3, 3), heads=[0], target=torch.tensor([0, 1, 2, 0]), epoch=5)
    args.update(kwargs)
    before = _snapshot(m)
    with pytest.raises(exc, match=words):
        m(args["feature_maps"], args["heads"], args["target"], args["epoch"])
    after = _snapshot(m)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in m.parameters())


def test_non_finite_feature_maps_rejected_when_asked():
    x = torch.randn(4, 4, 3, 3)
    x[1, 2, 0, 0] = float("nan")
    y = torch.tensor([0, 1, 2, 0])
    for cls in (RSG, ReferenceRSG):
        with pytest.raises(ValueError, match="NaN or Inf"):
            cls(2, [4, 3, 3], 4, 5, [0], 1.0, 3, check_finite=True)(x, [0], y, 5)
        cls(2, [4, 3, 3], 4, 5, [0], 1.0, 3)(x, [0], y, 5)   # not asked: no check, no error


def test_inputs_on_different_devices_rejected():
    m = RSG(2, [4, 3, 3], 4, 5, [0], 1.0, 3).to(torch.float64)
    x = torch.randn(4, 4, 3, 3, device="meta")
    with pytest.raises(ValueError, match="same device"):
        m(x, [0], torch.tensor([0, 1, 2, 0]), 1)
    with pytest.raises(ValueError, match="parameters are on"):
        m(torch.randn(4, 4, 3, 3, device="meta"), [0], torch.zeros(4, dtype=torch.long, device="meta"), 1)
    # all on the meta device: no values to plan new samples from (it was autocast's "unknown device type")
    for cls in (RSG, ReferenceRSG):
        with torch.device("meta"):
            on_meta = cls(2, [4, 3, 3], 4, 5, [0], 1.0, 3)
            x, y = torch.randn(4, 4, 3, 3), torch.zeros(4, dtype=torch.long)
        with pytest.raises(ValueError, match="RSG's forward cannot run on the meta device"):
            on_meta(x, [0], y, 5)


@pytest.mark.parametrize("kwargs, words", [
    (dict(transfer_strength=0.0), "transfer_strength"),
    (dict(transfer_strength=1.5), "transfer_strength"),
    (dict(n_center=0), "n_center"),
    (dict(feature_maps_shape=[4, 3]), "feature_maps_shape"),
    (dict(num_classes=0), "num_classes"),
    (dict(head_class_lists=[9]), "head_class_lists"),
    (dict(mv_loss="eq6"), "mv_loss"),
    (dict(backend="cuda"), "backend"),
    (dict(backend=["torch"]), "backend"),
])
def test_bad_constructor_arguments(kwargs, words):
    args = dict(n_center=2, feature_maps_shape=[4, 3, 3], num_classes=4, contrastive_module_dim=5,
                head_class_lists=[0], transfer_strength=1.0, epoch_thresh=3)
    args.update(kwargs)
    with pytest.raises(ValueError, match=words):
        RSG(**args)


@pytest.mark.parametrize("cls", [RSG, ReferenceRSG])
def test_constructor_flags_and_sizes_in_other_forms(cls):
    """validate="no" once meant True and None False; a shape given as an array was refused; an epoch
    threshold or epoch too large for a float overflowed in float()."""
    for kwargs in (dict(validate="no"), dict(validate=None), dict(check_finite=1)):
        with pytest.raises(TypeError, match=f"{next(iter(kwargs))} must be True or False"):
            cls(2, [4, 3, 3], 4, 5, [0], 1.0, 3, **kwargs)
    import numpy as np
    for shape in (np.array([4, 3, 3]), torch.tensor([4, 3, 3])):
        assert cls(2, shape, 4, 5, [0], 1.0, 3, validate=np.bool_(True)).feature_maps_shape == [4, 3, 3]
    m = cls(2, [4, 3, 3], 4, 5, [0], 1.0, 10**400)
    x, y = torch.randn(4, 4, 3, 3), torch.tensor([0, 1, 2, 0])
    assert m(x, [0], y, 10**400)[0].shape[0] == 4 and m(x, [0], y, 10**401)[0].shape[0] == 6


def test_backend_none_means_auto_as_in_the_ops():
    auto = RSG(2, [4, 3, 3], 4, 5, [0], 1.0, 3)
    none = RSG(2, [4, 3, 3], 4, 5, [0], 1.0, 3, backend=None)
    none.load_state_dict(auto.state_dict())
    assert none.backend == "auto"
    x, y = torch.randn(4, 4, 3, 3), torch.tensor([0, 1, 2, 0])
    for got, expect in zip(none(x, [0], y, 5), auto(x, [0], y, 5)):
        torch.testing.assert_close(got, expect, rtol=0, atol=0)


# -- CUDA ----------------------------------------------------------------------------------------
@requires_cuda
@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("mv_loss", ["paper", "original"])
def test_cuda_matches_reference(backend, mv_loss):
    C, H, W, K, D, L, N, heads = 32, 16, 16, 15, 64, 10, 128, [0, 1]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(N, C, H, W, generator=gen)
    y = labels_with_heads_and_tails(N, L, heads, gen)
    ref, fast = make_pair(C, H, W, K, D, L, heads, mv_loss=mv_loss, backend=backend, device="cuda",
                          dtype=torch.float64)
    for epoch in (0, 9):
        a = run(fast, x.double().cuda(), heads, y.cuda(), epoch)
        b = run(ref, x.double().cuda(), heads, y.cuda(), epoch)
        assert_same(a, b, torch.float64, f"cuda {backend} epoch {epoch}")


@requires_cuda
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_cuda_forward_and_backward_synchronise_at_most_once(backend):
    """The number of new samples (with the label range) is the one device-to-host copy of a step."""
    fast = RSG(15, [32, 16, 16], 10, 64, [0, 1], 1.0, 3, backend=backend).cuda()
    x = torch.randn(64, 32, 16, 16, device="cuda", requires_grad=True)
    y = torch.randint(0, 10, (64,), device="cuda")
    y[0], y[1] = 0, 5
    for epoch in (0, 9):
        out = fast(x, [0, 1], y, epoch)   # warm-up: caches, kernels
        (out[0].square().mean() + out[1] + out[2]).backward()
        with cuda_syncs() as syncs:
            out = fast(x, [0, 1], y, epoch)
            (out[0].square().mean() + out[1] + out[2]).backward()
        assert len(syncs) <= 1, syncs


@requires_cuda
def test_cuda_forward_and_backward_queue_about_40_device_commands(record_property):
    """Issue 8's launch budget, counted by the device (torch.profiler, as `rsg-fast bench` counts
    it): one forward+backward on Triton at the paper's CIFAR setting queues at most 45 kernels,
    copies and fills in the generation phase. Both phases' counts go to the JUnit XML either way."""
    from torch.profiler import ProfilerActivity, profile
    from rsg_fast.bench.launch_probe import count_device_activity

    fast = RSG(15, [32, 16, 16], 10, 256, [0, 1], 1.0, 3, backend="triton").cuda()
    x = torch.randn(128, 32, 16, 16, device="cuda", requires_grad=True)
    y = labels_with_heads_and_tails(128, 10, [0, 1], torch.Generator().manual_seed(0)).cuda()
    found = {}
    for phase, epoch in (("contrastive", 0), ("generation", 9)):
        outs = [t for t in fast(x, [0, 1], y, epoch)[:3] if t.requires_grad]     # warm-up: caches, kernels
        grads = [torch.ones_like(t) for t in outs]        # made here, so that their fills are not counted
        torch.autograd.backward(outs, grads)

        def step():
            fast.zero_grad(set_to_none=True)
            x.grad = None
            torch.autograd.backward([t for t in fast(x, [0, 1], y, epoch)[:3] if t.requires_grad], grads)
            torch.cuda.synchronize()

        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            step()
        counts = count_device_activity(prof.events())
        record_property(f"device_commands_{phase}", counts)
        found[phase] = counts, [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    counts, names = found["generation"]
    assert 0 < counts["launches"] <= 45, (counts, names)


@requires_cuda
@pytest.mark.parametrize("epoch", [0, 9])
def test_torch_compile_of_a_model_holding_rsg(epoch):
    """On CUDA, with the README's setting: one graph, fullgraph, eager values and gradients."""
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = torch.nn.Conv2d(3, 16, 3, padding=1)
            self.rsg = RSG(4, [16, 8, 8], 5, 32, [0], 1.0, 3)
            self.head = torch.nn.Linear(16, 5)

        def forward(self, images, y, ep):
            maps, cesc, mv, y_out = self.rsg(self.stem(images), [0], y, ep)
            return self.head(maps.mean(dim=(2, 3))), y_out, cesc, mv

    torch.manual_seed(0)
    net = Net().cuda()
    images = torch.randn(16, 3, 8, 8, device="cuda")
    y = torch.tensor([0, 1, 2, 3, 4, 0, 0, 1] * 2, device="cuda")
    results = []
    torch._dynamo.reset()
    with torch._dynamo.config.patch(capture_scalar_outputs=True):
        for model in (torch.compile(net, fullgraph=True), net):
            net.zero_grad(set_to_none=True)
            out = model(images, y, epoch)
            (torch.nn.functional.cross_entropy(out[0], out[1]) + out[2] + out[3]).backward()
            results.append(list(out) + [p.grad.clone() for p in net.parameters() if p.grad is not None])
    torch._dynamo.reset()
    assert len(results[0]) == len(results[1])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
