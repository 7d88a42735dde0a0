"""Losses against values computed by hand; re-balancing rules; the learning-rate schedule."""
import math

import pytest
import torch

from rsg_fast.losses import (
    CrossEntropy, FocalLoss, LDAMLoss, NormedLinear, TrainRule, build_loss, class_balanced_weights, paper_lr,
)


def test_focal_by_hand():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    target = torch.tensor([0, 0])
    p0 = math.exp(2) / (math.exp(2) + 1)     # 0.8808
    p1 = 1 / (1 + math.e)                    # 0.2689
    expected = ((1 - p0) * -math.log(p0) + (1 - p1) * -math.log(p1)) / 2   # gamma = 1
    assert FocalLoss(gamma=1.0)(logits, target).item() == pytest.approx(expected, rel=1e-6)
    expected2 = ((1 - p0) ** 2 * -math.log(p0) + (1 - p1) ** 2 * -math.log(p1)) / 2
    assert FocalLoss(gamma=2.0)(logits, target).item() == pytest.approx(expected2, rel=1e-6)
    # gamma = 0 is cross-entropy
    assert FocalLoss(gamma=0.0)(logits, target).item() == pytest.approx(CrossEntropy()(logits, target).item())


def test_ldam_by_hand():
    counts = [16, 1]                          # n^(-1/4): 0.5, 1 -> margins 0.25, 0.5 with max_m 0.5
    loss = LDAMLoss(counts, max_m=0.5, s=30.0)
    assert loss.m_list.tolist() == pytest.approx([0.25, 0.5])
    logits = torch.tensor([[0.6, 0.1], [0.2, 0.4]])
    target = torch.tensor([0, 1])
    # sample 0: true class 0 gets 0.6 - 0.25 = 0.35 vs 0.1; sample 1: true class 1 gets 0.4 - 0.5 = -0.1 vs 0.2
    l0 = -math.log(math.exp(30 * 0.35) / (math.exp(30 * 0.35) + math.exp(30 * 0.1)))
    l1 = -math.log(math.exp(30 * -0.1) / (math.exp(30 * -0.1) + math.exp(30 * 0.2)))
    assert loss(logits, target).item() == pytest.approx((l0 + l1) / 2, rel=1e-5)
    # weighted (DRW): torch's weighted mean, sum(w_y l) / sum(w_y)
    loss.weight = torch.tensor([1.0, 3.0])
    assert loss(logits, target).item() == pytest.approx((l0 + 3 * l1) / 4, rel=1e-5)


def test_normed_linear_is_cosine():
    layer = NormedLinear(4, 3)
    x = torch.randn(5, 4)
    out = layer(x)
    expected = torch.nn.functional.cosine_similarity(x[:, :, None], layer.weight[None], dim=1)
    assert torch.allclose(out, expected, atol=1e-6) and out.abs().max() <= 1 + 1e-6


def test_class_balanced_weights_by_hand():
    w = class_balanced_weights([100, 10], beta=0.9)
    raw = [(1 - 0.9) / (1 - 0.9 ** 100), (1 - 0.9) / (1 - 0.9 ** 10)]
    assert w.tolist() == pytest.approx([r / sum(raw) * 2 for r in raw], rel=1e-6)
    assert class_balanced_weights([5, 50, 500], beta=0.0).tolist() == pytest.approx([1, 1, 1])
    w = class_balanced_weights([5000, 50], beta=0.9999)
    assert w[1] > w[0] and w.sum().item() == pytest.approx(2.0)


def test_train_rules():
    counts = [100, 10]
    drw = TrainRule("DRW", counts, defer_epoch=160)
    assert drw.weights(159) is None and torch.allclose(drw.weights(160), class_balanced_weights(counts))
    assert not drw.balanced_sampling(170)
    drs = TrainRule("DRS", counts, defer_epoch=80)
    assert drs.weights(90) is None and not drs.balanced_sampling(79) and drs.balanced_sampling(80)
    assert TrainRule("Resample", counts).balanced_sampling(0)
    assert TrainRule("Reweight", counts).weights(0) is not None
    assert TrainRule("None", counts).weights(500) is None
    with pytest.raises(ValueError, match="train_rule"):
        TrainRule("CB", counts)
    with pytest.raises(ValueError, match="loss_type"):
        build_loss("Hinge", counts)
    with pytest.raises(ValueError, match="cls_num_list"):
        LDAMLoss([10, 0])


def test_paper_lr_schedule():
    lr = [paper_lr(e, 0.1, 5, (160, 180), (0.01, 0.0001)) for e in range(200)]
    assert lr[0] == pytest.approx(0.02) and lr[4] == pytest.approx(0.1) and lr[5] == pytest.approx(0.1)
    assert lr[159] == pytest.approx(0.1) and lr[160] == pytest.approx(0.001) and lr[179] == pytest.approx(0.001)
    assert lr[180] == pytest.approx(1e-5) and lr[199] == pytest.approx(1e-5)
