"""The IC head option: the paper's mixed pooling to about 4x4, or global average pooling (``ic_head: gap``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from sdn.checkpoint import load_checkpoint
from sdn.models import create
from sdn.models.cost import profile_model
from sdn.models.exits import InternalClassifier, MixedPool


def test_a_gap_head_pools_each_channel_to_one_value() -> None:
    head = InternalClassifier(8, 16, 16, 5, head="gap").eval()
    assert isinstance(head.pool, nn.AdaptiveAvgPool2d) and head.linear.in_features == 8
    x = torch.randn(3, 8, 16, 16)
    expected = head.linear(x.mean(dim=(2, 3)))
    torch.testing.assert_close(head(x), expected)
    paper = InternalClassifier(8, 16, 16, 5)
    assert isinstance(paper.pool, MixedPool) and paper.linear.in_features == 8 * 4 * 4


def test_an_unknown_head_is_named() -> None:
    with pytest.raises(ValueError, match=r"unknown IC head 'max'; allowed: paper, gap"):
        InternalClassifier(8, 16, 16, 5, head="max")  # type: ignore[arg-type]


def test_gap_heads_cost_less_and_leave_the_backbone_alone() -> None:
    paper = create("resnet56", num_classes=10, input_size=32)
    gap = create("resnet56", num_classes=10, input_size=32, ic_head="gap")
    assert gap.exit_positions == paper.exit_positions
    backbone = {k: v.shape for k, v in paper.state_dict().items() if not k.startswith("exits.")}
    assert backbone == {k: v.shape for k, v in gap.state_dict().items() if not k.startswith("exits.")}
    paper_cost, gap_cost = profile_model(paper, 32), profile_model(gap, 32)
    for p, g in zip(paper_cost.exits, gap_cost.exits, strict=True):
        assert g.fraction < p.fraction  # reaching each exit costs less: every IC on the way is cheaper


def test_a_trained_gap_sdn_reloads_with_its_heads_and_resumes_only_as_gap(tiny, tmp_path: Path) -> None:
    data = tiny.prepared(tmp_path / "data")
    recipe = tiny.recipe("sdn", epochs=1, milestones=())
    checkpoint = tiny.train(data, tmp_path / "run", recipe=recipe, ic_head="gap")
    model, meta = load_checkpoint(checkpoint)  # strict: the paper's heads would not load these weights
    assert meta["ic_head"] == "gap"
    assert all(isinstance(head.pool, nn.AdaptiveAvgPool2d) for head in model.exits)

    longer, cut = tiny.recipe("sdn", epochs=2, milestones=()), tmp_path / "cut"
    with pytest.raises(_Stop):  # a gap SDN's training cut after its first epoch: last.pt stays
        tiny.train(data, cut, recipe=longer, ic_head="gap", on_epoch=_stop_after_first)
    assert (cut / "last.pt").is_file()
    with pytest.raises(ValueError, match=r"ic_head='gap', but this run has ic_head='paper'"):
        tiny.train(data, cut, recipe=longer)


class _Stop(Exception):
    pass


def _stop_after_first(epoch: int, metrics: dict[str, float]) -> None:
    raise _Stop


def test_the_workflow_passes_the_head_to_the_recipes_with_ics(snakemake, repo: Path, tmp_path: Path) -> None:
    import re

    config = repo / "config" / "config.yaml"
    done = snakemake(tmp_path, "-n", "--printshellcmds", "--config", "ic_head=gap", configfile=config)
    assert done.returncode == 0, done.stderr[-3000:]
    commands = re.findall(r"sdn train [^\n]*", done.stdout)
    assert commands
    for command in commands:
        recipe = re.search(r"--recipe (\w+)", command).group(1)
        assert ("--ic-head gap" in command) == (recipe != "cnn"), command


def test_the_report_lists_a_gap_head_run_as_not_the_papers() -> None:
    from sdn.config import paper_recipe
    from sdn.report.paper import recipe_deviations

    meta = {"recipe": paper_recipe("ic_only", "resnet56").to_dict(), "variant": "ic_only", "arch": "resnet56"}
    assert recipe_deviations(meta) == []
    assert recipe_deviations({**meta, "ic_head": "gap"}) == [("IC head", "gap", "paper")]


@pytest.mark.slow
def test_the_head_comparison_script_trains_evaluates_and_summarises_a_head(repo: Path, tmp_path: Path) -> None:
    """docs/deploy-latency/ic_head_accuracy.py at toy size: one gap head on a one-epoch MobileNet CNN; a second call
    reuses the head's outputs instead of training it again."""
    import json
    import subprocess
    import sys

    def sdn(*args: str) -> None:
        subprocess.run([sys.executable, "-m", "sdn", *args], check=True, capture_output=True)

    data, cnn = tmp_path / "data", tmp_path / "cnn"
    sdn("prepare-data", "--dataset", "synthetic", "--out", str(data), "--num-classes", "3", "--train-size", "96",
        "--test-size", "48", "--holdout", "24", "--input-size", "32")  # fmt: skip
    sdn("train", "--recipe", "cnn", "--arch", "mobilenet", "--data", str(data), "--out", str(cnn), "--epochs", "1",
        "--batch-size", "32", "--device", "cpu")  # fmt: skip
    script = repo / "docs" / "deploy-latency" / "ic_head_accuracy.py"
    out = tmp_path / "heads.json"
    cnn_model = str(cnn / "model.pt")
    base = [sys.executable, str(script), "--arch", "mobilenet", "--data", str(data), "--out", str(out)]
    command = [*base, "--cnn", cnn_model, "--work", str(tmp_path / "work"), "--heads", "gap",
               "--train-args=--epochs 1 --batch-size 32"]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True)
    report = json.loads(out.read_text())
    gap = report["heads"]["gap"]
    assert set(report["heads"]) == {"gap"} and gap["ic_head"] == "gap"
    assert len(gap["test_top1_per_exit"]) == len(gap["exit_cost_fraction"]) == len(gap["params_to_exit"]) == 7
    assert gap["exit_cost_fraction"] == sorted(gap["exit_cost_fraction"])
    model = tmp_path / "work" / "gap" / "model.pt"
    trained_at = model.stat().st_mtime_ns
    second = subprocess.run(command, check=True, capture_output=True, text=True)
    assert model.stat().st_mtime_ns == trained_at and "sdn train" not in second.stdout
    assert json.loads(out.read_text())["heads"]["gap"]["test_top1_per_exit"] == gap["test_top1_per_exit"]
    missing = [*base, "--cnn", str(tmp_path / "no.pt"), "--work", str(tmp_path / "w")]
    refused = subprocess.run(missing, capture_output=True, text=True)
    assert refused.returncode == 2 and "--cnn" in refused.stderr and "does not exist" in refused.stderr
