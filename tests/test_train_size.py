"""What the default held-out split costs: ``cnn`` against ``cnn_full`` (every training image) on the test images both
hold (``sdn train-size``), its place in the runners' grid, the workflow's published mode and the paper report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from sdn import io
from sdn.analysis.train_size import compare, mcnemar_exact_p
from sdn.cli import main
from sdn.report import paper
from sdn.report.collect import collect
from sdn.reproduce.grid import Job, grid_jobs
from sdn.reproduce.runner import Runner, Settings

REPO = Path(__file__).resolve().parents[1]
TOY = REPO / "tests" / "data" / "reproduction-toy" / "reproduction"
CONFIG = REPO / "config" / "reproduction.yaml"


def _outputs(labels: np.ndarray, predictions: np.ndarray, indices: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """One exit's logits whose argmax is ``predictions`` (3 classes)."""
    logits = np.zeros((1, len(labels), 3), dtype=np.float32)
    logits[0, np.arange(len(labels)), predictions] = 5.0
    arrays = {"test_logits": logits, "test_labels": labels.astype(np.int64)}
    if indices is not None:
        arrays["test_indices"] = indices.astype(np.int64)
    return arrays


def test_the_two_cnns_are_compared_on_the_images_both_were_tested_on() -> None:
    labels = np.arange(10) % 3
    default_predictions = labels.copy()
    default_predictions[[0, 2, 4]] = (labels[[0, 2, 4]] + 1) % 3  # wrong on 0, 2, 4 (images the full run lacks: 0)
    shared = np.array([2, 3, 4, 5, 7, 9])  # the full run's test split: what its held-out split left of the test set
    full_predictions = labels[shared].copy()
    full_predictions[shared == 9] = (labels[9] + 1) % 3  # wrong on 9 only
    doc = compare(_outputs(labels, default_predictions), _outputs(labels[shared], full_predictions, shared),
                  train_images=(45000, 50000))  # fmt: skip
    assert doc["images"] == 6
    assert doc["default"]["top1"] == pytest.approx(100 * 4 / 6)  # wrong on 2 and 4 of the six
    assert doc["full"]["top1"] == pytest.approx(100 * 5 / 6)
    assert doc["gain_points"] == pytest.approx(100 / 6)
    assert doc["default"]["top1_own_split"] == pytest.approx(70.0) and doc["default"]["split_images"] == 10
    assert (doc["only_default_right"], doc["only_full_right"]) == (1, 2)
    assert doc["mcnemar_p"] == pytest.approx(1.0)  # 1 vs 2 discordant: no evidence either way
    assert doc["default"]["train_images"] == 45000 and doc["full"]["train_images"] == 50000


def test_mcnemar_exact_p_values() -> None:
    assert mcnemar_exact_p(0, 0) == 1.0
    assert mcnemar_exact_p(5, 0) == pytest.approx(2 / 32)
    assert mcnemar_exact_p(2, 10) == pytest.approx(2 * (1 + 12 + 66) / 4096)
    assert mcnemar_exact_p(10, 2) == mcnemar_exact_p(2, 10)
    assert mcnemar_exact_p(6, 6) == 1.0


def test_runs_that_cannot_be_matched_are_refused() -> None:
    labels = np.arange(10) % 3
    full = _outputs(labels[:4], labels[:4], np.arange(4))
    with pytest.raises(ValueError, match="have different labels"):
        compare(_outputs((labels + 1) % 3, labels), full)
    with pytest.raises(ValueError, match="no test_indices"):
        compare(_outputs(labels, labels), _outputs(labels, labels))
    with pytest.raises(ValueError, match="share no test image"):
        compare(_outputs(labels[:4], labels[:4], np.arange(4)), _outputs(labels[:4], labels[:4], np.arange(4) + 20))


def _publish_full_beside(root: Path) -> Path:
    """The toy grid plus a cnn_full beside s0's cnn: its test split the toy CNN's test images 10..59 (indices)."""
    shutil.copytree(TOY, root)
    run = root / "cifar10" / "resnet56" / "s0"
    shutil.copytree(run / "cnn", run / "cnn_full")
    with np.load(run / "cnn" / "outputs.npz") as data:
        arrays = {key: data[key] for key in data.files}
    arrays["test_logits"], arrays["test_labels"] = arrays["test_logits"][:, 10:], arrays["test_labels"][10:]
    arrays["test_indices"] = np.arange(10, 60, dtype=np.int64)
    io.save_npz(run / "cnn_full" / "outputs.npz", **arrays)
    meta = json.loads((run / "cnn_full" / "meta.json").read_text())
    (run / "cnn_full" / "meta.json").write_text(json.dumps({**meta, "train_size": meta["train_size"] + 100}))
    return run


def test_the_command_writes_the_summary_and_names_a_missing_run(tmp_path: Path) -> None:
    run = _publish_full_beside(tmp_path / "reproduction")
    out = tmp_path / "analysis"
    assert main(["train-size", "--cnn", str(run / "cnn"), "--full", str(run / "cnn_full"), "--out", str(out)]) == 0
    doc = io.read_json(out / "summary.json")
    assert doc["images"] == 50 and doc["gain_points"] == pytest.approx(0.0)  # the same logits on the same images
    assert doc["only_default_right"] == doc["only_full_right"] == 0
    assert doc["full"]["train_images"] == doc["default"]["train_images"] + 100
    toy_meta = io.read_json(run / "cnn" / "meta.json")
    toy_setup = f"{toy_meta['device']}, {'bf16' if toy_meta['amp'] else 'fp32'}"
    assert doc["default"]["training"] == doc["full"]["training"] == toy_setup
    assert (
        main(["train-size", "--cnn", str(run / "sdn"), "--full", str(tmp_path / "nowhere"), "--out", str(out)]) != 0
    )


def test_published_mode_compares_a_cnn_full_with_its_cnn(snakemake, tmp_path: Path) -> None:
    root = tmp_path / "reproduction"
    _publish_full_beside(root)
    done = snakemake(tmp_path, "-n", "--config", f"published={root}", configfile=CONFIG)
    assert done.returncode == 0, done.stderr + done.stdout
    assert done.stdout.count("rule train_size:") == 1  # s0 only: s1 has no cnn_full
    assert done.stdout.count("rule published_run:") == 6  # the natural variants only: cnn_full is read where it is
    assert "results-paper/cifar10/resnet56/s0/cnn_full/analysis/train_size/summary.json" in done.stdout


def test_the_paper_report_states_the_cost_or_that_it_is_not_measured(tmp_path: Path) -> None:
    results = tmp_path / "results"
    io.write_json(
        results / "cifar10" / "resnet56" / "s0" / "cnn" / "metrics.json", {"splits": {"test": {"top1": [90]}}}
    )
    assert "_not measured yet: no published run has a `cnn_full` beside its `cnn`_" in paper.paper_markdown(
        collect(results)
    )
    summary = {"split": "test", "images": 9000, "gain_points": 0.6, "mcnemar_p": 0.04,
               "default": {"top1": 90.0, "train_images": 45000},
               "full": {"top1": 90.6, "train_images": 50000}}  # fmt: skip
    io.write_json(results / "cifar10" / "resnet56" / "s0" / "cnn_full" / "analysis" / "train_size" / "summary.json",
                  summary)  # fmt: skip
    (row,) = paper.train_size_rows(collect(results))
    assert row.measure == "CNN test top-1, 45,000 -> 50,000 training images (%)"
    assert row.ours.startswith("90.00% -> 90.60% (+0.60 points on the 9,000 test images both were tested on")
    assert row.verdict == "the held-out images cost 0.60 points; the two networks differ on these images (McNemar)"
    assert "| cifar10 | resnet56 | CNN test top-1, 45,000 -> 50,000" in paper.paper_markdown(collect(results))


def test_the_report_names_a_difference_in_how_the_two_cnns_trained(tmp_path: Path) -> None:
    summary = {"split": "test", "images": 9000, "gain_points": 0.3, "mcnemar_p": 0.5,
               "default": {"top1": 90.0, "train_images": 45000, "training": "cuda, bf16"},
               "full": {"top1": 90.3, "train_images": 50000, "training": "cpu, fp32"}}  # fmt: skip
    file = tmp_path / "cifar10" / "mobilenet" / "s0" / "cnn_full" / "analysis" / "train_size" / "summary.json"
    io.write_json(file, summary)
    (row,) = paper.train_size_rows(collect(tmp_path))
    assert row.verdict.endswith(
        "; confounded: the two also trained differently (cuda, bf16 vs cpu, fp32), which this comparison cannot "
        "tell apart from the training set's size"
    )
    unrecorded = {"top1": 90.0, "train_images": 45000}
    for default in ({**unrecorded, "training": "cpu, fp32"}, {**unrecorded, "training": None}, unrecorded):
        io.write_json(file, {**summary, "default": default})  # alike, or not recorded for the default CNN
        (row,) = paper.train_size_rows(collect(tmp_path))
        assert "confounded" not in row.verdict


def test_cnn_full_trains_and_is_evaluated_on_every_training_image(fake_cifar_archive, tmp_path: Path) -> None:
    """The runners' cnn_full: the CNN recipe on a second prepared folder, every training image, its held-out split
    carved from the test set; its provenance names that option. The default folder is prepared as before."""
    assert [j.variant for j in grid_jobs(["mobilenet"], [0], ("cnn_full", "cnn"))] == ["cnn_full", "cnn"]
    archive = tmp_path / "c10.tar.gz"
    fake_cifar_archive(archive, train_per_class=10, test_per_class=4)  # 3 classes
    settings = Settings(out=tmp_path / "out", dataset="cifar10", archs=["mobilenet"], seeds=[0], work=tmp_path / "w",
                        archive=archive, device="cpu", variants=("cnn", "cnn_full"), prepare_args=["--holdout", "6"],
                        epochs={"cnn": 7, "ic_only": 1, "sdn": 1})  # fmt: skip
    runner = Runner(settings)
    (runner.work / "logs").mkdir()
    runner.prepare_data()
    sizes = {f: io.read_json(runner.work / f / "meta.json")["sizes"] for f in ("data", "data-full")}
    assert sizes == {
        "data": {"train": 24, "holdout": 6, "test": 12},
        "data-full": {"train": 30, "holdout": 6, "test": 6},
    }
    full = runner.command(Job("mobilenet", 0, "cnn_full"), "train")
    assert full[full.index("--data") + 1] == "data-full" and full[full.index("--recipe") + 1] == "cnn"
    evaluated = runner.command(Job("mobilenet", 0, "cnn_full"), "evaluate")
    assert evaluated[evaluated.index("--data") + 1] == "data-full"
    assert runner.prepare_args_of(Job("mobilenet", 0, "cnn_full")) == ["--holdout", "6", "--holdout-from", "test"]
    assert runner.prepare_args_of(Job("mobilenet", 0, "cnn")) == ["--holdout", "6"]
    again = Runner(settings)  # a later call prepares neither folder again
    again.prepare_data()
    assert "prepare_s" not in again.call


@pytest.mark.slow
def test_a_toy_cnn_full_is_published_with_its_test_positions_and_compared(fake_cifar_archive, tmp_path: Path) -> None:
    """A toy grid of cnn and cnn_full end to end on the CPU: both published, cnn_full's outputs say which test
    images it holds and its provenance how its data were prepared; `sdn train-size` compares the published pair."""
    from sdn.reproduce import ingest, publish

    archive = tmp_path / "c10.tar.gz"
    fake_cifar_archive(archive, train_per_class=40, test_per_class=20)  # 3 classes: 120 training, 60 test images
    settings = Settings(out=tmp_path / "out", dataset="cifar10", archs=["resnet56"], seeds=[0], work=tmp_path / "w",
                        archive=archive, device="cpu", jobs=1, budget_s=1200.0, variants=("cnn", "cnn_full"),
                        epochs={"cnn": 1, "ic_only": 1, "sdn": 1}, batch_size=32,
                        prepare_args=["--holdout", "12"])  # fmt: skip
    summary = Runner(settings).run()
    assert summary["complete"], summary["jobs"]
    assert summary["data_full"]["prepare_args"] == ["--holdout", "12", "--holdout-from", "test"]
    repo = tmp_path / "repo"
    ingest.ingest(settings.out, repo)
    publish.verify(repo / "reproduction")
    run = repo / "reproduction" / "cifar10" / "resnet56" / "s0"
    assert publish.read_provenance(run / "cnn_full")["prepare_args"] == ["--holdout", "12", "--holdout-from", "test"]
    assert io.read_json(run / "cnn_full" / "meta.json")["train_size"] == 120
    assert io.read_json(run / "cnn" / "meta.json")["train_size"] == 108
    with np.load(run / "cnn_full" / "outputs.npz") as data:
        positions = data["test_indices"]
    assert len(positions) == 48 and len(set(positions.tolist())) == 48 and positions.max() < 60
    out = tmp_path / "analysis"
    assert main(["train-size", "--cnn", str(run / "cnn"), "--full", str(run / "cnn_full"), "--out", str(out)]) == 0
    doc = io.read_json(out / "summary.json")
    assert doc["images"] == 48 and doc["default"]["split_images"] == 60
    assert (doc["default"]["train_images"], doc["full"]["train_images"]) == (108, 120)
