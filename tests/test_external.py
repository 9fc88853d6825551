"""torchvision/timm networks by name: block lists by family, IC heads that fit, published costs, weights, errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from sdn.models import BackboneParts, MultiExitNet, create, get_spec
from sdn.models.exits import ChannelsLastClassifier, InternalClassifier, TokenClassifier
from sdn.models.external import (
    BlocksNotFoundError,
    instantiate,
    register_family,
    split_model,
)

torchvision = pytest.importorskip("torchvision")
timm = pytest.importorskip("timm")

PUBLISHED = ["resnet18", "resnet50", "mobilenet_v3_large", "efficientnet_b0", "convnext_tiny", "vit_b_16"]
REQUEST = (0.25, 0.5, 0.75)


@pytest.mark.parametrize("builder", PUBLISHED)
def test_profile_matches_torchvision_published_costs(builder: str, capsys: pytest.CaptureFixture[str]) -> None:
    """``sdn profile`` at 224 px / 1000 classes: the unmodified network's parameters equal torchvision's published
    count, its MACs are within 3% of the published GFLOPS, the exits within 0.1 of the requested cost fractions."""
    from sdn.cli import main

    meta = torchvision.models.get_model_weights(builder).DEFAULT.meta
    exits = "cost:" + ",".join(str(f) for f in REQUEST)
    argv = ["profile", "--arch", f"torchvision/{builder}", "--input-size", "224", "--num-classes", "1000"]
    assert main([*argv, "--exits", exits, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert set(doc) == {"arch", "dataset", "cnn", "exits"} and set(doc["cnn"]) == {"params", "macs", "ops"}
    assert doc["cnn"]["params"] == meta["num_params"]
    assert doc["cnn"]["macs"] / 1e9 == pytest.approx(meta["_ops"], rel=0.03)
    fractions = [e["fraction"] for e in doc["exits"]]
    assert len(fractions) == len(REQUEST) + 1
    assert all(abs(got - want) <= 0.1 for got, want in zip(fractions, REQUEST, strict=False))


SPLITS = [
    ("torchvision/resnet18", 32, InternalClassifier),
    ("torchvision/mobilenet_v3_large", 32, InternalClassifier),
    ("torchvision/efficientnet_b0", 32, InternalClassifier),
    ("torchvision/convnext_tiny", 32, InternalClassifier),
    ("torchvision/swin_t", 32, ChannelsLastClassifier),
    ("torchvision/vit_b_16", 32, TokenClassifier),
    ("timm/resnet18", 32, InternalClassifier),
    ("timm/convnext_atto", 32, InternalClassifier),
    ("timm/deit_tiny_patch16_224", 32, TokenClassifier),
]


@pytest.mark.parametrize(("name", "size", "head_type"), SPLITS)
def test_split_computes_the_original_network_and_takes_fitting_heads(name: str, size: int, head_type: type) -> None:
    torch.manual_seed(0)
    original = instantiate(name, num_classes=5, input_size=size).eval()
    parts = split_model(original, name)
    cnn = MultiExitNet(parts, num_classes=5, input_size=size).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        assert torch.allclose(cnn(x)[-1], original(x), atol=1e-5)
    assert sum(p.numel() for p in cnn.parameters()) == sum(p.numel() for p in original.parameters())
    model = create(name, num_classes=5, input_size=size, exits=[0, len(parts.blocks) - 2])
    assert all(isinstance(head, head_type) for head in model.exits)
    outputs = model(x)
    assert len(outputs) == 3 and all(o.shape == (2, 5) for o in outputs)


def test_all_exits_follow_every_block_but_the_last() -> None:
    model = create("torchvision/resnet18", num_classes=10, input_size=32, exits="all")
    assert model.exit_positions == tuple(range(7))


def test_paper_exits_follow_the_paper_cost_fractions() -> None:
    model = create("torchvision/resnet18", num_classes=10, input_size=32, exits="paper")
    assert 3 <= model.num_exits - 1 <= 6  # six fractions on seven candidate blocks; clashes share an exit
    assert list(model.exit_positions) == sorted(set(model.exit_positions))


def test_unknown_name_suggests_close_matches() -> None:
    with pytest.raises(ValueError, match=r"unknown architecture 'torchvision/resnet19'.*torchvision/resnet18"):
        get_spec("torchvision/resnet19")
    with pytest.raises(ValueError, match=r"timm/deit_tiny_patch16_224"):
        get_spec("timm/deit_tiny_patch16_22")
    with pytest.raises(ValueError, match="did you mean resnet56"):
        get_spec("resnet57")


def test_missing_timm_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(ImportError, match=r"\.\[timm\]"):
        get_spec("timm/some_model_never_cached")


def test_unknown_family_says_how_to_register() -> None:
    with pytest.raises(BlocksNotFoundError, match="register_family"):
        create("torchvision/vgg11", num_classes=10, input_size=32, exits="none")


def test_registered_family_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    from sdn.models import external

    monkeypatch.setattr(external, "_FAMILIES", list(external._FAMILIES))  # the registration ends with the test

    def split(m: nn.Module) -> BackboneParts:
        f = m.features
        head = nn.Sequential(m.avgpool, nn.Flatten(1), m.classifier)
        return BackboneParts(stem=f[:3], blocks=[f[3:6], f[6:11], f[11:16], f[16:]], head=head)

    register_family("vgg-test", lambda m: type(m).__name__ == "VGG", split)
    model = create("torchvision/vgg11", num_classes=10, input_size=32, exits=[0, 2])
    assert model(torch.randn(1, 3, 32, 32))[-1].shape == (1, 10)


def test_local_weights_load_and_wrong_architecture_is_refused(tmp_path: Path) -> None:
    torch.manual_seed(1)
    source = torchvision.models.resnet18(num_classes=10)
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)
    loaded = instantiate("torchvision/resnet18", num_classes=10, input_size=32, weights=str(path))
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in loaded.state_dict().items())
    resized = instantiate("torchvision/resnet18", num_classes=3, input_size=32, weights=str(path))
    assert resized.fc.out_features == 3 and torch.equal(resized.conv1.weight, source.conv1.weight)
    with pytest.raises(ValueError, match=r"does not fit torchvision/mobilenet_v3_large.*another architecture"):
        create("torchvision/mobilenet_v3_large", num_classes=10, input_size=32, weights=str(path))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        create("torchvision/resnet18", num_classes=10, input_size=32, weights=str(tmp_path / "none.pth"))
    with pytest.raises(ValueError, match="takes no weights"):
        create("resnet56", num_classes=10, input_size=32, weights=str(path))


def test_hub_weights_offline_error_points_to_a_local_file(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(self: object, *args: object, **kwargs: object) -> None:
        raise OSError("network is unreachable")

    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", offline)
    with pytest.raises(RuntimeError, match=r"network is unreachable.*local|state_dict"):
        create("torchvision/resnet18", num_classes=10, input_size=32, exits="none", weights="DEFAULT")
    with pytest.raises(ValueError, match="IMAGENET1K_V1"):
        create("torchvision/resnet18", num_classes=10, input_size=32, exits="none", weights="NOPE")


def test_ic_only_on_pretrained_local_weights_keeps_backbone_bit_identical(tiny, tmp_path: Path) -> None:
    from sdn.train import train

    data = tiny.prepared(tmp_path / "data", n_train=32, n_holdout=16, n_test=8)
    torch.manual_seed(2)
    path = tmp_path / "pretrained.pth"
    torch.save(torchvision.models.resnet18(num_classes=tiny.CLASSES).state_dict(), path)
    recipe = tiny.recipe("ic_only", epochs=1, milestones=())
    model_pt = train(
        arch="torchvision/resnet18",
        recipe=recipe,
        data_dir=data,
        out_dir=tmp_path / "ic",
        seed=3,
        device="cpu",
        exits=[1, 3, 5],
        weights=str(path),
    )
    trained = tiny.state(model_pt)
    reference = create(
        "torchvision/resnet18", num_classes=tiny.CLASSES, input_size=tiny.SIZE, exits=[1, 3, 5], weights=str(path)
    ).state_dict()
    backbone = [k for k in reference if not k.startswith("exits.")]
    assert any("running_mean" in k for k in backbone)
    for key in backbone:
        assert torch.equal(trained[key], reference[key]), key
    assert any(not torch.equal(trained[k], reference[k]) for k in reference if k.startswith("exits."))
    from sdn.checkpoint import load_checkpoint

    model, meta = load_checkpoint(model_pt)
    assert meta["weights"] == str(path) and model.exit_positions == (1, 3, 5)


@pytest.mark.parametrize("name", ["torchvision/resnet18", "timm/deit_tiny_patch16_224", "torchvision/swin_t"])
def test_grad_cam_finds_target_layers_for_these_families(name: str) -> None:
    from sdn.analysis.gradcam import grad_cam

    torch.manual_seed(0)
    model = create(name, num_classes=3, input_size=32, exits=[1])
    maps = grad_cam(model, torch.randn(2, 3, 32, 32), exit_index=0)
    assert maps.shape == (2, 32, 32) and 0.0 <= maps.min() and maps.max() <= 1.0
