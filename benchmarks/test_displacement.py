"""displacement (Eq. 3): gather the paired samples and subtract their closest centre, forward (the
module needs no gradient here): the plain reference's gather-then-subtract against the fused op."""
import pytest

from rsg_fast.bench import op_cases


@pytest.mark.parametrize("impl", op_cases.OP_IMPLS)
def test_displacement(run_case, require, setting, op_pool, impl):
    require(impl=impl)
    run_case(op_cases.op_case("displacement", impl, setting, op_pool), group="displacement", graphs=True,
             inputs=op_pool)
