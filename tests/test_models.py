"""Backbones, IC placement and CNN -> SDN conversion (spec §1, §2)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sdn.models import BackboneParts, MultiExitNet, create, get_spec, list_archs
from sdn.models.placement import closest_blocks, parse_fractions, resolve_exits

ARCHS = ("vgg16bn", "resnet56", "wrn32_4", "mobilenet")
NUM_BLOCKS = {"vgg16bn": 13, "resnet56": 27, "wrn32_4": 15, "mobilenet": 13}
PAPER_EXITS = {
    "vgg16bn": (1, 3, 5, 6, 8, 9),
    "resnet56": (3, 7, 11, 15, 19, 23),
    "wrn32_4": (2, 4, 6, 8, 10, 12),
    "mobilenet": (2, 4, 6, 8, 9, 11),
}
# IC Linear in-features, spec §2.2 (MobileNet: the released 5-IC mask, as in the spec's table).
IC_IN_FEATURES = {
    ("vgg16bn", 32): [1024, 2048, 4096, 4096, 8192, 2048],
    ("vgg16bn", 64): [1024, 2048, 4096, 4096, 8192, 8192],
    ("resnet56", 32): [256, 256, 512, 512, 1024, 1024],
    ("resnet56", 64): [256, 256, 512, 512, 1024, 1024],
    ("wrn32_4", 32): [1024, 1024, 2048, 2048, 4096, 4096],
    ("wrn32_4", 64): [1024, 1024, 2048, 2048, 4096, 4096],
    ("mobilenet", 32): [2048, 4096, 8192, 8192, 4096],
    ("mobilenet", 64): [2048, 4096, 8192, 8192, 16384],
}

_CACHE: dict[tuple[str, int], MultiExitNet] = {}


def built(arch: str, size: int) -> MultiExitNet:
    """Each (arch, input size) is built once for the whole module (10 classes, paper exits)."""
    if (arch, size) not in _CACHE:
        torch.manual_seed(0)
        _CACHE[(arch, size)] = create(arch, num_classes=10, input_size=size, exits="paper").eval()
    return _CACHE[(arch, size)]


def test_registry_lists_the_four_archs_with_paper_settings() -> None:
    assert set(ARCHS) <= set(list_archs())
    for arch in ARCHS:
        spec = get_spec(arch)
        assert spec.paper_exits == PAPER_EXITS[arch]
        assert spec.weight_decay == (5e-4 if arch in ("vgg16bn", "wrn32_4") else 1e-4)
    assert get_spec("mobilenet").original_exits == (2, 4, 6, 8, 11)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("size", [32, 64])
def test_block_and_exit_counts_and_ic_widths(arch: str, size: int) -> None:
    model = built(arch, size)
    assert len(model.blocks) == NUM_BLOCKS[arch]
    assert model.exit_positions == PAPER_EXITS[arch]
    assert model.num_exits == 7
    widths = [ic.in_features for ic in model.exits]
    expected = IC_IN_FEATURES[(arch, size)]
    if arch == "mobilenet":  # paper placement adds the IC after block 9, same width as block 8's
        expected = expected[:4] + [expected[3]] + expected[4:]
    assert widths == expected


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("size", [32, 64])
def test_forward_returns_one_logit_tensor_per_exit(arch: str, size: int) -> None:
    model = built(arch, size)
    with torch.no_grad():
        outputs = model(torch.randn(2, 3, size, size))
    assert len(outputs) == 7
    assert all(o.shape == (2, 10) for o in outputs)
    assert all(torch.isfinite(o).all() for o in outputs)


def test_mobilenet_paper_original_has_five_ics() -> None:
    model = create("mobilenet", num_classes=10, input_size=32, exits="paper-original")
    assert model.exit_positions == (2, 4, 6, 8, 11)
    assert [ic.in_features for ic in model.exits] == IC_IN_FEATURES[("mobilenet", 32)]


def test_architecture_details_are_faithful() -> None:
    vgg, res, wrn, mob = (built(a, 32) for a in ARCHS)
    assert all(
        isinstance(m, nn.Conv2d) and m.bias is not None for m in vgg.blocks.modules() if isinstance(m, nn.Conv2d)
    )
    # VGG tail: Flatten, Linear, ReLU, Dropout, Linear, Dropout, Linear (no ReLU between the last two)
    assert [type(m).__name__ for m in vgg.head] == [
        "Flatten",
        "Linear",
        "ReLU",
        "Dropout",
        "Linear",
        "Dropout",
        "Linear",
    ]
    assert [m.out_features for m in vgg.head if isinstance(m, nn.Linear)] == [512, 512, 10]
    tiny_vgg = built("vgg16bn", 64)
    assert [(m.in_features, m.out_features) for m in tiny_vgg.head if isinstance(m, nn.Linear)] == [
        (2048, 2048), (2048, 1024), (1024, 10)]  # fmt: skip
    convs = [m for m in wrn.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.bias is not None for c in convs)
    assert sum(isinstance(m, nn.Dropout) and m.p == 0.3 for m in wrn.modules()) == 15
    assert [m.momentum for m in wrn.head if isinstance(m, nn.BatchNorm2d)] == [0.1]
    assert all(c.bias is None for c in res.modules() if isinstance(c, nn.Conv2d))
    assert sum(isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) for m in res.blocks.modules()) == 2
    assert sum(isinstance(m, nn.Conv2d) and m.groups > 1 for m in mob.blocks.modules()) == 13
    # stems: ResNet/WRN stride 2 on 64x64 inputs, MobileNet stride 1 on both
    assert built("resnet56", 64).stem[0].stride == (2, 2) and res.stem[0].stride == (1, 1)
    assert built("wrn32_4", 64).stem.stride == (2, 2)
    assert built("mobilenet", 64).stem[0].stride == (1, 1)


def test_ic_linear_init_follows_the_original() -> None:
    vgg_ic = built("vgg16bn", 32).exits[4].linear
    assert torch.count_nonzero(vgg_ic.bias) == 0
    assert 0.008 < vgg_ic.weight.std().item() < 0.012
    wrn_ic = built("wrn32_4", 32).exits[0].linear
    assert torch.count_nonzero(wrn_ic.bias) == 0
    assert wrn_ic.weight.std().item() > 0.012  # PyTorch default, not N(0, 0.01)
    res_ic = built("resnet56", 32).exits[0].linear
    assert torch.count_nonzero(res_ic.bias) > 0


def test_resnet_ic_reads_the_post_relu_block_output() -> None:
    model = built("resnet56", 32)
    seen: list[torch.Tensor] = []
    handle = model.exits[0].register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    try:
        with torch.no_grad():
            model(torch.randn(2, 3, 32, 32))
    finally:
        handle.remove()
    assert seen[0].min().item() >= 0.0
    assert seen[0].max().item() > 0.0


@pytest.mark.parametrize("arch", ["resnet56", "mobilenet"])
def test_cnn_to_sdn_final_output_is_bit_identical(arch: str) -> None:
    torch.manual_seed(1)
    cnn = create(arch, num_classes=10, input_size=32, exits="none").eval()
    sdn = create(arch, num_classes=10, input_size=32, exits="paper").eval()
    assert cnn.num_exits == 1
    with torch.no_grad():  # make BN running stats non-trivial so a missed buffer would show
        for module in cnn.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    sdn.load_backbone_state(cnn.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(cnn(x)[-1], sdn(x)[-1])


@pytest.mark.parametrize("size", [32, 64])
def test_torchvision_resnet18_takes_exits(size: int) -> None:
    torchvision = pytest.importorskip("torchvision")
    net = torchvision.models.resnet18(num_classes=10)
    blocks = [*net.layer1, *net.layer2, *net.layer3, *net.layer4]
    parts = BackboneParts(
        stem=nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool),
        blocks=blocks,
        head=nn.Sequential(net.avgpool, nn.Flatten(), net.fc),
    )
    model = MultiExitNet(parts, num_classes=10, input_size=size, exit_positions=(1, 3, 5)).eval()
    with torch.no_grad():
        outputs = model(torch.randn(2, 3, size, size))
    assert [o.shape for o in outputs] == [torch.Size([2, 10])] * 4
    # 32px: layer1 8x8 (pool 2 -> 4x4), layer2 4x4 (k1), layer3 2x2 (flatten); 64px: 16x16, 8x8, 4x4
    expected = [64 * 16, 128 * 16, 256 * 4] if size == 32 else [64 * 16, 128 * 16, 256 * 16]
    assert [ic.in_features for ic in model.exits] == expected


def test_unknown_arch_and_bad_input_size_are_named() -> None:
    with pytest.raises(ValueError, match="unknown architecture 'resnet57'"):
        create("resnet57", num_classes=10, input_size=32)
    with pytest.raises(ValueError, match="48"):
        create("resnet56", num_classes=10, input_size=48)
    from sdn.models.vgg import build_vgg16bn

    with pytest.raises(ValueError, match="vgg16bn supports input sizes"):
        build_vgg16bn(num_classes=10, input_size=48)


def test_resolve_named_and_explicit_exits() -> None:
    spec = get_spec("mobilenet")
    kw = {"num_classes": 10, "input_size": 32}
    assert resolve_exits(spec, "paper", **kw) == (2, 4, 6, 8, 9, 11)
    assert resolve_exits(spec, "paper-original", **kw) == (2, 4, 6, 8, 11)
    assert resolve_exits(get_spec("resnet56"), "paper-original", **kw) == (3, 7, 11, 15, 19, 23)
    assert resolve_exits(spec, "none", **kw) == ()
    assert resolve_exits(spec, None, **kw) == ()
    assert resolve_exits(spec, [1, 5], **kw) == (1, 5)
    with pytest.raises(ValueError, match="unknown exits 'papr'"):
        resolve_exits(spec, "papr", **kw)
    with pytest.raises(ValueError, match=r"repeat block\(s\) \[5\]"):
        resolve_exits(spec, [1, 5, 5], **kw)
    with pytest.raises(ValueError, match="ints"):
        resolve_exits(spec, [1.5], **kw)
    with pytest.raises(ValueError, match="out of range"):
        create("mobilenet", num_classes=10, input_size=32, exits=[12])


def test_cost_placement_reproduces_the_paper_masks() -> None:
    spec = get_spec("resnet56")
    fractions = "cost:0.15,0.3,0.45,0.6,0.75,0.9"
    assert resolve_exits(spec, fractions, num_classes=10, input_size=32) == PAPER_EXITS["resnet56"]
    mobilenet = resolve_exits(get_spec("mobilenet"), fractions, num_classes=10, input_size=32)
    assert mobilenet == PAPER_EXITS["mobilenet"]
    assert resolve_exits(spec, "cost:0.5", num_classes=10, input_size=32) == (12,)  # 48.4% vs 52.1%


def test_cost_placement_errors() -> None:
    for text, pattern in [
        ("0.2,1.2", r"strictly between 0 and 1; got \[1.2\]"),
        ("0,0.5", r"got \[0.0\]"),
        ("0.3,0.3", r"repeat: \[0.3\]"),
        ("0.3,abc", "'abc' is not a number"),
        ("", "at least one fraction"),
    ]:
        with pytest.raises(ValueError, match=pattern):
            parse_fractions(text)
    assert parse_fractions("0.15, 0.3") == [0.15, 0.3]
    # block fractions 0.1, 0.2, 0.5, 1.0: 0.3 ties 0.2/0.5? no: 0.2 is closer; 0.45 -> 0.5
    assert closest_blocks([0.1, 0.2, 0.5, 1.0], [0.12, 0.3, 0.45]) == (0, 1, 2)
    with pytest.raises(ValueError, match=r"same block\(s\) \[1\]"):
        closest_blocks([0.1, 0.2, 0.5, 1.0], [0.19, 0.21])
    with pytest.raises(ValueError, match="same block"):
        create("resnet56", num_classes=10, input_size=32, exits="cost:0.2,0.201")
