"""mv_terms (Eq. 4 new samples + Eq. 6 norm and cosine terms), forward+backward to Tv, with the
per-location grouping (mv_terms) and the published code's row grouping (mv_terms_rows): the plain
reference's separate expressions against the fused op."""
import pytest

from rsg_fast.bench import op_cases


@pytest.mark.parametrize("op", ["mv_terms", "mv_terms_rows"])
@pytest.mark.parametrize("impl", op_cases.OP_IMPLS)
def test_mv_terms(run_case, require, setting, op_pool, impl, op):
    require(impl=impl)
    run_case(op_cases.op_case(op, impl, setting, op_pool), group=op, graphs=True, inputs=op_pool)
