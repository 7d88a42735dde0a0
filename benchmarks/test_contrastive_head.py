"""The contrastive module (Eq. 2), forward+backward: the reference's full 3x3 convolution then pooling
against RSG's pooled tap sums. Before the threshold it trains (first/second half pairs); after it,
frozen, its gradient goes to the transformed samples."""
import pytest

from rsg_fast import _bench_cases as bc


@pytest.mark.parametrize("phase", bc.PHASES)
@pytest.mark.parametrize("impl", ("reference", "torch"))
def test_contrastive_head(run_case, setting, pool, impl, phase):
    run_case(bc.op_case("contrastive_head", impl, setting, phase, pool), group=f"contrastive_head {phase}")
