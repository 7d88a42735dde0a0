"""Property-based: RSG against ReferenceRSG on configurations hypothesis draws, in float64.

The seeded cases in test_module.py pick a few shapes; here hypothesis draws every size the module
accepts (C, H, W, K, D, L from 1 or 2 up, batches from 0 samples, head lists from empty to all but one
class, given at forward in any form or differing from the constructor's), any beta in (0, 1], both MV
modes, every memory layout, both phases, and ``host_target``; and shrinks a failure to a small case.
Every draw compares the four outputs and the gradients of the input and of every parameter, and the
new samples' labels against the published segment rule written out independently.

Tolerance: float64 on both sides, |a - b| <= 1e-9 * max(1, max |b|) (same maths, another association).
"""
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from helpers import layout
from test_module import assert_same, expected_new_labels, make_pair, run

# Each example builds two modules and runs forward+backward twice: no deadline (a 2-core CI machine
# shared with other jobs), and fresh draws on every run (the failing example is printed to reproduce).
PROPERTY_SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True)


@st.composite
def rsg_cases(draw, max_size=7, max_batch=12):
    L = draw(st.integers(2, 7))
    heads = draw(st.lists(st.integers(0, L - 1), unique=True, max_size=L - 1))
    N = draw(st.integers(0, max_batch))
    labels = draw(st.lists(st.integers(0, L - 1), min_size=N, max_size=N))
    return dict(
        C=draw(st.integers(1, max_size)), H=draw(st.integers(1, 5)), W=draw(st.integers(1, 5)),
        K=draw(st.integers(1, 4)), D=draw(st.integers(1, 7)), L=L, heads=sorted(heads),
        # the head list forward receives: the constructor's (in some form) or another one
        forward_heads=draw(st.one_of(
            st.just(None),
            st.sampled_from(["list", "tuple", "tensor", "reversed"]),
            st.lists(st.integers(0, L - 1), unique=True, max_size=L).map(sorted))),
        labels=labels,
        beta=draw(st.one_of(st.just(1.0), st.floats(0.01, 1.0))),
        mv_loss=draw(st.sampled_from(["paper", "original"])),
        layout=draw(st.sampled_from(["contiguous", "channels_last", "sliced"])),
        epoch=draw(st.sampled_from([0, 3, 4, 11])),             # threshold 3: before, at, after
        host_target=draw(st.booleans()),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


def _forward_heads(case):
    spec, heads = case["forward_heads"], case["heads"]
    if isinstance(spec, list) or spec is None:
        return spec
    return {"list": list(heads), "tuple": tuple(heads), "tensor": torch.tensor(heads, dtype=torch.long),
            "reversed": heads[::-1]}[spec]


def _check_case(case, backend):
    gen = torch.Generator().manual_seed(case["seed"])
    torch.manual_seed(case["seed"])      # make_pair perturbs the parameters with the global RNG
    C, H, W, N = case["C"], case["H"], case["W"], len(case["labels"])
    ref, fast = make_pair(C, H, W, case["K"], case["D"], case["L"], case["heads"], beta=case["beta"],
                          thresh=3, mv_loss=case["mv_loss"], backend=backend, dtype=torch.float64)
    x = layout(torch.randn(N, C, H, W, generator=gen, dtype=torch.float64) * 2 + 0.5, case["layout"])
    y = torch.tensor(case["labels"], dtype=torch.long)
    heads_arg = _forward_heads(case)
    used_heads = case["heads"] if heads_arg is None else sorted(int(h) for h in heads_arg)
    host = dict(host_target=y.clone()) if case["host_target"] else {}

    a, b = (run(m, x, heads_arg, y, case["epoch"], seed=case["seed"], **host) for m in (fast, ref))
    assert_same(a, b, torch.float64, f"{backend} {case}")
    expected = expected_new_labels(y, used_heads, case["beta"]) if case["epoch"] > 3 else []
    assert a["y"][N:].tolist() == expected
    assert a["out"].shape[0] == N + len(expected)
    assert torch.isfinite(a["cesc"]) and torch.isfinite(a["mv"])


def corner(**changes):
    """A fixed case (besides hypothesis's draws) that every run tries."""
    case = dict(C=3, H=2, W=3, K=2, D=3, L=4, heads=[0, 1], forward_heads=None, labels=[0, 2, 1, 3, 0],
                beta=1.0, mv_loss="paper", layout="contiguous", epoch=11, host_target=False, seed=0)
    case.update(changes)
    return case


@settings(max_examples=60, **PROPERTY_SETTINGS)
@given(case=rsg_cases())
@example(case=corner(labels=[]))                                        # empty batch
@example(case=corner(labels=[2], host_target=True))                     # one sample
@example(case=corner(heads=[], forward_heads="tensor"))                 # no head classes
@example(case=corner(C=1, H=1, W=1, K=1, D=1, mv_loss="original"))      # every size 1
@example(case=corner(labels=[0, 1, 2, 3, 2, 3, 3, 2, 3], beta=0.3, layout="sliced"))   # few heads
@example(case=corner(labels=[0, 0, 1, 0, 1, 3, 0], forward_heads=[1, 3], host_target=True))
@example(case=corner(heads=[0, 1, 2], labels=[3, 0, 2, 1], layout="channels_last", epoch=3))
def test_rsg_matches_reference_on_drawn_configurations(case):
    _check_case(case, "torch")


@settings(max_examples=8, **PROPERTY_SETTINGS)
@given(case=rsg_cases(max_size=5, max_batch=8))
def test_rsg_on_triton_kernels_matches_reference_on_drawn_configurations(case):
    """The same property on the Triton kernels (the interpreter on a CPU: fewer, smaller draws)."""
    _check_case(case, "triton")
