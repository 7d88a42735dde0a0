"""center_assign (Eq. 1 centre weights + Eq. 5 distances), forward+backward to the centres, linear
and bias: the plain reference (rsg_fast.ops.naive, materialising N x K x C x H x W) against the fused
op (PyTorch, Triton)."""
import pytest

from rsg_fast.bench import op_cases


@pytest.mark.parametrize("impl", op_cases.OP_IMPLS)
def test_center_assign(run_case, require, setting, op_pool, impl):
    require(impl=impl)
    run_case(op_cases.op_case("center_assign", impl, setting, op_pool), group="center_assign", graphs=True,
             inputs=op_pool)
