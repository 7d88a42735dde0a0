"""Comparison helpers shared by the test suite and ``rsg-fast check``: one definition of "close".

A fast-path result is compared with a float64 reference computed on the same input values:
``|actual - expected| <= rtol * |expected| + rtol * scale`` elementwise, ``scale`` being the
quantity's size (max |expected|, at least 1), so values near zero are judged against the size of
the whole tensor rather than their own. (The floor of 1 makes the bound absolute, rtol, for
quantities much smaller than 1: pass ``scale`` to judge those against their own size.)

``rtol`` per dtype (``TOLERANCES``): fp64 1e-10; fp32 1e-5; fp16 2e-3 and bf16 1.6e-2 for tensors
stored in that dtype (about one rounding); 1e-4 for statistics accumulated in fp32 from fp16/bf16
inputs (``STATS_TOLERANCE``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

TOLERANCES = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
STATS_TOLERANCE = 1e-4   # fp32 sums of fp16/bf16 values, against float64 sums of the same values

__all__ = ["Comparison", "TOLERANCES", "STATS_TOLERANCE", "compare", "assert_close", "tolerance"]


def tolerance(dtype: torch.dtype, *, statistic: bool = False) -> float:
    """rtol for a result stored in ``dtype``; ``statistic``: an fp32/fp64 sum whose inputs had ``dtype``."""
    if statistic and dtype in (torch.float16, torch.bfloat16):
        return STATS_TOLERANCE
    return TOLERANCES[dtype]


@dataclass(frozen=True)
class Comparison:
    """How far ``actual`` is from ``expected``: the largest absolute error, the largest error relative
    to ``|expected| + scale`` (what ``rtol`` bounds), the tolerance and whether it holds."""

    max_abs: float
    max_rel: float
    rtol: float
    passed: bool
    shape_ok: bool = True

    def __str__(self) -> str:
        if not self.shape_ok:
            return "shapes differ"
        return f"max abs {self.max_abs:.2e}, max rel {self.max_rel:.2e} (rtol {self.rtol:.0e})"


def compare(actual: torch.Tensor, expected: torch.Tensor, rtol: float, scale: float | None = None) -> Comparison:
    """Compare in float64 on the CPU (see the module docstring); NaN anywhere fails."""
    if tuple(actual.shape) != tuple(expected.shape):
        return Comparison(float("inf"), float("inf"), rtol, False, shape_ok=False)
    a = actual.detach().to("cpu", torch.float64)
    e = expected.detach().to("cpu", torch.float64)
    if e.numel() == 0:
        return Comparison(0.0, 0.0, rtol, True)
    if scale is None:
        scale = max(1.0, e.abs().max().item())
    err = (a - e).abs()
    bound = e.abs() + scale
    rel = (err / bound).max().item()
    finite = bool(torch.isfinite(a).all()) or not bool(torch.isfinite(e).all())
    return Comparison(err.max().item(), rel, rtol, finite and rel <= rtol)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float, scale: float | None = None,
                 what: str = "") -> None:
    """``compare`` as an assertion (the tests' ``close``)."""
    result = compare(actual, expected, rtol, scale)
    assert result.passed, f"{what + ': ' if what else ''}{result} for shape {tuple(expected.shape)}"
