"""``scripts/cpu-reproduce.sh``: a grid trained a call at a time on the CPU, its resume pack kept in the repository
(CARRY) so that a fresh machine continues it, its finished runs installed into ``reproduction/``."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sdn.reproduce import pack, publish
from sdn.reproduce.runner import Runner, Settings

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "cpu-reproduce.sh"


def _wrapper(repo: Path, work: Path, archive: Path, **env: str) -> subprocess.Popen[str]:
    environment = {**os.environ, "SMALL": "1", "EPOCHS_CNN": "3", "EPOCHS_IC": "1", "BATCH": "32",
                   "VARIANTS": "cnn,ic_only", "TRAIN_ARGS": "", "ARCHIVE": str(archive), "WORK": str(work),
                   "REPO": str(repo), "PYTHON": sys.executable, "BUDGET_S": "1200", "RESERVE_S": "5",
                   **env}  # fmt: skip
    return subprocess.Popen(
        ["bash", str(SCRIPT), "cifar10", "resnet56", "0"],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _carried_state(carry: Path, tmp_path: Path) -> dict:
    peek = tmp_path / "peek"
    shutil.rmtree(peek, ignore_errors=True)
    pack.unpack(carry, "resume", peek)
    return json.loads((peek / "state.json").read_text())


@pytest.mark.slow
def test_a_fresh_machine_continues_from_the_committed_resume_pack(
    fake_cifar_archive, stop_trainer, tmp_path: Path
) -> None:
    archive = tmp_path / "c10.tar.gz"
    fake_cifar_archive(archive, train_per_class=50, test_per_class=10)
    repo, carry = tmp_path / "repo", tmp_path / "repo" / "runs-in-progress" / "cifar10-cpu"

    first = _wrapper(repo, tmp_path / "machine1", archive)
    last = tmp_path / "machine1" / "runs" / "resnet56" / "s0" / "cnn" / "last.pt.sha256"
    deadline = time.monotonic() + 600
    while not last.exists():  # the CNN finished an epoch (last.pt and its sidecar written): end the session now
        assert first.poll() is None, first.communicate()[0]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    stop_trainer(tmp_path / "machine1")  # or it may finish the CNN before the stop reaches it
    first.send_signal(signal.SIGTERM)  # to the wrapper: it passes the stop on and still installs and carries
    log1 = first.communicate(timeout=180)[0]
    assert first.returncode == 0, log1
    assert "resume pack in" in log1, log1
    assert "runs/resnet56/s0/cnn/last.pt" in pack.unpack(carry, "resume", tmp_path / "peek")
    grid = json.loads((repo / "reproduction" / "cifar10" / "grid-cpu.json").read_text())
    assert not grid["complete"] and grid["jobs"]["resnet56/s0/cnn"]["status"] == "partial"

    # the next session: a new machine (another WORK), only the repository's files
    second = _wrapper(repo, tmp_path / "machine2", archive)
    log2 = second.communicate(timeout=1200)[0]
    assert second.returncode == 0, log2
    assert "continuing the grid carried in" in log2, log2
    assert "resnet56/s0/ic_only: evaluated, 1/1 epochs" in log2, log2
    assert pack.unpack(carry, "resume", tmp_path / "peek2") == ["state.json"]  # complete: only its state is left
    history = (tmp_path / "machine2" / "runs" / "resnet56" / "s0" / "cnn" / "history.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in history[1:]] == ["1", "2", "3"]  # resumed, every epoch exactly once
    publish.verify(repo / "reproduction")
    runs = repo / "reproduction" / "cifar10" / "resnet56" / "s0"
    assert sorted(p.name for p in runs.iterdir()) == ["cnn", "ic_only"]
    provenance = publish.read_provenance(runs / "cnn")
    assert len(provenance["calls"]) == 2
    trained = [s["epochs"] for s in provenance["segments"] if s["phase"] == "train"]  # [finished before, after]
    assert len(trained) == 2 and trained[0][0] == 0 and trained[1] == [trained[0][1], 3] and trained[0][1] >= 1
    assert json.loads((repo / "reproduction" / "cifar10" / "grid-cpu.json").read_text())["complete"]

    # a larger grid later (the SDN training too), on a third machine: the finished jobs are not trained again
    third = _wrapper(repo, tmp_path / "machine3", archive, VARIANTS="cnn,ic_only,sdn", EPOCHS_SDN="1")
    log3 = third.communicate(timeout=1200)[0]
    assert third.returncode == 0, log3
    assert "start train    resnet56/s0/sdn" in log3 and "start train    resnet56/s0/cnn" not in log3, log3
    assert sorted(p.name for p in runs.iterdir()) == ["cnn", "ic_only", "sdn"]


def test_a_failed_call_keeps_what_was_carried(tmp_path: Path) -> None:
    """A call that cannot even prepare its data (a wrong ARCHIVE) carries the same grid on, with its call added."""
    settings = Settings(out=tmp_path / "earlier", dataset="cifar10", archs=["resnet56"], seeds=[0],
                        work=tmp_path / "earlier-work", archive=None, device="cpu")  # fmt: skip
    earlier = Runner(settings)
    earlier.environment = {}
    earlier.pack(earlier.summary())
    carry = tmp_path / "repo" / "runs-in-progress" / "cifar10-cpu"
    carry.mkdir(parents=True)
    shutil.copy(tmp_path / "earlier" / "resume.tar.00", carry)

    result = subprocess.run(
        ["bash", str(SCRIPT), "cifar10", "resnet56", "0"],
        env={
            **os.environ,
            "ARCHIVE": str(tmp_path / "missing.tar.gz"),
            "WORK": str(tmp_path / "work"),
            "REPO": str(tmp_path / "repo"),
            "PYTHON": sys.executable,
        },  # fmt: skip
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 2 and "missing.tar.gz not found" in result.stderr, result.stderr
    assert "continuing the grid carried in" in result.stdout
    assert "cpu-reproduce: resnet56/s0/cnn: pending, 0/100 epochs, 0.0 h of training" in result.stdout
    assert len(_carried_state(carry, tmp_path)["calls"]) == 2  # the earlier call and this failed one
