"""Offsets past 2**31 elements, executed by the Triton kernels (in the interpreter, on the CPU).

A map or parameter of 2**31 elements is too large and too slow for the interpreter, but a view of a
few elements whose stride reaches past 2**31 elements needs only address space: every strided input
here is such a view into one fp16 storage of about 2**31 values (4 GiB of address space, never
written except at the viewed elements, so the OS maps only those pages). An offset computed in 32
bits wraps to an address before the storage (a crash) or to another element (a wrong value), so the
cases run in a subprocess that reports each one; each test reads its case's report. Every case
compares the Triton kernels with the PyTorch path on the same views. test_ops_compile.py checks
the same property statically, in the IR of every kernel variant.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import pytest
import torch

from helpers import close
from rsg_fast import ops  # registers torch.ops.rsg_fast

S = 2**30 + 2**20      # a stride below 2**31 (a 32-bit kernel argument) whose double is above it
SLOT = 4096            # each view starts in its own slot; its compact part stays inside the slot


class _Storage:
    """Views into one lazily mapped fp16 storage; along at most one dimension each, entries lie S apart."""

    def __init__(self):
        try:
            self.base = torch.empty(2 * S + 2**22, dtype=torch.float16)
        except RuntimeError as e:        # a failure, not a skip: without it nothing here is tested
            raise RuntimeError(f"these cases need 4 GiB of address space (touched only where viewed): {e}") from None
        self.used = 0

    def view(self, values: torch.Tensor, far: int | None = None) -> torch.Tensor:
        """A view holding ``values`` whose dimension ``far`` (at most 3 long) has stride S."""
        strides, step = [0] * values.dim(), 1
        for d in reversed(range(values.dim())):
            if d == far:
                assert values.shape[d] <= 3
                strides[d] = S
            else:
                strides[d], step = step, step * values.shape[d]
        assert step <= SLOT and (self.used + 1) * SLOT < 2**16
        t = self.base.as_strided(values.shape, strides, self.used * SLOT)
        self.used += 1
        t.copy_(values)
        return t


def _same(got, expected, what):
    assert got.shape == expected.shape, what
    try:
        close(got.float(), expected.float(), rtol=1e-4)
    except AssertionError as e:
        raise AssertionError(f"{what}: {e}") from None


def _case_center_assign(C):
    st = _Storage()
    N, L, K, H, W = 3, 2, 3, 2, 2
    x = st.view(torch.randn(N, C, H, W), far=0)
    target = torch.tensor([1, 0, 1])
    # channels S apart where (C - 1) * S passes 2**31, else centres
    centers = st.view(torch.randn(L, K, C), far=2 if C <= 3 else 1)
    linear = st.view(0.3 * torch.randn(L, C, K), far=1 if C <= 3 else 2)
    bias = st.view(torch.randn(L, K), far=1)
    out = {be: torch.ops.rsg_fast.center_assign(x, target, centers, linear, bias, be) for be in ("torch", "triton")}
    for name, a, b in zip(("gamma", "dist", "row", "cesc", "shift", "dmean", "mean_dist"), out["triton"], out["torch"]):
        _same(a, b, name)
    gamma, _, _, _, shift, dmean, mean_dist = out["torch"]
    g_gamma, g_dist, g_cesc = st.view(torch.randn(N, K), far=1), st.view(torch.randn(N, K), far=1), \
        st.view(torch.randn(N), far=0)
    grads = {be: torch.ops.rsg_fast.center_assign_backward(x, target, centers, linear, bias, gamma, mean_dist, shift,
                                                           dmean, g_gamma, g_dist, g_cesc, True, True, True, True, be)
             for be in ("torch", "triton")}
    for name, a, b in zip(("x", "centers", "linear", "bias"), grads["triton"], grads["torch"]):
        _same(a, b, "grad_" + name)


def _case_displacement():
    st = _Storage()
    x = st.view(torch.randn(3, 3, 2, 2), far=0)
    table = st.view(torch.randn(3, 3), far=1)
    index, row = torch.tensor([2, 1, 2]), torch.tensor([2, 0, 1])
    _same(ops.displacement(x, index, row, table, backend="triton"),
          ops.displacement(x, index, row, table, backend="torch"), "v")
    grad = st.view(torch.randn(3, 3, 2, 2), far=0)
    got, expected = (torch.ops.rsg_fast.displacement_backward(grad, x, index, row, table, True, False, be)[0]
                     for be in ("triton", "torch"))
    _same(got, expected, "grad_x")


def _case_mv_terms(grouping):
    st = _Storage()
    M, N, C, H, W = 3, 3, 3, 2, 2
    tv, v, x = (st.view(torch.randn(n, C, H, W), far=0) for n in (M, M, N))
    table = st.view(torch.randn(3, C), far=1)
    tail_index, row = torch.tensor([2, 0, 2]), torch.tensor([0, 2, 1])
    res = {}
    for be in ("torch", "triton"):
        ins = [t.detach().requires_grad_(True) for t in (tv, v, x)]   # leaves sharing the views' storage
        new, terms = ops.mv_terms(*ins, tail_index, row, table, grouping, backend=be)
        (new.float().square().sum() + terms.sum()).backward()
        res[be] = [new, terms] + [t.grad for t in ins]
    for name, a, b in zip(("new", "terms", "grad_tv", "grad_v", "grad_x"), res["triton"], res["torch"]):
        _same(a, b, name)


def _case_tap_window_means():
    st = _Storage()
    for far in (3, 0):           # channels S apart; samples S apart
        pre = st.view(torch.randn(3, 2, 2, 3), far=far)
        _same(ops.relu_tap_window_means(pre, backend="triton"), ops.relu_tap_window_means(pre, backend="torch"),
              f"S (far={far})")
        # tap rows S apart (2 * S passes 2**31); small integers: sums exact in the storage's fp16
        grad = st.view(torch.randint(-4, 5, (3, 3, 3, 3)).float(), far=2)
        got, expected = (torch.ops.rsg_fast.relu_tap_window_means_backward(pre, grad, be)
                         for be in ("triton", "torch"))
        _same(got, expected, f"grad_pre (far={far})")


CASES = {"center_assign-C3": lambda: _case_center_assign(3), "center_assign-C33": lambda: _case_center_assign(33),
         "displacement": _case_displacement, "mv_terms-location": lambda: _case_mv_terms("location"),
         "mv_terms-rows": lambda: _case_mv_terms("rows"), "relu_tap_window_means": _case_tap_window_means}


@pytest.fixture(scope="module")
def reports():
    """{case: "ok" or what went wrong}; after a crash a fresh process runs the cases left."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    found, left = {}, list(CASES)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "report.jsonl")
        while left:
            proc = subprocess.run([sys.executable, "-X", "faulthandler", __file__, path, *left], env=env,
                                  capture_output=True, text=True, timeout=600)
            started = []
            if os.path.exists(path):
                with open(path) as f:
                    for event in map(json.loads, f):
                        if len(event) > 1:
                            found[event["case"]] = event.get("error", "ok")
                        else:
                            started.append(event["case"])
                            found[event["case"]] = f"crashed (exit code {proc.returncode}): {proc.stderr[:3000]}"
                os.unlink(path)
            if not started:          # the process died before its first case
                started = [left[0]]
                found[left[0]] = f"exit code {proc.returncode}: {proc.stderr[-3000:]}"
            left = left[left.index(started[-1]) + 1:]
    return found


@pytest.mark.parametrize("case", list(CASES))
def test_strides_past_2_31_elements(reports, case):
    result = reports[case]
    if result != "ok":
        pytest.fail(result, pytrace=False)


def _main(path, names):
    """Runs the named cases in order; a line {"case": name} when one starts, another with "done"
    or "error" when it ends (a case that crashes the process leaves only the first)."""
    import traceback

    with open(path, "w") as f:
        for name in names:
            torch.manual_seed(0)
            f.write(json.dumps({"case": name}) + "\n")
            f.flush()
            try:
                CASES[name]()
                f.write(json.dumps({"case": name, "done": True}) + "\n")
            except Exception:
                f.write(json.dumps({"case": name, "error": traceback.format_exc()[-3000:]}) + "\n")
            f.flush()


if __name__ == "__main__":
    _main(sys.argv[1], sys.argv[2:])
