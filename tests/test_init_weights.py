"""``rsg-fast train --init-weights FILE``: a new run starts from another network's weights (the paper
fine-tunes an ImageNet ResNet-152 on Places-LT). Every backbone tensor comes from the file, the
classifier only when its shape fits, RSG never; a file that does not fit is refused, naming the flag
and the keys, with the network untouched; a resumed run keeps the record of what it started from.
Weights are compared with ``torch.equal`` (copies, no arithmetic)."""
import json
import os

import pytest
import torch
import torchvision

from rsg_fast import checkpoint as ckpt
from rsg_fast.models import build_model
from rsg_fast.train import main
from rsg_fast.train.init_weights import load_init_weights

RSG_OPTIONS = dict(n_center=3, contrastive_module_dim=8)


@pytest.fixture(scope="module")
def imagenet_like(tmp_path_factory):
    """A torchvision ResNet-18 as torchvision ships its ImageNet weights: 1000 classes, plain Linear."""
    torch.manual_seed(123)
    net = torchvision.models.resnet18(num_classes=1000)
    path = str(tmp_path_factory.mktemp("weights") / "resnet18-imagenet.pth")
    torch.save(net.state_dict(), path)
    return path, net.state_dict()


def _ours(num_classes=10, use_norm=True, seed=0, arch="resnet18"):
    torch.manual_seed(seed)
    return build_model(arch, num_classes, rsg=RSG_OPTIONS, head_classes=[0, 1], use_norm=use_norm, input_size=64)


def test_backbone_from_the_file_classifier_and_rsg_fresh(imagenet_like):
    path, theirs = imagenet_like
    model, fresh = _ours(), _ours()           # the same seed: what a run without --init-weights starts from
    note = load_init_weights(model, path, "resnet18")
    state, fresh_state = model.state_dict(), fresh.state_dict()
    backbone = [k for k in state if not k.startswith(("fc.", "rsg."))]
    assert len(backbone) == len(theirs) - 2 and all(torch.equal(state[k], theirs[k]) for k in backbone)
    assert any(not torch.equal(state[k], fresh_state[k]) for k in backbone)      # the load did something
    for k in state:
        if k.startswith(("fc.", "rsg.")):
            assert torch.equal(state[k], fresh_state[k]), k
    assert note == (f"initialised from {path}: {len(backbone)} tensors; fresh: the classifier (fc: bias (1000,), "
                    "weight (1000, 512) in the file, weight (512, 10) here) and RSG")


@pytest.mark.parametrize("wrap", ["plain", "model", "state_dict", "state_dict-beside-model-info", "module.", "legacy"])
def test_a_classifier_that_fits_is_taken_in_any_usual_wrapping(imagenet_like, tmp_path, wrap):
    """``legacy``: saved before PyTorch 0.4.1 (torchvision's ResNet files), without BatchNorm's
    num_batches_tracked, which then keep the network's own value (as torch's strict load does)."""
    _, theirs = imagenet_like
    legacy = {k: v for k, v in theirs.items() if not k.endswith("num_batches_tracked")}
    saved = {"plain": theirs, "model": {"model": theirs, "epoch": 3, "optimizer": {"state": {}}},
             "state_dict": {"state_dict": theirs}, "state_dict-beside-model-info": {"model": {"arch": "r18"},
                                                                                    "state_dict": theirs},
             "module.": {"module." + k: v for k, v in theirs.items()}, "legacy": legacy}[wrap]
    path = str(tmp_path / "w.pt")
    torch.save(saved, path)
    model = build_model("resnet18", 1000)
    own = {k: v.clone() for k, v in model.state_dict().items()}
    expected = legacy if wrap == "legacy" else theirs
    assert len(legacy) < len(theirs)
    assert load_init_weights(model, path, "resnet18") == f"initialised from {path}: {len(expected)} tensors"
    assert all(torch.equal(v, expected[k] if k in expected else own[k]) for k, v in model.state_dict().items())


def _rejects(model, path, arch, match):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises((ValueError, FileNotFoundError), match=match) as info:
        load_init_weights(model, path, arch)
    assert str(info.value).startswith("--init-weights")
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())   # nothing copied


def test_files_that_do_not_fit_are_refused_with_the_network_untouched(imagenet_like, tmp_path):
    path, theirs = imagenet_like
    _rejects(_ours(arch="resnet34"), path, "resnet34", r"does not fit --arch resnet34: it lacks layer1\.2\.")
    grown = dict(theirs, **{"layer5.weight": torch.zeros(1)})
    torch.save(grown, tmp_path / "extra.pt")
    _rejects(_ours(), str(tmp_path / "extra.pt"), "resnet18", r"has keys this network has not: layer5\.weight")
    narrow = dict(theirs, **{"layer1.0.conv1.weight": torch.zeros(64, 64, 1, 1)})
    torch.save(narrow, tmp_path / "shape.pt")
    _rejects(_ours(), str(tmp_path / "shape.pt"), "resnet18",
             r"other shapes: layer1\.0\.conv1\.weight \(64, 64, 1, 1\) \(this network: \(64, 64, 3, 3\)\)")
    torch.save(dict(theirs, **{"bn1.weight": [1.0] * 64}), tmp_path / "list.pt")
    _rejects(_ours(), str(tmp_path / "list.pt"), "resnet18", r"not tensors: bn1\.weight")
    torch.save([1, 2], tmp_path / "not-a-dict.pt")
    _rejects(_ours(), str(tmp_path / "not-a-dict.pt"), "resnet18", "expected a state dict .* got list")
    torch.save({"model": torch.nn.Linear(2, 2)}, tmp_path / "pickled.pt")
    _rejects(_ours(), str(tmp_path / "pickled.pt"), "resnet18", r"weights_only=True\): .*Linear")
    _rejects(_ours(), str(tmp_path / "absent.pt"), "resnet18", "file not found")
    # an rsg-fast checkpoint of a format this version does not read (its entries may mean other things)
    torch.save({"format": "rsg_fast.inference/2", "model": theirs}, tmp_path / "later.pt")
    _rejects(_ours(), str(tmp_path / "later.pt"), "resnet18", "is in format 'rsg_fast.inference/2', which rsg-fast")


TINY = ["--device", "cpu", "--no-progress", "--arch", "resnet8", "--synthetic-max", "60", "--synthetic-test", "5",
        "--batch-size", "32", "--contrastive-dim", "8", "--n-center", "3", "--epochs", "2", "--loss-type", "CE",
        "--train-rule", "None", "--imb-factor", "0.1"]


def test_train_starts_from_the_file_and_a_resume_keeps_its_record(tmp_path, capsys):
    """A run from another run's best checkpoint: at an lr of 1e-30 the weights it ends with are the
    file's (BatchNorm's running statistics aside, which the forward updates); resuming with the same
    flags, or without the flag, keeps config.json's record; another file is refused."""
    first = str(tmp_path / "first")
    assert main(TINY + ["--out", first]) == 0
    best = torch.load(os.path.join(first, ckpt.BEST), weights_only=True)["model"]
    second = str(tmp_path / "second")
    flags = TINY + ["--lr", "1e-30", "--init-weights", os.path.join(first, ckpt.BEST), "--out", second]
    assert main(flags + ["--stop-after-epoch", "1"]) == 0
    out = capsys.readouterr().out
    assert f"initialised from {os.path.join(first, ckpt.BEST)}: " in out and "; fresh: RSG" in out
    last = torch.load(os.path.join(second, ckpt.LAST), weights_only=True)
    weights = [k for k in best if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert len(weights) > 20 and all(torch.equal(last["model"][k], best[k]) for k in weights)
    assert last["config"]["init_weights"] == os.path.abspath(os.path.join(first, ckpt.BEST))
    assert main(flags + ["--stop-after-epoch", "2", "--resume"]) == 0          # the same flags
    without = [a for a in flags if a not in ("--init-weights", os.path.join(first, ckpt.BEST))]
    assert main(without + ["--epochs", "3", "--resume"]) == 0                     # without the flag
    config = json.loads(open(os.path.join(second, "config.json")).read())
    assert config["init_weights"] == os.path.abspath(os.path.join(first, ckpt.BEST))
    capsys.readouterr()
    assert main(TINY + ["--init-weights", os.path.join(first, ckpt.LAST), "--out", second, "--resume"]) == 2
    assert "--init-weights is for a new run" in capsys.readouterr().err


def test_train_refuses_a_file_that_does_not_fit_before_writing_anything(imagenet_like, tmp_path, capsys):
    path, _ = imagenet_like
    out = str(tmp_path / "run")
    assert main(TINY + ["--init-weights", path, "--out", out]) == 2
    err = capsys.readouterr().err
    assert "error: --init-weights" in err and "does not fit --arch resnet8" in err
    assert not os.path.exists(os.path.join(out, "config.json"))
    assert main(TINY + ["--init-weights", str(tmp_path / "absent.pt"), "--out", out]) == 2
    assert "--init-weights: file not found" in capsys.readouterr().err
