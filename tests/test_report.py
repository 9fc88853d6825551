"""`sdn report` on a small synthetic results tree written here: numbers land in summary.md and the tables."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sdn.cli import main
from sdn.commands.confusion import write_confusion
from sdn.commands.overthinking import write_overthinking
from sdn.report.collect import collect

# 2 ICs + final, 4 samples, 2 classes; labels [0, 1, 1, 0].
# IC1 preds [0, 1, 0, 1], IC2 [0, 1, 1, 1], final [0, 0, 1, 1]: final wrong on samples 1 and 3;
# sample 1 was right at IC1/IC2 (destructive), sample 3 is never right -> destructive share 1/2;
# samples 0, 1, 2 are right before the final head -> early-correct share 3/4.
LABELS = np.array([0, 1, 1, 0])
PREDS = np.array([[0, 1, 0, 1], [0, 1, 1, 1], [0, 0, 1, 1]])


def _logits() -> np.ndarray:
    logits = np.zeros((3, 4, 2), dtype=np.float32)
    for e in range(3):
        logits[e, np.arange(4), PREDS[e]] = [1.0, 2.0, 3.0, 0.5]
    return logits


def _json(path: Path, doc: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))


def make_tree(root: Path) -> Path:
    run = root / "digits" / "resnet56" / "s0"
    _json(run / "cnn" / "meta.json", {"git_commit": "abc1234", "recipe": {"kind": "cnn", "epochs": 10}})
    _json(run / "cnn" / "metrics.json", {"splits": {"test": {"top1": [90.0], "top5": [99.0]}}})
    ic = run / "ic_only"
    _json(ic / "metrics.json", {"splits": {"test": {"top1": [60.0, 75.0, 91.0], "top5": [90.0, 95.0, 99.5]}}})
    npz = ic / "outputs.npz"
    logits = _logits()
    np.savez(
        npz,
        test_logits=logits,
        test_labels=LABELS,
        holdout_logits=logits,
        holdout_labels=LABELS,
        exit_fraction=np.array([0.3, 0.6, 1.05]),
    )
    write_overthinking(npz, ic / "analysis" / "overthinking")
    write_confusion(npz, ic / "analysis" / "confusion")
    entry = {
        "status": "ok",
        "threshold": 0.9,
        "test_accuracy": 90.5,
        "test_cost_fraction": 0.45,
        "test_reduction_percent": 55.0,
    }
    _json(
        ic / "analysis" / "early_exit" / "summary.json",
        {
            "split_choose": "holdout",
            "final_test_accuracy": 91.0,
            "policies": {
                "confidence": {
                    "tolerance": entry,
                    "budget_0.25": {"status": "none", "reason": "none fits", "budget": 0.25},
                }
            },
        },
    )
    _json(
        ic / "analysis" / "calibration" / "summary.json",
        {"per_exit_ece": [0.1, 0.05, 0.02], "early_exit": {"ece": 0.03, "accuracy": 90.0}},
    )
    _json(run / "sdn" / "metrics.json", {"splits": {"test": {"top1": [70.0, 85.0, 92.0]}}})
    (run / "sdn" / "analysis" / "calibration").mkdir(parents=True)
    (run / "sdn" / "analysis" / "calibration" / "summary.json").write_text("{ broken")
    backdoor = run / "bd_ic_only" / "analysis" / "backdoor"  # where the workflow writes it; values in percent
    _json(
        backdoor / "summary.json",
        {
            "target": 5,
            "cnn": {"clean_accuracy": 90.0, "triggered_accuracy": 12.0, "attack_success": 85.0},
            "sdn_final": {"triggered_accuracy": 12.0},
            "early_exit": {
                "threshold": 0.8,
                "clean": {"accuracy": 88.0},
                "triggered": {"accuracy": 84.0, "attack_success": 5.0, "cost_fraction": 0.5},
            },
        },
    )
    for suffix in ("png", "pdf"):
        (backdoor / f"backdoor.{suffix}").write_bytes(b"figure")
    return root


def test_collect_reads_tree_and_records_problems(tmp_path) -> None:
    found = collect(make_tree(tmp_path / "results"))
    assert [k.slug for k in found.keys] == ["digits_resnet56_s0"]
    key = found.keys[0]
    assert found.get(key, "bd_cnn") is None
    assert found.analysis(key, "ic_only", "overthinking")["destructive_share_of_errors"] == pytest.approx(0.5)
    assert found.analysis(key, "sdn", "calibration") is None
    assert any("calibration" in p and "unreadable" in p for p in found.problems)


def test_report_fills_numbers_tables_and_figures(tmp_path) -> None:
    results = make_tree(tmp_path / "results")
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"datasets": ["digits"]}))
    out = results / "report"
    assert main(["report", "--results", str(results), "--out", str(out), "--config-json", str(config)]) == 0
    text = (out / "summary.md").read_text()
    assert "the CNN reaches 90.0% test top-1" in text
    assert "SDN (IC-only) reaches 60.0% at its first IC and 91.0% at the final head" in text
    assert "reaches 90.5% at 45.0% of the CNN's cost (a 55.0% reduction; threshold 0.900" in text
    assert "75.0% of test samples are already right at some IC" in text
    assert "50.0% of the final head's 2 errors are destructive" in text
    assert "AUROC, our addition" in text
    assert "12.0% on triggered test inputs" in text and "triggered accuracy is 84.0%" in text
    assert "abc1234" in text and "sha256" in text
    assert "**Short schedules.**" in text and "CNN of resnet56 on digits (seed 0): 10 of 100 epochs" in text
    assert "| SDN (IC-only) | 60.0 | 75.0 | 91.0 |" in text
    assert "| CNN | — | — | 90.0 |" in text
    assert "expected calibration error 0.020 at the final head and 0.030 for the early-exit answers" in text
    assert "unreadable" in text  # the broken calibration summary is listed, not fatal
    overthinking = pd.read_csv(out / "tables" / "overthinking.csv")
    assert overthinking.loc[0, "destructive_pct_of_errors"] == pytest.approx(50.0)
    assert overthinking.loc[0, "oracle_cost_pct"] == pytest.approx(100 * (0.3 + 0.3 + 0.6 + 1.05) / 4)
    accuracy = pd.read_csv(out / "tables" / "per_exit_accuracy.csv")
    assert len(accuracy) == 1 + 3 + 3
    status = pd.read_csv(out / "tables" / "status.csv").set_index("variant")
    assert status.loc["sdn", "early_exit"] == "not run" and status.loc["ic_only", "overthinking"] == "ok"
    assert status.loc["bd_cnn", "metrics"] == "not run" and status.loc["backdoor", "metrics"] == "ok"
    backdoor = pd.read_csv(out / "tables" / "backdoor.csv")
    assert backdoor.loc[0, "early_exit_triggered_accuracy"] == pytest.approx(84.0)
    assert (out / "tables" / "early_exit.md").read_text().startswith("| dataset |")
    for name in (
        "digits_resnet56_s0_per_exit_accuracy",
        "digits_resnet56_s0_ic_only_overthinking",
        "digits_resnet56_s0_ic_only_confusion_hist",
        "digits_resnet56_s0_bd_ic_only_backdoor",
    ):
        assert (out / "figures" / f"{name}.png").is_file() and (out / "figures" / f"{name}.pdf").is_file()
    assert json.loads((out / "config.json").read_text()) == {"datasets": ["digits"]}


def test_backdoor_summary_of_the_backdoored_sdn_is_found(tmp_path) -> None:
    run = tmp_path / "results" / "c10" / "vgg16" / "s1"
    _json(run / "bd_ic_only" / "analysis" / "backdoor" / "summary.json", {"cnn": {"triggered_accuracy": 12.0}})
    (run / "sdn").mkdir(parents=True)  # a variant folder with nothing in it yet
    found = collect(tmp_path / "results")
    key = found.keys[0]
    assert (key.dataset, key.arch, key.seed) == ("c10", "vgg16", 1)
    assert found.backdoor[key] == {"cnn": {"triggered_accuracy": 12.0}}
    assert found.get(key, "sdn").metrics is None and found.get(key, "sdn").top1() is None


def test_report_on_empty_and_missing_results(tmp_path, capsys) -> None:
    empty = tmp_path / "results"
    empty.mkdir()
    assert main(["report", "--results", str(empty)]) == 0
    text = (empty / "report" / "summary.md").read_text()
    assert "No results were found" in text and "config not given" in text
    config = empty / "report" / "config.json"  # the workflow writes the config inside the report folder
    config.write_text('{"seeds": [0]}')
    assert main(["report", "--results", str(empty), "--config-json", str(config)]) == 0
    assert config.read_text() == '{"seeds": [0]}'  # not rewritten
    assert "sha256" in (empty / "report" / "summary.md").read_text()
    assert main(["report", "--results", str(tmp_path / "nowhere")]) == 2
    assert "results folder not found" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("value", "key"),
    [
        (-5.0, "splits.test.top1[1]"),
        (1e308, "splits.test.top1[1]"),
        (float("nan"), "splits.test.top1[1]"),
        (float("inf"), "splits.test.top1[1]"),
    ],
)
def test_report_rejects_impossible_metrics_naming_file_and_key(tmp_path, capsys, value: float, key: str) -> None:
    results = make_tree(tmp_path / "results")
    metrics = results / "digits" / "resnet56" / "s0" / "ic_only" / "metrics.json"
    doc = json.loads(metrics.read_text())
    doc["splits"]["test"]["top1"][1] = value
    metrics.write_text(json.dumps(doc))  # json writes NaN / Infinity literals, as a damaged file may hold
    assert main(["report", "--results", str(results)]) == 2
    err = capsys.readouterr().err
    assert str(metrics) in err and key in err and "rerun" in err
    assert not (results / "report" / "summary.md").exists()  # no report with impossible numbers


def test_metrics_check_allows_nulls_and_strings(tmp_path) -> None:
    from sdn.report.collect import check_metrics

    check_metrics({"checkpoint": "m.pt", "splits": {"test": {"top1": [0, 100.0], "top5": [None, 100]}}}, tmp_path)


def test_analysis_figures_are_titled_with_their_run(tmp_path, monkeypatch) -> None:
    # The confusion figure once took its last panel's axis name as its title when a CNN was compared.
    import sdn.report.plots

    titles: dict[str, str | None] = {}
    monkeypatch.setattr(sdn.report.plots, "savefig", lambda fig, path, label=None: titles.update({path.name: label}))
    run = tmp_path / "ic_only"
    _json(run / "meta.json", {"dataset": "digits", "arch": "resnet56", "variant": "ic_only", "seed": 0})
    npz = run / "outputs.npz"
    arrays = {"test_logits": _logits(), "test_labels": LABELS, "holdout_logits": _logits(), "holdout_labels": LABELS}
    np.savez(npz, exit_fraction=np.array([0.3, 0.6, 1.05]), **arrays)
    write_confusion(npz, tmp_path / "confusion", cnn_outputs=npz)
    write_overthinking(npz, tmp_path / "overthinking")
    assert titles == {
        "confusion_hist": "digits · resnet56 · SDN (IC-only) · seed 0",
        "overthinking": "digits · resnet56 · SDN (IC-only) · seed 0",
    }
