"""The toy published grid in tests/data/reproduction-toy/ (made by scripts/gpu-reproduce.sh at toy size from a
synthetic archive; see its README): the layout and schemas a published grid has, readable by the analyses."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from sdn.analysis import early_exit
from sdn.analysis.arrays import softmax
from sdn.outputs import load as load_outputs
from sdn.reproduce import publish

FIXTURE = Path(__file__).resolve().parent / "data" / "reproduction-toy" / "reproduction"
RUNS = sorted(p.parent for p in FIXTURE.glob("*/*/s*/*/outputs.npz"))


def test_fixture_matches_its_manifest_and_has_every_run() -> None:
    publish.verify(FIXTURE)
    names = {p.relative_to(FIXTURE).as_posix() for p in RUNS}
    assert names == {f"cifar10/resnet56/s{s}/{v}" for s in (0, 1) for v in ("cnn", "ic_only", "sdn")}
    grid = json.loads((FIXTURE / "cifar10" / "grid-cpu.json").read_text())
    assert grid["complete"] and grid["jobs_done"] == 6


def test_every_published_run_has_the_workflow_files_and_provenance() -> None:
    for run in RUNS:
        assert {p.name for p in run.iterdir()} == {*publish.RUN_FILES, "outputs.npz", "provenance.json"}
        provenance = publish.read_provenance(run)
        assert len(provenance["checkpoint"]["sha256"]) == 64 and provenance["wall_s"]["train"] > 0
        outputs = load_outputs(run / "outputs.npz")
        exits = 1 if run.name == "cnn" else 7
        for split in ("holdout", "test"):
            logits, labels = outputs[f"{split}_logits"], outputs[f"{split}_labels"]
            assert logits.dtype == np.float32 and logits.shape[:2] == (exits, labels.shape[0])
        assert outputs["exit_fraction"].shape == (exits,)
        metrics = json.loads((run / "metrics.json").read_text())
        assert len(metrics["splits"]["test"]["top1"]) == exits


def test_the_early_exit_analysis_runs_on_a_published_sdn() -> None:
    outputs = load_outputs(FIXTURE / "cifar10" / "resnet56" / "s0" / "sdn" / "outputs.npz")
    summary = early_exit.analyze(outputs, policies=("confidence",))["summary"]
    assert summary["num_exits"] == 7 and "tolerance" in summary["policies"]["confidence"]


def test_the_exit_time_model_reduces_to_the_op_count_without_overheads_and_runs_on_a_published_sdn() -> None:
    """docs/deploy-latency/exit_time_model.py: with no IC cost and segment 0 at its ops share, its time saving is
    the ops-predicted saving (for any subset of the ICs); its command line runs on a published run."""
    import importlib.util
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "docs" / "deploy-latency" / "exit_time_model.py"
    spec = importlib.util.spec_from_file_location("exit_time_model", script)
    model = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(model)
    sdn_run = FIXTURE / "cifar10" / "resnet56" / "s0" / "sdn" / "outputs.npz"
    outputs = load_outputs(sdn_run)
    cost = np.asarray(outputs["exit_fraction"], dtype=np.float64)
    probs = softmax(outputs["test_logits"])
    labels = np.asarray(outputs["test_labels"])
    times = model.segment_time(cost, seg0_time=float(cost[0]))
    np.testing.assert_allclose(times.sum(), cost[-1])
    for ics in ((0, 1, 2, 3, 4, 5), (1, 3)):
        for threshold in (0.0, 0.3, 0.9):
            _, ops, time = model.modelled(probs, labels, cost, times, ics, threshold, ic_time=0.0)
            assert abs(time - ops) < 1e-9
            _, _, slower = model.modelled(probs, labels, cost, times, ics, threshold, ic_time=0.01)
            assert slower < time  # every image passes at least one IC of the subset, or reaches the end
    command = [sys.executable, str(script), str(sdn_run), "--thresholds", "0.5"]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("best subset on held-out") == 3, done.stdout
