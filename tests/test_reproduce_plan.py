"""What a device call can carry to the next (sdn.reproduce.plan), the trainer's progress.json (sdn.progress), and
how the runner uses them: jobs that cannot resume in another call start first, and not when they cannot finish."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

from sdn import io
from sdn.models import create
from sdn.progress import PROGRESS, read_progress, typical_epoch_seconds, write_progress
from sdn.reproduce import pack, plan
from sdn.reproduce.grid import Job
from sdn.reproduce.pack import MIB
from sdn.reproduce.runner import Runner, Settings


def test_the_resume_budget_leaves_room_for_the_archive_and_the_tree(tmp_path: Path) -> None:
    archive = tmp_path / "cifar10-jpeg.tar.gz"
    with open(archive, "wb") as handle:
        handle.truncate(20 * 1024 * 1024)
    assert plan.resume_budget_mib(archive) == pytest.approx(64 - 8 - 20)
    assert plan.resume_budget_mib(None) == pytest.approx(64 - 8)
    with open(archive, "wb") as handle:
        handle.truncate(70 * 1024 * 1024)
    assert plan.resume_budget_mib(archive) == 0.0


def test_the_checkpoint_estimate_matches_a_saved_resume_state(tmp_path: Path) -> None:
    model = create("resnet56", num_classes=10, input_size=32)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sum(o.sum() for o in model(torch.randn(2, 3, 32, 32))).backward()
    optimizer.step()  # creates the momentum buffers
    path = tmp_path / "last.pt"
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, path)
    saved_mib = path.stat().st_size / MIB
    assert saved_mib <= plan.resume_checkpoint_mib("resnet56", 10, 32) <= saved_mib + 1.0


def test_the_paper_archs_split_into_carried_and_not_on_cifar10() -> None:
    budget = plan.resume_budget_mib(None) - 20  # a CIFAR archive is about 19 MiB
    archs = ["resnet56", "mobilenet", "vgg16bn", "wrn32_4"]
    carry = plan.carryable_archs(archs, 10, 32, budget)
    # WRN-32-4's last.pt (about 58 MiB) travels as its weights (29 MiB); VGG-16-BN's weights alone are 59 MiB
    assert carry == {"resnet56": True, "mobilenet": True, "vgg16bn": False, "wrn32_4": True}
    whole = {a: plan.resume_checkpoint_mib(a, 10, 32) <= budget for a in archs}
    assert whole == {"resnet56": True, "mobilenet": True, "vgg16bn": False, "wrn32_4": False}


def test_epoch_seconds_are_measured_or_scaled_from_the_same_arch() -> None:
    measured = {("vgg16bn", "cnn"): 2.0, ("vgg16bn", "sdn"): 3.0, ("wrn32_4", "sdn"): 5.5}
    assert plan.epoch_seconds(measured, "vgg16bn", "sdn") == 3.0
    assert plan.epoch_seconds(measured, "wrn32_4", "cnn") == pytest.approx(5.5 / 1.1)
    assert plan.epoch_seconds(measured, "vgg16bn", "ic_only") == pytest.approx(max(2.0, 3.0 / 1.1) * 0.35)
    assert plan.epoch_seconds(measured, "resnet56", "cnn") is None


def test_progress_round_trip_and_a_broken_file(tmp_path: Path) -> None:
    assert read_progress(tmp_path) is None
    write_progress(tmp_path, 3, 100, [9.0, 2.0, 2.2, 2.1])
    assert read_progress(tmp_path) == {"epoch": 3, "epochs": 100, "epoch_wall_s": [9.0, 2.0, 2.2, 2.1]}
    assert typical_epoch_seconds([9.0, 2.0, 2.2, 2.1]) == pytest.approx(2.1)  # the warm-up epoch left out
    assert typical_epoch_seconds([4.0]) == 4.0 and typical_epoch_seconds([]) is None
    (tmp_path / PROGRESS).write_text("{not json")
    assert read_progress(tmp_path) is None


FAKE_JOB = """
import sys, time, pathlib
phase, run = sys.argv[1], pathlib.Path(sys.argv[2])
time.sleep(0.2)
run.mkdir(parents=True, exist_ok=True)
(run / ("model.pt" if phase == "train" else "outputs.npz")).write_text("x")
"""


def _runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, launched: list[str], **changes: object) -> Runner:
    def command(self: Runner, job: Job, phase: str) -> list[str]:
        launched.append(f"{phase} {job.key}")
        return [sys.executable, "-c", FAKE_JOB, phase, job.run_dir.as_posix()]

    monkeypatch.setattr(Runner, "command", command)
    monkeypatch.setattr(Runner, "publish", lambda self, job: None)
    settings = dict(out=tmp_path / "out", dataset="cifar10", archs=["resnet56", "vgg16bn"], seeds=[0],
                    work=tmp_path / "work", archive=None, device="cpu", jobs=1, budget_s=60.0,
                    reserve_s=1.0)  # fmt: skip
    runner = Runner(Settings(**{**settings, **changes}))  # type: ignore[arg-type]
    (runner.work / "logs").mkdir(exist_ok=True)
    runner.carryable = {"resnet56": True, "vgg16bn": False}
    return runner


def test_jobs_that_cannot_resume_start_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    launched: list[str] = []
    runner = _runner(tmp_path, monkeypatch, launched)
    runner.schedule()
    trains = [entry.split()[1] for entry in launched if entry.startswith("train")]
    # one slot: the CNN that cannot resume, then its IC-only child (its short work first), then its SDN training
    assert trains[:3] == ["vgg16bn/s0/cnn", "vgg16bn/s0/ic_only", "vgg16bn/s0/sdn"]
    assert len(trains) == 6 and all(runner.state.job(j)["evaluated"] for j in runner.jobs)


def test_a_job_that_cannot_resume_is_not_started_when_it_would_not_finish(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    launched: list[str] = []
    runner = _runner(tmp_path, monkeypatch, launched, epochs={"cnn": 100, "ic_only": 25, "sdn": 100})
    runner.state.job(Job("vgg16bn", 0, "cnn"))["epoch_wall_s"] = 2.0  # measured in an earlier call: 200 s a CNN
    runner.state.job(Job("resnet56", 0, "cnn"))["epoch_wall_s"] = 2.0  # resnet56 is carried: no limit
    with caplog.at_level("INFO", logger="sdn.reproduce"):
        runner.schedule()
    assert not any("vgg16bn" in entry for entry in launched)
    assert sorted(e for e in launched if e.startswith("train")) == [f"train resnet56/s0/{v}" for v in
                                                                    ("cnn", "ic_only", "sdn")]  # fmt: skip
    assert runner.not_started == {"vgg16bn/s0/cnn", "vgg16bn/s0/sdn"}
    assert "not starting vgg16bn/s0/cnn: it needs about" in caplog.text
    runner.environment = {}
    assert runner.summary()["calls"][-1]["not_started"] == ["vgg16bn/s0/cnn", "vgg16bn/s0/sdn"]

    launched.clear()  # a longer call: the same estimate now fits (CNN 101 epochs + its IC-only child 26 x 0.7 s)
    again = _runner(tmp_path, monkeypatch, launched, epochs={"cnn": 100, "ic_only": 25, "sdn": 100}, budget_s=400.0)
    assert again.seconds_needed(Job("vgg16bn", 0, "cnn")) == pytest.approx(101 * 2.0 + 26 * 2.0 * 0.35)
    assert again.ready(Job("vgg16bn", 0, "cnn")) == "train"


def test_a_partly_trained_job_needs_only_its_remaining_epochs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = _runner(tmp_path, monkeypatch, [], epochs={"cnn": 100, "ic_only": 25, "sdn": 100})
    job = Job("vgg16bn", 0, "sdn")
    run = runner.work / job.run_dir
    run.mkdir(parents=True)
    (run / "last.pt").write_text("x")
    write_progress(run, 90, 100, [3.0, 1.0, 1.0])
    runner.measure(force=True)  # nothing running: nothing recorded
    runner.state.job(job)["epoch_wall_s"] = 1.0
    assert runner.seconds_needed(job) == pytest.approx(11 * 1.0)


def test_a_finished_cnn_whose_checkpoint_was_not_carried_is_trained_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = _runner(tmp_path, monkeypatch, [])
    cnn, child = Job("vgg16bn", 0, "cnn"), Job("vgg16bn", 0, "ic_only")
    runner.state.job(cnn).update(evaluated=True, published=True)  # a resume pack without its model.pt
    assert runner.ready(child) is None  # its parent's model.pt is missing
    assert runner.ready(cnn) == "train"
    assert runner.state.job(cnn)["evaluated"] is False
    runner.state.job(child)["evaluated"] = True
    runner.state.job(cnn)["evaluated"] = True
    assert runner.ready(cnn) is None  # the child is done: nothing needs the CNN's checkpoint


def test_the_runner_records_the_resume_budget_of_the_call(tmp_path: Path) -> None:
    archive = tmp_path / "c10.tar.gz"
    with open(archive, "wb") as handle:
        handle.truncate(19 * 1024 * 1024)
    settings = Settings(out=tmp_path / "out", dataset="cifar10", archs=["resnet56"], seeds=[0],
                        work=tmp_path / "work", archive=archive, device="cpu")  # fmt: skip
    runner = Runner(settings)
    assert runner.resume_mib == pytest.approx(64 - 8 - 19)
    assert io.read_json(runner.work / "state.json")["calls"][-1]["resume_max_mib"] == pytest.approx(37.0)
    assert os.path.basename(str(runner.call["settings"]["archive"])) == "c10.tar.gz"


def test_restart_removes_a_jobs_files_and_state(tmp_path: Path) -> None:
    settings = dict(out=tmp_path / "out", dataset="cifar10", archs=["resnet56"], seeds=[0], work=tmp_path / "work",
                    archive=None, device="cpu")  # fmt: skip
    first = Runner(Settings(**settings))  # type: ignore[arg-type]
    diverged, kept = Job("resnet56", 0, "sdn"), Job("resnet56", 0, "cnn")
    for job in (diverged, kept):
        (first.work / job.run_dir).mkdir(parents=True)
        (first.work / job.run_dir / "last.pt").write_text("x")
        first.state.add_segment(job, {"phase": "train", "seconds": 5.0, "rc": 1})
    again = Runner(Settings(**settings, restart=["resnet56/s0/sdn"]))  # type: ignore[arg-type]
    assert not (again.work / diverged.run_dir).exists() and (again.work / kept.run_dir / "last.pt").is_file()
    assert "resnet56/s0/sdn" not in io.read_json(again.work / "state.json")["jobs"]
    assert again.state.wall_seconds(kept) == 5.0
    with pytest.raises(ValueError, match=r"--restart: \['wrn32_4/s0/sdn'\] are not jobs of this grid"):
        Runner(Settings(**settings, restart=["wrn32_4/s0/sdn"]))  # type: ignore[arg-type]


def test_the_resume_pack_leaves_out_the_least_training_per_byte(tmp_path: Path) -> None:
    settings = dict(out=tmp_path / "out", dataset="cifar10", archs=["resnet56", "mobilenet"], seeds=[0],
                    work=tmp_path / "work", archive=None, device="cpu")  # fmt: skip
    runner = Runner(Settings(**settings))  # type: ignore[arg-type]
    files = {  # job: (size, training seconds so far)
        Job("mobilenet", 0, "cnn"): (60_000, 480.0),  # large, but eight minutes of training
        Job("resnet56", 0, "cnn"): (20_000, 30.0),  # small, half a minute
        Job("resnet56", 0, "sdn"): (2_000, 20.0),
    }
    members = ["state.json"]
    runner.state.save()
    for job, (size, seconds) in files.items():
        (runner.work / job.run_dir).mkdir(parents=True)
        (runner.work / job.run_dir / "last.pt").write_bytes(b"x" * size)
        runner.state.add_segment(job, {"phase": "train", "seconds": seconds, "rc": 0, "stopped": True})
        members.append(f"{job.run_dir.as_posix()}/last.pt")
    kept, dropped = runner.fit_resume(members, limit=80_000)  # tar rounds up to 10,240-byte records
    # by density resnet56/s0/cnn (1.5 ms/B) goes first, and then everything else fits: the eight minutes are kept
    assert dropped == ["runs/resnet56/s0/cnn/last.pt"]
    assert sorted(kept) == ["runs/mobilenet/s0/cnn/last.pt", "runs/resnet56/s0/sdn/last.pt", "state.json"]
    kept, dropped = runner.fit_resume(members, limit=35_000)  # only the small ones fit: one left out is taken back
    assert dropped == ["runs/mobilenet/s0/cnn/last.pt"] and "runs/resnet56/s0/cnn/last.pt" in kept
    assert runner.fit_resume(members, limit=10**9) == (members, [])


def _resume_state(epoch: int, weights: int, momentum: int) -> dict:
    """A resume state in the layout sdn.train writes: weights and SGD momentum of the given byte sizes."""
    rng = torch.Generator().manual_seed(epoch)
    return {
        "identity": {"arch": "resnet56"},
        "epoch": epoch,
        "model": {"w": torch.rand(weights // 4, generator=rng)},
        "optimizer": {"state": {0: {"momentum_buffer": torch.rand(momentum // 4, generator=rng)}},
                      "param_groups": [{"lr": 0.1, "momentum": 0.9, "params": [0]}]},
    }  # fmt: skip


def test_a_checkpoint_too_large_to_carry_whole_travels_as_its_weights(tmp_path: Path) -> None:
    from sdn import checkpoint

    settings = dict(out=tmp_path / "out", dataset="cifar10", archs=["wrn32_4"], seeds=[0], work=tmp_path / "work",
                    archive=None, device="cpu", resume_max_mib=0.5)  # fmt: skip
    runner = Runner(Settings(**settings))  # type: ignore[arg-type]
    sdn_job, cnn_job = Job("wrn32_4", 0, "sdn"), Job("wrn32_4", 0, "cnn")
    checkpoint.save_resume_state(runner.work / sdn_job.run_dir, _resume_state(7, 300_000, 300_000))  # 0.57 MiB
    checkpoint.save_resume_state(runner.work / cnn_job.run_dir, _resume_state(2, 400_000, 400_000))
    runner.state.add_segment(sdn_job, {"phase": "train", "seconds": 70.0, "rc": 0, "stopped": True})
    runner.state.add_segment(cnn_job, {"phase": "train", "seconds": 20.0, "rc": 0, "stopped": True})
    runner.environment = {}
    summary = runner.summary()
    runner.pack(summary)
    # both whole ones are too large; only one weights-only copy fits: the one holding more training per byte
    assert summary["resume_weights_only"] == ["runs/wrn32_4/s0/sdn/last.pt"]
    assert summary["resume_left_out"] == ["runs/wrn32_4/s0/cnn/last.pt"]
    assert sorted(pack.unpack(runner.s.out, "resume", tmp_path / "peek")) == [
        "carry/runs/wrn32_4/s0/sdn/last.pt", "state.json"
    ]  # fmt: skip
    full = runner.work / sdn_job.run_dir / "last.pt"
    assert checkpoint.load_resume_state(full.parent, "cpu")["optimizer"]["state"]  # the work folder keeps its own

    warm = Runner(Settings(**settings))  # type: ignore[arg-type]  # the same work folder: nothing is replaced
    assert checkpoint.load_resume_state(full.parent, "cpu")["optimizer"]["state"]
    assert "optimizer_state_reset" not in warm.state.job(sdn_job) and not (warm.work / "carry").exists()

    fresh = Runner(Settings(**{**settings, "work": tmp_path / "fresh", "resume_from": runner.s.out}))  # type: ignore[arg-type]
    state = checkpoint.load_resume_state(fresh.work / sdn_job.run_dir, "cpu")
    assert state["epoch"] == 7 and state["optimizer"]["state"] == {}
    assert torch.equal(state["model"]["w"], _resume_state(7, 300_000, 300_000)["model"]["w"])
    assert fresh.state.job(sdn_job)["optimizer_state_reset"] == [{"epoch": 7}]
    assert not (fresh.work / "carry").exists() and not (fresh.work / cnn_job.run_dir / "last.pt").exists()
