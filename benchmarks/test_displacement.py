"""displacement (Eq. 3): gather the paired samples and subtract their closest centre, forward (the
module needs no gradient here): reference gather-then-subtract against the fused op."""
import pytest

from rsg_fast import _bench_cases as bc


@pytest.mark.parametrize("impl", bc.OP_IMPLS)
def test_displacement(run_case, require, setting, pool, impl):
    require(impl=impl)
    run_case(bc.op_case("displacement", impl, setting, "generation", pool), group="displacement", graphs=True)
