"""Fault injection: the workflow is killed (SIGKILL, whole process group) while a training job is mid-run.

Nothing it leaves may look finished: no checkpoint of the killed job, no temporary file renamed into place. After
`snakemake --unlock`, the rerun (the profile sets rerun-incomplete) resumes the killed training from its last.pt and
the workflow completes.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def small_config(tmp_path: Path) -> Path:
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["archs"] = ["mobilenet"]
    config["tracking_uri"] = "off"
    config["recipes"] = {
        "cnn": {"epochs": 4, "lr": 0.05, "batch_size": 32, "milestones": [3]},
        "ic_only": {"epochs": 1, "lr": None, "batch_size": 32},
        "sdn": {"epochs": 1, "lr": 0.05, "batch_size": 32},
    }
    config["backdoor"]["enabled"] = False
    config["analyses"]["gradcam"]["enabled"] = False
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_killed_workflow_leaves_nothing_trusted_and_resumes(snakemake_exe, snakemake, tmp_path: Path) -> None:
    config = small_config(tmp_path)
    profile = str(REPO / "workflow" / "profiles" / "default")
    cnn = tmp_path / "results" / "digits" / "mobilenet" / "s0" / "cnn"
    command = [str(snakemake_exe), "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path)]
    command += ["--profile", profile, "--configfile", str(config)]
    process = subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 600
        while not (cnn / "last.pt").exists():  # the CNN has finished at least one epoch and is training on
            assert process.poll() is None, "the workflow ended before the fault could be injected"
            assert time.monotonic() < deadline, "training never wrote last.pt"
            time.sleep(0.2)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    assert not (cnn / "model.pt").exists() and not (cnn / "meta.json").exists()

    unlocked = snakemake(tmp_path, "--unlock", configfile=config)
    assert unlocked.returncode == 0, unlocked.stderr[-3000:]
    done = snakemake(tmp_path, "--profile", profile, configfile=config, timeout=1800)
    assert done.returncode == 0, done.stderr[-6000:]
    assert (cnn / "model.pt").is_file() and not (cnn / "last.pt").exists()
    with open(cnn / "history.csv") as handle:
        epochs = [int(float(row["epoch"])) for row in csv.DictReader(handle)]
    assert epochs == [1, 2, 3, 4]  # resumed: every epoch exactly once
    log = (tmp_path / "logs" / "train" / "digits_mobilenet_s0_cnn.log").read_text()
    assert "resuming cnn" in log
    assert (tmp_path / "results" / "report" / "summary.md").is_file()
