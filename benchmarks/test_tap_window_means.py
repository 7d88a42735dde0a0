"""relu_tap_window_means (Eq. 2: ReLU + the contrastive module's pooled 3x3 convolution as nine
window means), forward+backward: the plain reference (zero-padded windows) against the fused op."""
import pytest

from rsg_fast.bench import op_cases


@pytest.mark.parametrize("impl", op_cases.OP_IMPLS)
def test_tap_window_means(run_case, require, setting, op_pool, impl):
    require(impl=impl)
    run_case(op_cases.op_case("tap_window_means", impl, setting, op_pool), group="tap_window_means", graphs=True,
             inputs=op_pool)
