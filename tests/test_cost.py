"""Cost accounting in the paper's convention (spec §1.5) and the `sdn profile` command."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from sdn.cli import main
from sdn.commands.profile import profile_arch
from sdn.models import BackboneParts, MultiExitNet, create
from sdn.models.cost import CostRecord, module_ops, profile_model

TARGETS = (0.15, 0.30, 0.45, 0.60, 0.75, 0.90)
# Paper placement: each IC's cumulative fraction (ICs included) lies within this of its nominal target.
FRACTION_TOLERANCE = 0.06

_CACHE: dict[str, MultiExitNet] = {}


def cifar_model(arch: str) -> MultiExitNet:
    if arch not in _CACHE:
        torch.manual_seed(0)
        _CACHE[arch] = create(arch, num_classes=10, input_size=32, exits="paper")
    return _CACHE[arch]


def ops_of(module: nn.Module, x: torch.Tensor, convention: str = "paper") -> int:
    y = module(x)
    return module_ops(module, (x,), y, convention)


def test_module_ops_match_the_hand_counts() -> None:
    x = torch.zeros(1, 2, 5, 5)
    # 4 x 5 x 5 outputs, each 18 muls + 17 adds + 1 bias
    assert ops_of(nn.Conv2d(2, 4, 3, padding=1), x) == 100 * 36
    assert ops_of(nn.Conv2d(2, 4, 3, padding=1, bias=False), x) == 100 * 35
    depthwise = nn.Conv2d(2, 2, 3, padding=1, groups=2, bias=False)
    assert ops_of(depthwise, x, "exact") == 50 * 17
    assert ops_of(depthwise, x, "paper") == 50 * 17 * 2  # the original profiler's x groups
    assert ops_of(nn.BatchNorm2d(2).eval(), x) == 2 * 50
    assert ops_of(nn.ReLU(), x) == 50
    assert ops_of(nn.MaxPool2d(2), torch.zeros(1, 2, 4, 4)) == 8 * 3
    assert ops_of(nn.AvgPool2d(2), torch.zeros(1, 2, 4, 4)) == 8 * 4
    assert ops_of(nn.Linear(6, 3), torch.zeros(1, 6)) == 3 * 11
    assert ops_of(nn.Dropout(0.5).eval(), x) == 0
    assert ops_of(nn.Flatten(), x) == 0


def _tiny_net() -> MultiExitNet:
    parts = BackboneParts(
        stem=nn.Identity(),
        blocks=[
            nn.Sequential(nn.Conv2d(1, 2, 1, bias=False), nn.ReLU()),  # 4x4: 2*16*(2-1) + 32 = 64 ops, 32 MACs
            nn.Sequential(nn.Conv2d(2, 2, 1, bias=False), nn.ReLU()),  # 2*16*(4-1) + 32 = 128 ops, 64 MACs
        ],
        head=nn.Sequential(nn.Flatten(), nn.Linear(32, 3)),  # 3*(64-1) = 189 ops, 96 MACs
    )
    return MultiExitNet(parts, num_classes=3, input_size=4, exit_positions=(0,), in_channels=1)


def test_profile_model_on_a_hand_counted_net() -> None:
    model = _tiny_net()
    cost = profile_model(model, 4, in_channels=1)
    assert cost.cnn == CostRecord(params=2 + 4 + 99, macs=32 + 64 + 96, ops=64 + 128 + 189)
    # IC after block 0: 2x4x4 map, mixed pool k1 (max 0 + avg 1 per output), Linear(32, 3)
    ic_ops = 32 * 0 + 32 * 1 + 3 * 63
    ic_params = 1 + 32 * 3 + 3
    first, final = cost.exits
    assert (first.index, first.block, final.index, final.block) == (0, 0, 1, None)
    assert (first.params, first.macs, first.ops) == (2 + ic_params, 32 + 96, 64 + ic_ops)
    assert (final.params, final.ops) == (cost.cnn.params + ic_params, cost.cnn.ops + ic_ops)
    assert final.params == sum(p.numel() for p in model.parameters())
    assert first.fraction == pytest.approx((64 + ic_ops) / 381)
    assert [b.ops for b in cost.blocks] == [64, 192]


def test_profile_leaves_the_model_untouched() -> None:
    model = cifar_model("resnet56")
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    profile_model(model, 32)
    profile_model(model, 32)  # a second profile of the same object works (the original's failed)
    assert model.training
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_resnet56_cifar_matches_the_known_cost() -> None:
    cost = profile_model(cifar_model("resnet56"), 32)
    assert cost.cnn.ops == pytest.approx(0.2526e9, rel=0.01)
    assert cost.cnn.macs == pytest.approx(125.7e6, rel=0.01)
    assert cost.cnn.params == pytest.approx(0.856e6, rel=0.01)


@pytest.mark.parametrize("arch", ["vgg16bn", "resnet56", "wrn32_4", "mobilenet"])
def test_paper_placement_costs_increase_and_sit_near_the_targets(arch: str) -> None:
    cost = profile_model(cifar_model(arch), 32)
    ops = [e.ops for e in cost.exits]
    params = [e.params for e in cost.exits]
    assert all(a < b for a, b in zip(ops, ops[1:], strict=False))
    assert all(a < b for a, b in zip(params, params[1:], strict=False))
    fractions = [e.fraction for e in cost.exits]
    assert fractions[:-1] == pytest.approx(TARGETS, abs=FRACTION_TOLERANCE)
    assert 1.0 < fractions[-1] < 1.02  # the final exit pays for every IC too


def test_profile_cli_json_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profile", "--arch", "mobilenet", "--dataset", "cifar100", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert set(doc) == {"arch", "dataset", "cnn", "exits"}
    assert (doc["arch"], doc["dataset"]) == ("mobilenet", "cifar100")
    assert set(doc["cnn"]) == {"params", "macs", "ops"}
    assert len(doc["exits"]) == 7
    assert all(set(e) == {"index", "params", "macs", "ops", "fraction"} for e in doc["exits"])
    assert [e["index"] for e in doc["exits"]] == list(range(7))
    assert doc["cnn"]["params"] == pytest.approx(3.31e6, rel=0.01)  # 100-way head
    assert doc == profile_arch("mobilenet", "cifar100")


def test_profile_cli_table_and_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profile", "--arch", "resnet56", "--dataset", "tinyimagenet", "--exits", "3,7"]) == 0
    out = capsys.readouterr().out
    assert "resnet56 on tinyimagenet" in out and "final" in out
    assert len(out.strip().splitlines()) == 3 + 3
    assert main(["profile", "--arch", "resnet56", "--dataset", "mnist"]) == 2
    assert "mnist" in capsys.readouterr().err
    assert main(["profile", "--arch", "nonet", "--dataset", "cifar10"]) == 2
    assert "unknown architecture 'nonet'" in capsys.readouterr().err
