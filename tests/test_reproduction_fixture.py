"""The toy published grid in tests/data/reproduction-toy/ (made by scripts/gpu-reproduce.sh at toy size from a
synthetic archive; see its README): the layout and schemas a published grid has, readable by the analyses."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from sdn.analysis import early_exit
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
