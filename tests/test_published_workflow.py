"""Published mode: the workflow takes published runs (config key `published`) as its trained models' outputs."""

from __future__ import annotations

import json
import re
import shutil
import time
from collections import Counter
from pathlib import Path

import pytest

from sdn.reproduce.published import find_runs, main

REPO = Path(__file__).resolve().parents[1]
TOY = REPO / "tests" / "data" / "reproduction-toy" / "reproduction"
CONFIG = REPO / "config" / "reproduction.yaml"


def _rules(output: str) -> Counter[str]:
    return Counter(re.findall(r"^(?:local)?rule (\w+):", output, flags=re.M))


def test_find_runs_lists_the_toy_grid_and_nothing_in_an_empty_folder(tmp_path: Path, capsys) -> None:
    runs = find_runs(TOY)
    assert set(runs) == {("cifar10", "resnet56", "0"), ("cifar10", "resnet56", "1")}
    assert all(variants == {"cnn", "ic_only", "sdn"} for variants in runs.values())
    assert find_runs(tmp_path / "absent") == {}
    assert main([str(tmp_path / "absent")]) == 1
    message = capsys.readouterr().err
    assert "holds no published runs" in message and "scripts/gpu-reproduce.sh" in message
    assert "scripts/cpu-reproduce.sh" in message and "In progress" not in message


def test_without_runs_the_message_says_how_far_a_grid_in_progress_is(tmp_path: Path, capsys) -> None:
    grid = {"jobs": {"resnet56/s0/cnn": {"status": "partial", "epochs_done": 23, "epochs": 100},
                     "resnet56/s0/ic_only": {"status": "pending", "epochs_done": 0, "epochs": 25}}}  # fmt: skip
    (tmp_path / "cifar10").mkdir()
    (tmp_path / "cifar10" / "grid-cpu.json").write_text(json.dumps(grid))
    (tmp_path / "cifar100").mkdir()
    (tmp_path / "cifar100" / "grid-cuda.json").write_text("{not json")
    assert main([str(tmp_path)]) == 1
    message = capsys.readouterr().err
    assert "In progress: cifar10 on cpu: resnet56/s0/cnn partial, 23/100 epochs; " in message
    assert "cifar10 on cpu: resnet56/s0/ic_only pending, 0/25 epochs" in message
    assert "grid-cuda.json: unreadable" in message


def test_published_mode_plans_copies_and_analyses_only(snakemake, tmp_path: Path) -> None:
    done = snakemake(tmp_path, "-n", "--config", f"published={TOY}", configfile=CONFIG)
    assert done.returncode == 0, done.stderr + done.stdout
    rules = _rules(done.stdout)
    assert rules["published_run"] == 6  # 2 seeds x (cnn, ic_only, sdn)
    assert rules["analyses"] == 4  # one job runs the four analyses of an SDN (`sdn batch`): 2 seeds x 2 variants
    assert not {"early_exit", "overthinking", "confusion", "calibration"} & set(rules)
    assert not {"train", "evaluate", "gradcam", "prepare_data", "backdoor_analysis"} & set(rules)


def test_a_cnn_published_alone_is_reported_and_an_sdn_without_its_cnn_is_left_out(snakemake, tmp_path: Path) -> None:
    # A grid publishes each job as it completes: the CNN stands alone until its IC-only and SDN runs follow.
    published = tmp_path / "reproduction" / "cifar10" / "resnet56"
    shutil.copytree(TOY / "cifar10" / "resnet56" / "s0" / "cnn", published / "s0" / "cnn")
    shutil.copytree(TOY / "cifar10" / "resnet56" / "s1" / "ic_only", published / "s1" / "ic_only")
    done = snakemake(tmp_path, "-n", "--config", f"published={published.parents[1]}", configfile=CONFIG)
    assert done.returncode == 0, done.stderr + done.stdout
    rules = _rules(done.stdout)
    assert rules["published_run"] == 1 and rules["report"] == 1  # the CNN of s0 only
    assert not rules["analyses"]  # no SDN beside it; s1's IC-only SDN has no CNN to compare with
    log = done.stderr + done.stdout
    assert "resnet56/s0 lacks ['ic_only', 'sdn']: reported with ['cnn'] only" in log
    assert "resnet56/s1 lacks ['cnn', 'sdn']: left out (['ic_only'] need the CNN's outputs)" in log


def _publish_backdoor_pair(root: Path, target: int) -> None:
    """The toy grid plus a backdoor pair (toy runs standing in for bd_cnn and bd_ic_only) whose provenance records
    a poisoning with ``target`` and config/reproduction.yaml's other settings."""
    shutil.copytree(TOY, root)
    pair = root / "cifar10" / "vgg16bn" / "s0"
    for variant, toy in (("bd_cnn", "cnn"), ("bd_ic_only", "ic_only")):
        shutil.copytree(TOY / "cifar10" / "resnet56" / "s0" / toy, pair / variant)
        provenance = json.loads((pair / variant / "provenance.json").read_text())
        provenance["backdoor"] = {"target": target, "rate": 0.1, "trigger": {"size": 5, "x": 26, "y": 26}}
        (pair / variant / "provenance.json").write_text(json.dumps(provenance))


def test_a_published_backdoor_pair_is_analysed_with_the_target_it_was_poisoned_on(snakemake, tmp_path: Path) -> None:
    _publish_backdoor_pair(tmp_path / "agrees", target=5)  # config/reproduction.yaml's target
    done = snakemake(tmp_path, "-n", "--config", f"published={tmp_path / 'agrees'}", configfile=CONFIG)
    assert done.returncode == 0, done.stderr + done.stdout
    assert _rules(done.stdout)["backdoor_analysis"] == 1
    _publish_backdoor_pair(tmp_path / "differs", target=3)
    done = snakemake(tmp_path, "-n", "--config", f"published={tmp_path / 'differs'}", configfile=CONFIG)
    assert done.returncode != 0
    message = done.stderr + done.stdout
    assert "config key backdoor differs from the poisoning of the published backdoor run" in message
    assert "vgg16bn/s0/bd_cnn" in message and "target: config 5, published 3" in message


def test_backdoor_config_mismatches_name_each_key_and_accept_runs_without_a_record(tmp_path: Path) -> None:
    from sdn.reproduce.published import backdoor_config_mismatches

    config = {"target": 5, "rate": 0.1, "trigger_size": 5, "trigger_x": 26, "trigger_y": 26, "seed": 0}
    recorded = {"target": 5, "rate": 0.05, "trigger": {"size": 3, "x": 26, "y": 26}}
    (tmp_path / "provenance.json").write_text(json.dumps({"backdoor": recorded}))
    assert backdoor_config_mismatches(tmp_path, config) == [
        "rate: config 0.1, published 0.05",
        "trigger_size: config 5, published 3",
    ]
    (tmp_path / "provenance.json").write_text(json.dumps({"code": {}}))  # published before poisoning was recorded
    assert backdoor_config_mismatches(tmp_path, config) == []
    (tmp_path / "provenance.json").write_text("{not json")
    with pytest.raises(ValueError, match="provenance.json: cannot read"):
        backdoor_config_mismatches(tmp_path, config)


def test_published_mode_without_runs_says_how_to_get_them(snakemake, tmp_path: Path) -> None:
    done = snakemake(tmp_path, "-n", "--config", f"published={tmp_path / 'reproduction'}", configfile=CONFIG)
    assert done.returncode != 0
    assert "holds no published runs" in done.stderr + done.stdout
    assert "scripts/gpu-reproduce.sh" in done.stderr + done.stdout


@pytest.mark.slow  # about 2 minutes on 2 shared cores
def test_published_toy_grid_end_to_end(snakemake, tmp_path: Path) -> None:
    started = time.monotonic()
    done = snakemake(tmp_path, "--cores", "2", "--config", f"published={TOY}", configfile=CONFIG, timeout=1200)
    assert done.returncode == 0, done.stderr[-6000:]
    print(f"published toy grid: {time.monotonic() - started:.0f} s")
    results = tmp_path / "results-paper"
    run = results / "cifar10" / "resnet56" / "s1" / "sdn"
    assert (run / "outputs.npz").read_bytes() == (
        TOY / "cifar10" / "resnet56" / "s1" / "sdn" / "outputs.npz"
    ).read_bytes()
    assert not (run / "model.pt").exists()
    summary = (results / "report" / "summary.md").read_text()
    assert "Paper vs ours" in summary and "| cifar10 | resnet56 | SDN (IC-only) |" in summary
    assert (results / "report" / "tables" / "early_exit.csv").is_file()
    for variant in ("ic_only", "sdn"):
        for analysis in ("early_exit", "overthinking", "confusion", "calibration"):
            assert (
                results / "cifar10" / "resnet56" / "s0" / variant / "analysis" / analysis / "summary.json"
            ).is_file()
