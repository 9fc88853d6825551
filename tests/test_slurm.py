"""The SLURM profile for real: a one-node SLURM on localhost runs a small configuration of the workflow."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]

SCRIPTS = REPO / "scripts" / "slurm-localhost"


def _why_no_slurm() -> str | None:
    if os.environ.get("SDN_SKIP_SLURM"):
        return "SDN_SKIP_SLURM is set"
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "starting a local SLURM needs root (apt-get, munge and slurm daemons)"
    if shutil.which("sbatch") is None and shutil.which("apt-get") is None:
        return "neither SLURM (sbatch) nor apt-get to install it is available"
    return None


@pytest.fixture(scope="module")
def slurm_cluster():
    reason = _why_no_slurm()
    if reason:
        pytest.skip(reason)
    started = subprocess.run(["bash", str(SCRIPTS / "start.sh")], capture_output=True, text=True, timeout=900)
    if started.returncode != 0:
        pytest.skip(f"could not start a local SLURM (no network for apt?): {started.stderr[-1500:]}")
    yield
    subprocess.run(["bash", str(SCRIPTS / "stop.sh")], capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_small_workflow_runs_through_the_slurm_profile(snakemake, slurm_cluster, tmp_path: Path) -> None:
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config.update(archs=["mobilenet"], backdoor={"enabled": False})
    config["datasets"]["digits"].update(max_train=400, max_test=200)
    config["recipes"] = {kind: {"epochs": 1} for kind in ("cnn", "ic_only", "sdn")}
    configfile = tmp_path / "slurm.yaml"
    configfile.write_text(yaml.safe_dump(config))
    target = "results/digits/mobilenet/s0/ic_only/analysis/early_exit/summary.json"
    done = snakemake(
        tmp_path,
        target,
        "--profile",
        str(REPO / "workflow" / "profiles" / "slurm"),
        "--slurm-init-seconds-before-status-checks",
        "1",
        "--default-resources",
        "slurm_partition=debug",
        "mem_mb=1500",
        "runtime=30",
        "--jobs",
        "2",
        configfile=configfile,
        timeout=1800,
    )
    assert done.returncode == 0, done.stderr[-6000:]
    assert (tmp_path / target).stat().st_size > 0
    model_dir = tmp_path / "results" / "digits" / "mobilenet" / "s0"
    assert (model_dir / "cnn" / "model.pt").is_file() and (model_dir / "ic_only" / "outputs.npz").is_file()
    submitted = done.stdout + done.stderr
    assert "Job" in submitted and "has been submitted with SLURM jobid" in submitted
    # one SLURM job each: prepare, train cnn and ic_only, evaluate both (the early exit marks the CNN), early exit
    assert len(list((tmp_path / ".snakemake" / "slurm_logs").rglob("*.log"))) == 6
