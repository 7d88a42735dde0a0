"""center_distance (Eq. 1 pooled mean + Eq. 5 distances), forward+backward to the centres:
the reference's materialised N x K x C x H x W difference against the fused op (PyTorch, Triton)."""
import pytest

from rsg_fast import _bench_cases as bc


@pytest.mark.parametrize("impl", bc.OP_IMPLS)
def test_center_distance(run_case, require, setting, pool, impl):
    require(impl=impl)
    run_case(bc.op_case("center_distance", impl, setting, "-", pool), group="center_distance", graphs=True)
