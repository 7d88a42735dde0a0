"""The whole RSG module (forward+backward, both phases) and the CIFAR ResNet-32 training step, with
the same variants as `rsg-fast bench` (rsg_fast.bench.cases)."""
import pytest

from rsg_fast.bench import cases as bc


@pytest.mark.parametrize("phase", bc.PHASES)
@pytest.mark.parametrize("variant", bc.MODULE_VARIANTS)
def test_module(run_case, require, setting, pool, variant, phase):
    require(variant)
    run_case(bc.module_case(variant, setting, phase, pool), group=f"module {phase}")


@pytest.mark.parametrize("variant, phase", [(v, "-") for v in ("resnet32", "resnet32-compiled")] + [
    (v, p) for v in bc.STEP_VARIANTS if v not in ("resnet32", "resnet32-compiled") for p in bc.PHASES])
def test_training_step(run_case, require, setting, pool, variant, phase):
    require(variant)
    run_case(bc.step_case(variant, setting, phase, pool), group=f"resnet32 step {phase}")
