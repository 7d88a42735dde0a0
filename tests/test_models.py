"""Models: RSG placement and inferred shapes, the training/inference forward contract, RSG-free
inference state dicts that load strictly into the plain backbone."""
import pytest
import torch
import torchvision

from rsg_fast.models import CifarResNet, TorchvisionRSG, build_model, resnet32, resnet56, resnet110

RSG_OPTS = dict(n_center=3, contrastive_module_dim=16, epoch_thresh=1)


def test_plain_resnet32():
    m = resnet32(10)
    assert m.rsg is None
    n_params = sum(p.numel() for p in m.parameters())
    assert 460_000 < n_params < 470_000          # ResNet-32 for CIFAR: 0.46M parameters
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("ctor,blocks", [(resnet32, 5), (resnet56, 9), (resnet110, 18)])
def test_cifar_depths_option_a(ctor, blocks):
    m = ctor(100)
    assert len(m.layer1) == len(m.layer2) == len(m.layer3) == blocks
    # option A: the down-sampling shortcut has no parameters
    assert not list(m.layer2[0].shortcut.parameters()) and not list(m.layer3[0].shortcut.parameters())
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 100)


def test_cifar_rsg_after_stage_2_as_in_the_paper():
    m = build_model("resnet32", 10, rsg=RSG_OPTS, head_classes=[0, 1])
    assert m.rsg.feature_maps_shape == [32, 16, 16]
    assert build_model("resnet8", 10, rsg=RSG_OPTS, input_size=16).rsg.feature_maps_shape == [32, 8, 8]
    assert build_model("resnet8", 10, rsg=RSG_OPTS, rsg_stage=3).rsg.feature_maps_shape == [64, 8, 8]


def test_training_forward_appends_samples_and_eval_skips_rsg():
    torch.manual_seed(0)
    m = build_model("resnet8", 10, rsg=RSG_OPTS, head_classes=[0, 1], input_size=16)
    x = torch.randn(8, 3, 16, 16)
    y = torch.tensor([0, 1, 0, 1, 4, 5, 6, 7])
    m.train()
    logits, y_out, cesc, mv = m(x, y, 0)                   # contrastive phase: batch unchanged
    assert logits.shape == (8, 10) and torch.equal(y_out, y) and cesc.dim() == 0 and mv.item() == 0
    logits, y_out, cesc, mv = m(x, y, 5)                   # generation phase: rare samples appended
    assert logits.shape[0] == y_out.shape[0] > 8 and torch.equal(y_out[:8], y)
    assert set(y_out[8:].tolist()) <= {4, 5, 6, 7} and mv.item() > 0
    (logits.sum() + cesc + mv).backward()
    assert m.rsg.vec_transformation_module[0].weight.grad is not None
    m.eval()
    with torch.no_grad():
        plain_logits = m(x)
        logits, y_out, cesc, mv = m(x, y, 5)
    assert torch.equal(logits, plain_logits) and torch.equal(y_out, y) and cesc.item() == mv.item() == 0
    m.train()
    assert m(x).shape == (8, 10)                            # plain call: logits, never RSG
    with pytest.raises(ValueError, match="epoch"):
        m(x, y)


@pytest.mark.parametrize("use_norm", [False, True])
def test_cifar_inference_state_dict_loads_into_plain_backbone(use_norm):
    m = build_model("resnet32", 10, rsg=RSG_OPTS, use_norm=use_norm)
    sd = m.inference_state_dict()
    assert sd and not any(k.startswith("rsg.") for k in sd)
    assert any(k.startswith("rsg.") for k in m.state_dict())
    plain = build_model("resnet32", 10, use_norm=use_norm)
    plain.load_state_dict(sd, strict=True)
    m.eval(), plain.eval()
    x = torch.randn(3, 3, 32, 32)
    assert torch.equal(m(x), plain(x))


def test_torchvision_rsg_shape_and_strict_load_into_torchvision():
    m = build_model("resnet50", 20, rsg=RSG_OPTS, input_size=64, head_classes=[0, 1, 2])
    assert isinstance(m, TorchvisionRSG) and m.rsg.feature_maps_shape == [1024, 4, 4]
    assert build_model("resnext50_32x4d", 20, rsg=RSG_OPTS, rsg_stage=2, input_size=64).rsg.feature_maps_shape \
        == [512, 8, 8]
    m.train()
    x, y = torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 5, 6])
    logits, y_out, _, mv = m(x, y, 2)
    assert logits.shape == (y_out.shape[0], 20) and y_out.shape[0] > 4 and mv.item() > 0
    tv = torchvision.models.resnet50(weights=None, num_classes=20)
    tv.load_state_dict(m.inference_state_dict(), strict=True)     # torchvision's own network, strictly
    m.eval(), tv.eval()
    with torch.no_grad():
        assert torch.allclose(m(x), tv(x))


def test_paper_imagenet_placement_infers_1024x14x14():
    # ResNeXt-50 on 224 x 224 inputs: RSG after layer3 sees 1024 x 14 x 14 maps.
    m = TorchvisionRSG("resnext50_32x4d", 10, rsg=RSG_OPTS)
    assert m.rsg.feature_maps_shape == [1024, 14, 14]


@pytest.mark.parametrize("arch, size", [("resnet8", 16), ("resnet18", 32)])
def test_a_training_call_rsg_rejects_moves_no_batchnorm_statistic(arch, size):
    """RSG checks its arguments after the stages before it ran, whose BatchNorm layers had already
    updated their running statistics: a rejected call changed the model. The model checks what it
    can before its first layer (the label range where the labels are on the CPU, or host_target)."""
    torch.manual_seed(0)
    m = build_model(arch, 6, rsg=RSG_OPTS, head_classes=[0, 1], input_size=size).train()
    x, y = torch.randn(4, 3, size, size), torch.tensor([0, 1, 2, 3])
    before = {k: v.clone() for k, v in m.state_dict().items()}
    bad_calls = [
        ((x, torch.tensor([0, 1, 6, 3]), 5), {}, ValueError, "target holds label 6"),
        ((x, torch.tensor([0, 1, 2]), 5), {}, ValueError, "one label per sample: x has batch 4"),
        ((x, y.float(), 5), {}, TypeError, "target must be a 1-D integer"),
        ((x, y), {}, ValueError, "epoch is required"),
        ((x, y, -1), {}, ValueError, "epoch must be a finite number"),
        ((x, y, 5), dict(host_target=torch.tensor([0, 1, 2, 6])), ValueError, "host_target"),
    ]
    for args, kwargs, exc, words in bad_calls:
        with pytest.raises(exc, match=words):
            m(*args, **kwargs)
        assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items()), words
    # a bad head list is refused when it is set (it failed in the forward, after the BatchNorm layers)
    for heads, exc, words in (([0, 9], ValueError, r"head_classes holds 9, outside \[0, num_classes=6\)"),
                              ([0, 0], ValueError, "head_classes repeats class ids"),
                              ([0.5], TypeError, "head_classes must hold integer class ids")):
        with pytest.raises(exc, match=words):
            m.set_head_classes(heads)
        assert m.head_classes == [0, 1]
    m.set_head_classes(torch.tensor([1, 0]))
    assert m.head_classes == [1, 0]
    logits, y_out, _, _ = m(x, y, 5)                      # a good call still trains as before
    assert y_out.shape[0] > 4 and logits.shape[0] == y_out.shape[0]


@pytest.mark.parametrize("arch, size, other, same", [("resnet8", 16, 8, 15), ("resnet18", 32, 64, 31)])
def test_images_of_another_size_are_judged_by_the_maps_they_give(arch, size, other, same):
    """Images that give RSG other maps than it was built for are rejected before the first layer,
    naming input_size (RSG itself would reject them after BatchNorm statistics moved, naming its own
    feature_maps_shape, which a build_model user never gave); a size that gives the same maps
    (an odd size rounding up through the strides) trains."""
    torch.manual_seed(0)
    m = build_model(arch, 6, rsg=RSG_OPTS, head_classes=[0, 1], input_size=size).train()
    y = torch.tensor([0, 1, 2, 3])
    before = {k: v.clone() for k, v in m.state_dict().items()}
    for h, w in ((other, other), (size, other)):
        with pytest.raises(ValueError, match=f"x holds {h} x {w} images.*built for input_size={size}"):
            m(torch.randn(4, 3, h, w), y, 5)
        assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())
    logits, y_out, _, _ = m(torch.randn(4, 3, same, same), y, 5)
    assert y_out.shape[0] > 4 and logits.shape[0] == y_out.shape[0]
    assert m(torch.randn(2, 3, other, other)).shape == (2, 6)       # inference: RSG does not run


def test_model_errors_name_the_argument():
    with pytest.raises(ValueError, match="arch"):
        build_model("vgg16", 10)
    with pytest.raises(ValueError, match="depth"):
        CifarResNet(30, 10)
    with pytest.raises(ValueError, match="rsg_stage"):
        build_model("resnet32", 10, rsg=RSG_OPTS, rsg_stage=4)
    with pytest.raises(TypeError, match="unknown RSG option"):
        build_model("resnet32", 10, rsg=dict(n_centre=3))


@pytest.mark.parametrize("arch, size", [("resnet8", 16), ("resnet18", 32)])
def test_eval_network_with_rsg_exports_for_deployment(arch, size):
    """RSG is training-only: a trained network holding it, in eval mode, is what users deploy, so
    ``torch.export`` must trace it without RSG's ops and give its outputs."""
    torch.manual_seed(0)
    m = build_model(arch, 10, rsg=RSG_OPTS, input_size=size, head_classes=[0, 1]).eval()
    x = torch.randn(3, 3, size, size)
    program = torch.export.export(m, (x,))
    assert not [n for n in program.graph.nodes if "rsg_fast" in str(n.target)]
    with torch.no_grad():
        assert torch.allclose(program.module()(x), m(x), rtol=1e-5, atol=1e-6)
