"""mv_terms (Eq. 4 new samples + Eq. 6 norm and cosine terms, per location), forward+backward to Tv:
the reference's separate expressions against the fused op."""
import pytest

from rsg_fast import _bench_cases as bc


@pytest.mark.parametrize("impl", bc.OP_IMPLS)
def test_mv_terms(run_case, require, setting, pool, impl):
    require(impl=impl)
    run_case(bc.op_case("mv_terms", impl, setting, "generation", pool), group="mv_terms", graphs=True)
