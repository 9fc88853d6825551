"""config/byo-example.yaml end to end: torchvision's ResNet-18 on a small generated image folder, report included."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _write_images(out: Path) -> None:
    runpy.run_path(str(REPO / "scripts" / "make_byo_images.py"))["write"](out)


@pytest.mark.slow
def test_byo_example_workflow_end_to_end(snakemake, tmp_path: Path) -> None:
    pytest.importorskip("torchvision")
    _write_images(tmp_path / "data" / "byo-example")
    config = REPO / "config" / "byo-example.yaml"
    done = snakemake(tmp_path, "--profile", str(REPO / "workflow/profiles/default"), configfile=config, timeout=1800)
    assert done.returncode == 0, done.stderr[-6000:]
    results = tmp_path / "results"
    assert len((results / "report" / "summary.md").read_text()) > 500
    run = results / "shapes" / "torchvision.resnet18" / "s0"
    for variant in ("ic_only", "sdn"):
        for name in (
            "early_exit/accuracy_vs_cost.png",
            "overthinking/overthinking.png",
            "calibration/reliability.png",
        ):
            assert (run / variant / "analysis" / name).stat().st_size > 2000, name
    assert list((run / "ic_only" / "analysis").rglob("gradcam*")), "no Grad-CAM output"


@pytest.mark.slow
def test_byo_example_plans_the_whole_dag(snakemake, tmp_path: Path) -> None:
    """A dry run: the example names a torchvision network and an image folder; with weights: the IC-only SDN
    needs no CNN parent."""
    pytest.importorskip("torchvision")
    _write_images(tmp_path / "data" / "byo-example")
    config = REPO / "config" / "byo-example.yaml"
    done = snakemake(tmp_path, "-n", "--cores", "1", configfile=config)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "results/shapes/torchvision.resnet18/s0/ic_only/model.pt" in done.stdout
    weights = tmp_path / "pretrained.pth"
    custom = tmp_path / "byo.yaml"
    custom.write_text(config.read_text().replace("weights: null", f"weights: {{torchvision.resnet18: {weights}}}"))
    done = snakemake(tmp_path, "-n", "-p", "--cores", "1", "results/shapes/torchvision.resnet18/s0/ic_only/model.pt",
                     configfile=custom)  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    assert f"--weights {weights}" in done.stdout and "--parent" not in done.stdout
    assert "s0/cnn/model.pt" not in done.stdout
