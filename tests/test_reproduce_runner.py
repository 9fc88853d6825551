"""``scripts/gpu-reproduce.sh`` / ``sdn.reproduce.runner`` on the CPU: job order, the time budget, stopping, packing
within the size limits, and a cut grid finished by a second call on another work folder."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from sdn.progress import write_progress
from sdn.reproduce import ingest, pack, publish
from sdn.reproduce.grid import Job, grid_jobs
from sdn.reproduce.runner import Runner, Settings

ROOT = Path(__file__).resolve().parents[1]


def test_grid_order_and_parents() -> None:
    jobs = grid_jobs(["resnet56", "mobilenet"], [0, 1])
    assert [j.variant for j in jobs] == ["cnn"] * 4 + ["sdn"] * 4 + ["ic_only"] * 4
    assert jobs[0] == Job("resnet56", 0, "cnn")
    assert Job("mobilenet", 1, "ic_only").parent == Job("mobilenet", 1, "cnn")
    assert Job("mobilenet", 1, "ic_only").run_dir == Path("runs/mobilenet/s1/ic_only")
    with pytest.raises(ValueError, match="ic_only needs cnn"):
        grid_jobs(["resnet56"], [0], ("ic_only", "sdn"))


def _option(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


def test_backdoor_variants_train_on_the_poisoned_data_and_are_evaluated_on_the_triggered_splits(
    tmp_path: Path,
) -> None:
    """As in the workflow: bd_cnn is the CNN recipe on the poisoned copy, bd_ic_only the IC-only recipe on the clean
    data from bd_cnn; both are evaluated on the poisoned folder's splits, triggered ones included."""
    jobs = grid_jobs(["vgg16bn"], [0], ("cnn", "bd_cnn", "bd_ic_only", "ic_only"))
    assert [j.variant for j in jobs] == ["cnn", "bd_cnn", "bd_ic_only", "ic_only"]  # CNNs first, order kept
    assert Job("vgg16bn", 0, "bd_ic_only").parent == Job("vgg16bn", 0, "bd_cnn")
    assert Job("vgg16bn", 0, "bd_cnn").child == Job("vgg16bn", 0, "bd_ic_only")
    with pytest.raises(ValueError, match="bd_ic_only needs bd_cnn"):
        grid_jobs(["vgg16bn"], [0], ("cnn", "bd_ic_only"))
    epochs = {"cnn": 7, "ic_only": 3, "sdn": 5}
    runner = Runner(_settings(tmp_path, archs=["vgg16bn"], variants=("cnn", "bd_cnn", "bd_ic_only"), epochs=epochs))
    bd_cnn = runner.command(Job("vgg16bn", 0, "bd_cnn"), "train")
    assert [_option(bd_cnn, f) for f in ("--recipe", "--data", "--epochs")] == ["cnn", "data-backdoor", "7"]
    assert "--parent" not in bd_cnn
    bd_ic = runner.command(Job("vgg16bn", 0, "bd_ic_only"), "train")
    assert [_option(bd_ic, f) for f in ("--recipe", "--data", "--epochs", "--parent")] == [
        "ic_only", "data", "3", "runs/vgg16bn/s0/bd_cnn/model.pt"
    ]  # fmt: skip
    for variant in ("bd_cnn", "bd_ic_only"):
        evaluate = runner.command(Job("vgg16bn", 0, variant), "evaluate")
        assert _option(evaluate, "--data") == "data-backdoor"
        assert _option(evaluate, "--splits") == "holdout,test,test_triggered,test_triggered_all"
    clean = runner.command(Job("vgg16bn", 0, "cnn"), "evaluate")
    assert (_option(clean, "--data"), _option(clean, "--splits")) == ("data", "holdout,test")


@pytest.mark.slow
def test_the_backdoor_runs_are_published_with_their_triggered_logits(fake_cifar_archive, tmp_path: Path) -> None:
    """A toy backdoor grid end to end on the CPU: poisoned once, both runs published with the triggered splits and
    the poisoning in their provenance, and the workflow's backdoor analysis reads them."""
    from sdn.cli import main

    archive = tmp_path / "c10.tar.gz"
    fake_cifar_archive(archive, train_per_class=200, test_per_class=10)
    # the sizes and epochs of the runner's toy check (SMALL=1): a CNN of one epoch on fewer images leaves batch-norm
    # statistics under which the IC-only training can diverge
    settings = _settings(
        tmp_path, archive=archive, jobs=1, budget_s=1200.0, variants=("bd_cnn", "bd_ic_only"),
        epochs={"cnn": 3, "ic_only": 1, "sdn": 1}, batch_size=32, prepare_args=["--holdout", "100"],
        poison_args=["--target", "1"],
    )  # fmt: skip
    summary = Runner(settings).run()
    assert summary["complete"], summary["jobs"]
    repo = tmp_path / "repo"
    ingest.ingest(settings.out, repo)
    publish.verify(repo / "reproduction")
    runs = repo / "reproduction" / "cifar10" / "resnet56" / "s0"
    assert sorted(p.name for p in runs.iterdir()) == ["bd_cnn", "bd_ic_only"]
    for variant in ("bd_cnn", "bd_ic_only"):
        with np.load(runs / variant / "outputs.npz") as data:
            assert data["test_triggered_all_logits"].shape[1] == 30  # every test image, the trigger on
            assert data["test_triggered_logits"].shape[1] == 20  # those not of the target class
        backdoor = publish.read_provenance(runs / variant)["backdoor"]
        assert backdoor["target"] == 1 and backdoor["trigger"]["size"] == 5
    out = tmp_path / "analysis"
    args = ["backdoor", "analyze", "--cnn-outputs", str(runs / "bd_cnn" / "outputs.npz"), "--target", "1"]
    assert main([*args, "--sdn-outputs", str(runs / "bd_ic_only" / "outputs.npz"), "--out", str(out)]) == 0
    assert (out / "summary.json").is_file()
    again = Runner(settings)  # a later call on the same work folder poisons nothing again
    again.poison_data()
    assert "poison_s" not in again.call


def _settings(tmp_path: Path, **changes: object) -> Settings:
    base = dict(out=tmp_path / "out", dataset="cifar10", archs=["resnet56"], seeds=[0], work=tmp_path / "work",
                archive=None, device="cpu", jobs=2, budget_s=60.0, reserve_s=1.0)  # fmt: skip
    return Settings(**{**base, **changes})  # type: ignore[arg-type]


FAKE_JOB = """
import sys, time, pathlib
phase, run = sys.argv[1], pathlib.Path(sys.argv[2])
time.sleep(float(sys.argv[3]))
run.mkdir(parents=True, exist_ok=True)
(run / ("model.pt" if phase == "train" else "outputs.npz")).write_text("x")
"""


def _fake_commands(monkeypatch: pytest.MonkeyPatch, seconds: float, launched: list[tuple[str, str]]) -> None:
    def command(self: Runner, job: Job, phase: str) -> list[str]:
        launched.append((phase, job.key))
        return [sys.executable, "-c", FAKE_JOB, phase, job.run_dir.as_posix(), str(seconds)]

    monkeypatch.setattr(Runner, "command", command)
    monkeypatch.setattr(Runner, "publish", lambda self, job: None)


def test_jobs_run_in_dependency_order_and_are_not_redone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    launched: list[tuple[str, str]] = []
    _fake_commands(monkeypatch, 0.2, launched)
    runner = Runner(_settings(tmp_path))
    (runner.work / "logs").mkdir()
    runner.schedule()
    keys = [f"{phase} {key}" for phase, key in launched]
    assert sorted(keys) == sorted(
        f"{p} resnet56/s0/{v}" for p in ("train", "evaluate") for v in ("cnn", "sdn", "ic_only")
    )
    assert keys.index("train resnet56/s0/ic_only") > keys.index("train resnet56/s0/cnn")
    assert all(runner.state.job(j)["evaluated"] for j in runner.jobs)
    launched.clear()
    again = Runner(_settings(tmp_path))  # same work folder: everything is done
    again.schedule()
    assert launched == []
    assert len(again.state.data["calls"]) == 2


def test_one_slot_finishes_each_cnns_short_work_before_the_next_long_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With one job at a time (the CPU runner), a CNN is evaluated and its IC-only child trained and evaluated right
    after it, before the SDN trainings and the next CNN: published sooner, and its model.pt not carried."""
    launched: list[tuple[str, str]] = []
    _fake_commands(monkeypatch, 0.05, launched)
    runner = Runner(_settings(tmp_path, archs=["resnet56", "mobilenet"], jobs=1))
    (runner.work / "logs").mkdir()
    runner.schedule()
    assert [f"{phase} {key}" for phase, key in launched] == [
        f"{phase} {arch}/s0/{variant}"
        for arch, variant in [("resnet56", "cnn"), ("resnet56", "ic_only"), ("mobilenet", "cnn"),
                              ("mobilenet", "ic_only"), ("resnet56", "sdn"), ("mobilenet", "sdn")]
        for phase in ("train", "evaluate")
    ]  # fmt: skip
    with_two_slots = Runner(_settings(tmp_path / "two", archs=["resnet56", "mobilenet"], jobs=2))
    assert [j.variant for j in with_two_slots.start_order()] == ["cnn"] * 2 + ["sdn"] * 2 + ["ic_only"] * 2


def test_budget_stops_running_jobs_and_starts_no_more(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    launched: list[tuple[str, str]] = []
    _fake_commands(monkeypatch, 120.0, launched)
    runner = Runner(_settings(tmp_path, budget_s=3.0, reserve_s=1.0))
    (runner.work / "logs").mkdir()
    started = time.monotonic()
    runner.schedule()
    assert time.monotonic() - started < 2.0 + 10.0  # stopped at the budget (less reserve), not after 120 s
    assert runner.call["stopped"] == "budget reached"
    assert sorted(key for _, key in launched) == ["resnet56/s0/cnn", "resnet56/s0/sdn"]  # 2 slots; ic_only waits
    for key in ("resnet56/s0/cnn", "resnet56/s0/sdn"):
        (segment,) = runner.state.data["jobs"][key]["segments"]
        assert segment["stopped"] is True and segment["phase"] == "train"
    assert not runner.running


@pytest.mark.parametrize(
    ("grid_name", "published"), [(None, "grid-cpu.json"), ("resnet56-sdn", "grid-cpu-resnet56-sdn.json")]
)
def test_a_named_grid_publishes_its_summary_under_its_own_name(
    tmp_path: Path, grid_name: str | None, published: str
) -> None:
    # Two runners sharing one GPU (each its WORK and OUT) published both summaries as grid-cuda.json: one was lost.
    runner = Runner(_settings(tmp_path, grid_name=grid_name))
    runner.environment = {}
    runner.pack(runner.summary())
    names = pack.unpack(tmp_path / "out", "published", tmp_path / "repo")
    assert [n for n in names if "grid-" in n] == [f"reproduction/cifar10/{published}"]


def test_a_grid_continued_on_another_device_keeps_its_published_summary(tmp_path: Path) -> None:
    # A GPU grid's unfinished job continued on the CPU would otherwise leave a stale grid-cuda.json beside a new one.
    runner = Runner(_settings(tmp_path, device="cpu"))
    runner.state.data["calls"].insert(0, {"settings": {"device": "cuda:0", "grid_name": None}})
    runner.environment = {}
    runner.pack(runner.summary())
    names = pack.unpack(tmp_path / "out", "published", tmp_path / "repo")
    assert [n for n in names if "grid-" in n] == ["reproduction/cifar10/grid-cuda.json"]


def test_the_summary_says_how_many_epochs_each_job_finished_on_any_machine(tmp_path: Path) -> None:
    runner = Runner(_settings(tmp_path))
    runner.environment = {}
    cnn = runner.work / "runs" / "resnet56" / "s0" / "cnn"
    write_progress(cnn, 7, 100, [300.0] * 7)
    jobs = runner.summary()["jobs"]
    assert (jobs["resnet56/s0/cnn"]["epochs_done"], jobs["resnet56/s0/cnn"]["epochs"]) == (7, 100)
    assert (jobs["resnet56/s0/ic_only"]["epochs_done"], jobs["resnet56/s0/ic_only"]["epochs"]) == (0, 25)
    runner.pack(runner.summary())  # progress.json is not in the resume pack: the state keeps the count
    machine2 = {"work": tmp_path / "machine2", "out": tmp_path / "out2", "resume_from": tmp_path / "out"}
    fresh = Runner(_settings(tmp_path, **machine2))
    fresh.environment = {}
    assert not (fresh.work / "runs" / "resnet56" / "s0" / "cnn" / "progress.json").exists()
    assert fresh.summary()["jobs"]["resnet56/s0/cnn"]["epochs_done"] == 7


def test_a_training_resumed_after_its_last_epoch_counts_every_epoch_as_finished(tmp_path: Path) -> None:
    # A call stopped after the last epoch's last.pt but before model.pt: the next call, on another machine (no
    # progress.json), trains no epoch and writes model.pt; its segment is [100, 100], not [100, 0].
    runner = Runner(_settings(tmp_path))
    cnn = Job("resnet56", 0, "cnn")
    run = runner.work / cnn.run_dir
    run.mkdir(parents=True)
    assert runner.epochs_finished(cnn) == 0
    (run / "model.pt").write_text("x")
    assert runner.epochs_finished(cnn) == 100
    write_progress(run, 7, 100, [300.0] * 7)  # where progress.json is there, it says
    assert runner.epochs_finished(cnn) == 7


# A training that diverges (exit status 3, as `sdn train` on TrainingDiverged) unless its options clip gradients
# (argv[3]: "always" diverges whatever the options); everything else finishes at once.
FAKE_DIVERGING = """
import sys, pathlib
phase, run, mode, options = sys.argv[1], pathlib.Path(sys.argv[2]), sys.argv[3], sys.argv[4:]
run.mkdir(parents=True, exist_ok=True)
if phase == "train" and run.name == "sdn" and (mode == "always" or "--clip-grad-norm" not in options):
    (run / "last.pt").write_text("x")
    print("sdn train: error: non-finite or diverged loss (above 100000) at epoch 4 step 7 (of 351); try ...")
    sys.exit(3)
(run / ("model.pt" if phase == "train" else "outputs.npz")).write_text("x")
"""


def _diverging(monkeypatch: pytest.MonkeyPatch, mode: str, launched: list[tuple[str, str, list[str]]]) -> None:
    def command(self: Runner, job: Job, phase: str) -> list[str]:
        options = self.train_args(job) if phase == "train" else []
        launched.append((phase, job.key, options))
        return [sys.executable, "-c", FAKE_DIVERGING, phase, job.run_dir.as_posix(), mode, *options]

    monkeypatch.setattr(Runner, "command", command)
    monkeypatch.setattr(Runner, "publish", lambda self, job: None)


def test_a_diverged_training_starts_over_once_with_the_retry_options(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    launched: list[tuple[str, str, list[str]]] = []
    _diverging(monkeypatch, "unless-clipped", launched)
    runner = Runner(_settings(tmp_path, train_args=["--exits", "paper"]))
    (runner.work / "logs").mkdir()
    runner.schedule()
    sdn_trainings = [options for phase, key, options in launched if (phase, key) == ("train", "resnet56/s0/sdn")]
    assert sdn_trainings == [["--exits", "paper"], ["--exits", "paper", "--clip-grad-norm", "1"]]
    assert not runner.failed and all(runner.state.job(j)["evaluated"] for j in runner.jobs)
    entry = runner.state.data["jobs"]["resnet56/s0/sdn"]
    (attempt,) = entry["diverged"]
    assert (attempt["epoch"], attempt["step"], attempt["steps"]) == (4, 7, 351)
    assert attempt["train_args"] == ["--exits", "paper"] and len(attempt["segments"]) == 1
    assert entry["retry_train_args"] == ["--clip-grad-norm", "1"]
    assert [s["phase"] for s in entry["segments"]] == ["train", "evaluate"]  # the current attempt only
    job = Job("resnet56", 0, "sdn")
    assert runner.state.diverged_seconds(job) == attempt["segments"][0]["seconds"] > 0
    runner.environment = {}  # set by run(), which also prepares data
    summary = runner.summary()["jobs"]["resnet56/s0/sdn"]
    assert summary["diverged"] == 1 and summary["train_args"][-2:] == ["--clip-grad-norm", "1"]
    again = Runner(_settings(tmp_path, train_args=["--exits", "paper"]))  # the next call keeps the retry options
    assert again.command(job, "train")[-4:] == ["--exits", "paper", "--clip-grad-norm", "1"]


@pytest.mark.parametrize("retry", [[], ["--clip-grad-norm", "1"]])
def test_a_training_that_diverges_again_or_without_retry_options_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, retry: list[str]
) -> None:
    launched: list[tuple[str, str, list[str]]] = []
    _diverging(monkeypatch, "always", launched)
    runner = Runner(_settings(tmp_path, diverged_retry_args=retry))
    (runner.work / "logs").mkdir()
    runner.schedule()
    assert runner.failed == {"resnet56/s0/sdn": "train exited with 3 (diverged)"}
    attempts = runner.state.data["jobs"]["resnet56/s0/sdn"]["diverged"]
    assert len(attempts) == (2 if retry else 1)
    assert sum(1 for phase, key, _ in launched if (phase, key) == ("train", "resnet56/s0/sdn")) == len(attempts)
    assert runner.state.job(Job("resnet56", 0, "ic_only"))["evaluated"]  # the other jobs are not held up


def test_provenance_names_every_call_that_trained_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run trained over two calls (sessions, machines, code versions) lists both calls' code and machine."""
    monkeypatch.setattr(Runner, "prepare_data", lambda self: None)
    monkeypatch.setattr(Runner, "plan_carry", lambda self: None)
    launched: list[tuple[str, str]] = []
    _fake_commands(monkeypatch, 60.0, launched)  # the first call is cut while the CNN trains
    monkeypatch.setattr(publish, "environment", lambda: {"gpus": [], "cpu": "first CPU"})
    Runner(_settings(tmp_path, budget_s=1.5, reserve_s=0.5, jobs=1)).run()
    _fake_commands(monkeypatch, 0.1, launched)
    monkeypatch.setattr(publish, "environment", lambda: {"gpus": ["second GPU"], "cpu": "second CPU"})
    cnn_run = tmp_path / "work" / Job("resnet56", 0, "cnn").run_dir
    progress = {"epochs": 5, "epoch_wall_s": [1.0, 1.0]}
    (cnn_run / "progress.json").write_text(json.dumps({**progress, "epoch": 2}))  # the first call reached epoch 2

    def finishing(self: Runner, job: Job, phase: str) -> list[str]:  # the second call trains epochs 3-5
        if job == Job("resnet56", 0, "cnn") and phase == "train":
            (cnn_run / "progress.json").write_text(json.dumps({**progress, "epoch": 5}))
        return [sys.executable, "-c", FAKE_JOB, phase, job.run_dir.as_posix(), "0.1"]

    monkeypatch.setattr(Runner, "command", finishing)
    second = Runner(_settings(tmp_path, device="cuda", jobs=1, train_args=["--amp"]))
    second.run()
    assert launched[0] == ("train", "resnet56/s0/cnn") and len(second.state.data["calls"]) == 2
    cnn = second.state.job(Job("resnet56", 0, "cnn"))["segments"]
    assert [(s["phase"], bool(s.get("stopped"))) for s in cnn] == [
        ("train", True),
        ("train", False),
        ("evaluate", False),
    ]
    calls = second.contributing_calls(cnn)
    assert [c["environment"]["cpu"] for c in calls] == ["first CPU", "second CPU"]
    assert [c["device"] for c in calls] == ["cpu", "cuda"]
    assert [c["train_args"] for c in calls] == [[], ["--amp"]]  # a precision changed between calls shows
    assert [s.get("epochs") for s in cnn] == [[0, 0], [2, 5], None]  # train segments: epochs before and after
    assert [s.get("train_args") for s in cnn] == [[], ["--amp"], None]
    assert all(len(c["code"]["source_sha256"]) == 64 and c["started"] for c in calls)
    ic_only = second.contributing_calls(second.state.job(Job("resnet56", 0, "ic_only"))["segments"])
    assert [c["environment"]["gpus"] for c in ic_only] == [["second GPU"]]


def test_pack_leaves_out_checkpoints_that_do_not_fit(tmp_path: Path) -> None:
    runner = Runner(_settings(tmp_path, part_mib=0.01, max_files=4, resume_max_mib=1.0))
    for variant, size in (("cnn", 30_000), ("sdn", 5_000)):
        run = runner.work / "runs" / "resnet56" / "s0" / variant
        run.mkdir(parents=True)
        (run / "last.pt").write_bytes(np.random.default_rng(0).bytes(size))
    runner.environment = {}
    summary = runner.summary()
    runner.pack(summary)
    assert summary["resume_left_out"] == ["runs/resnet56/s0/cnn/last.pt"]
    files = sorted(p.name for p in runner.s.out.iterdir())
    assert len(files) <= 4 and all(
        (runner.s.out / f).stat().st_size <= 0.01 * pack.MIB for f in files if ".tar." in f
    )
    names = pack.unpack(runner.s.out, "resume", tmp_path / "back")
    assert sorted(names) == ["runs/resnet56/s0/sdn/last.pt", "state.json"]
    assert json.loads((runner.s.out / "grid.json").read_text())["jobs"]["resnet56/s0/sdn"]["status"] == "partial"


def _finished_models(runner: Runner, sizes: dict[str, int]) -> None:
    """Evaluated runs of resnet56 seed 0 whose model.pt holds ``sizes[variant]`` random bytes."""
    for variant, size in sizes.items():
        run = runner.work / "runs" / "resnet56" / "s0" / variant
        run.mkdir(parents=True)
        (run / "model.pt").write_bytes(np.random.default_rng(size).bytes(size))
        runner.state.job(Job("resnet56", 0, variant))["evaluated"] = True


def test_finished_checkpoints_come_back_in_the_files_left_sdn_first(tmp_path: Path) -> None:
    # Only the checkpoints' sha256 came back from the GPU: the SDN-trained ResNet-56 could not be deployed or timed.
    runner = Runner(_settings(tmp_path, part_mib=0.01, max_files=5))  # 2 files left: resume.tar and 1 for models
    _finished_models(runner, {"cnn": 3000, "sdn": 4000, "ic_only": 4000})
    runner.environment = {}
    summary = runner.summary()
    runner.pack(summary)
    model = "checkpoints/cifar10/resnet56/s0/{}/model.pt"
    assert summary["models_packed"] == [model.format("ic_only"), model.format("sdn")]  # the CNN's did not fit
    files = sorted(p.name for p in runner.s.out.iterdir())
    assert "models.tar.00" in files and len(files) <= 5
    assert all((runner.s.out / f).stat().st_size <= 0.01 * pack.MIB for f in files if ".tar." in f)
    back = tmp_path / "back"
    assert sorted(pack.unpack(runner.s.out, "models", back)) == summary["models_packed"]
    original = runner.work / "runs" / "resnet56" / "s0" / "sdn" / "model.pt"
    assert (back / model.format("sdn")).read_bytes() == original.read_bytes()
    # the next call sends what this one could not first
    again = Runner(_settings(tmp_path, part_mib=0.01, max_files=5))
    again.environment = {}
    summary = again.summary()
    again.pack(summary)
    assert summary["models_packed"] == [model.format("cnn"), model.format("sdn")]


def test_ingest_installs_a_checkpoint_only_when_its_sha256_is_the_published_one(tmp_path: Path) -> None:
    runner = Runner(_settings(tmp_path, max_files=8))
    _finished_models(runner, {"sdn": 4000, "ic_only": 3000})
    runner.environment = {}
    runner.pack(runner.summary())
    repo = tmp_path / "repo"
    for variant in ("ic_only", "sdn"):
        digest = publish.sha256_file(runner.work / "runs" / "resnet56" / "s0" / variant / "model.pt")
        run = repo / "reproduction" / "cifar10" / "resnet56" / "s0" / variant
        run.mkdir(parents=True)
        (run / "provenance.json").write_text(json.dumps({"checkpoint": {"sha256": digest}}))
    installed = ingest.ingest_models(runner.s.out, repo)
    assert installed == [f"checkpoints/cifar10/resnet56/s0/{v}/model.pt" for v in ("ic_only", "sdn")]
    assert publish.sha256_file(repo / installed[1]) == publish.sha256_file(
        runner.work / "runs" / "resnet56" / "s0" / "sdn" / "model.pt"
    )
    (repo / installed[0]).unlink()
    provenance = repo / "reproduction" / "cifar10" / "resnet56" / "s0" / "ic_only" / "provenance.json"
    provenance.write_text(json.dumps({"checkpoint": {"sha256": "0" * 64}}))
    with pytest.raises(ValueError, match=r"ic_only/model.pt: sha256 \w+ differs .*not installed"):
        ingest.ingest_models(runner.s.out, repo)
    assert not (repo / installed[0]).exists()
    provenance.unlink()
    with pytest.raises(ValueError, match="records no checkpoint sha256.*ingest its published run first"):
        ingest.ingest_models(runner.s.out, repo)
    assert ingest.ingest_models(tmp_path / "nothing", repo) == []  # no models.tar: nothing to do
    assert not list(repo.glob(".models-*"))  # no staging left behind


def _script(out: Path, work: Path, archive: Path, **env: str) -> subprocess.Popen[str]:
    environment = {**os.environ, "SMALL": "1", "DEVICE": "cpu", "JOBS": "2", "EPOCHS_CNN": "3", "EPOCHS_IC": "1",
                   "EPOCHS_SDN": "1", "BATCH": "32", "ARCHIVE": str(archive), "WORK": str(work),
                   "PYTHON": sys.executable, "BUDGET_S": "1200", "RESERVE_S": "5", **env}  # fmt: skip
    return subprocess.Popen(
        ["bash", str(ROOT / "scripts" / "gpu-reproduce.sh"), str(out), "cifar10", "resnet56", "0"],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.slow
def test_cut_grid_resumes_on_a_second_call_and_publishes(fake_cifar_archive, stop_trainer, tmp_path: Path) -> None:
    archive = tmp_path / "c10.tar.gz"
    fake_cifar_archive(archive, train_per_class=50, test_per_class=10)
    first = _script(tmp_path / "out1", tmp_path / "work1", archive)
    last = tmp_path / "work1" / "runs" / "resnet56" / "s0" / "cnn" / "last.pt.sha256"
    deadline = time.monotonic() + 600
    while not last.exists():  # the CNN finished an epoch (last.pt, its sidecar): cut the grid, as the budget would
        assert first.poll() is None, first.communicate()[0]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    stop_trainer(tmp_path / "work1")  # or it may finish the CNN before the stop reaches it
    first.send_signal(signal.SIGTERM)
    log1 = first.communicate(timeout=120)[0]
    assert first.returncode == 0, log1
    grid1 = json.loads((tmp_path / "out1" / "grid.json").read_text())
    assert not grid1["complete"] and grid1["calls"][-1]["stopped"] == "stop requested"
    assert re.search(r"stopped train +resnet56/s0/cnn after [0-9]+ s \(stop requested\)", log1), log1
    assert grid1["jobs"]["resnet56/s0/cnn"]["status"] == "partial"
    assert 1 <= grid1["jobs"]["resnet56/s0/cnn"]["epochs_done"] < 3
    assert "runs/resnet56/s0/cnn/last.pt" in pack.unpack(tmp_path / "out1", "resume", tmp_path / "peek")

    # a fresh machine: another work folder, the state carried in from the first call's OUT
    second = _script(tmp_path / "out2", tmp_path / "work2", archive, RESUME_FROM=str(tmp_path / "out1"))
    log2 = second.communicate(timeout=1200)[0]
    assert second.returncode == 0, log2
    grid2 = json.loads((tmp_path / "out2" / "grid.json").read_text())
    assert grid2["complete"], grid2["jobs"]
    assert all(job["epochs_done"] == job["epochs"] for job in grid2["jobs"].values())
    assert len(grid2["calls"]) == 2 and grid2["grid_wall_s"] >= grid2["call_wall_s"]
    cnn_log = (tmp_path / "work2" / "logs" / "resnet56_s0_cnn.log").read_text()
    assert "resuming cnn" in cnn_log
    history = (tmp_path / "work2" / "runs" / "resnet56" / "s0" / "cnn" / "history.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in history[1:]] == ["1", "2", "3"]  # every epoch exactly once

    repo = tmp_path / "repo"
    for out in ("out1", "out2"):
        ingest.ingest(tmp_path / out, repo)
    publish.verify(repo / "reproduction")
    assert ingest.ingest_models(tmp_path / "out2", repo) == [  # every finished model came back, checked
        f"checkpoints/cifar10/resnet56/s0/{v}/model.pt" for v in ("cnn", "ic_only", "sdn")
    ]
    grid = json.loads((repo / "reproduction" / "cifar10" / "grid-cpu.json").read_text())  # a GPU grid: grid-cuda
    assert grid["complete"] and not (repo / "reproduction" / "cifar10" / "grid.json").exists()
    runs = repo / "reproduction" / "cifar10" / "resnet56" / "s0"
    assert sorted(p.name for p in runs.iterdir()) == ["cnn", "ic_only", "sdn"]
    provenance = publish.read_provenance(runs / "cnn")
    assert provenance["wall_s"]["train"] > 0 and len(provenance["checkpoint"]["sha256"]) == 64
    assert provenance["environment"]["torch"] and provenance["code"]["source_sha256"]
    assert len(provenance["calls"]) == 2 and all(c["environment"]["cpu"] for c in provenance["calls"])
    with np.load(runs / "sdn" / "outputs.npz") as data:
        assert data["test_logits"].dtype == np.float16 and data["test_logits"].shape[0] == 7


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--archs", "resnet57"], "--archs: unknown ['resnet57']"),
        (["--archs", "resnet56", "--seeds", "a"], "--seeds must be integers"),
        (["--archs", "resnet56", "--budget-s", "10", "--reserve-s", "20"], "--budget-s > --reserve-s"),
        (["--archs", "resnet56", "--jobs", "0"], "--jobs wants a positive count or 'auto'"),
        (["--archs", "resnet56", "--variants", "ic_only,sdn"], "variant ic_only needs cnn in the grid"),
        (["--archs", "resnet56", "--grid-name", "../r56"], "--grid-name '../r56': use letters, digits"),
    ],
)
def test_runner_rejects_bad_arguments(tmp_path: Path, args: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sdn.reproduce.cli", "--out", str(tmp_path), "--dataset", "cifar10", *args],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and message in result.stderr, result.stderr


def test_a_missing_archive_is_named(tmp_path: Path) -> None:
    runner = Runner(_settings(tmp_path, archive=tmp_path / "nope.tar.gz"))
    with pytest.raises(FileNotFoundError, match=r"nope.tar.gz not found \(ARCHIVE="):
        runner.prepare_data()


def test_script_reports_a_missing_archive_and_still_packs(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "ARCHIVE": str(tmp_path / "none.tar.gz"),
        "WORK": str(tmp_path / "work"),
        "DEVICE": "cpu",
        "VARIANTS": "cnn,ic_only",
        "TRAIN_ARGS": "--compile",  # one word starting with --: must reach sdn train, not the runner's parser
    }
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu-reproduce.sh"), str(tmp_path / "out"), "cifar10", "resnet56"],
        env={**env, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "none.tar.gz not found" in result.stderr, result.stderr
    assert (tmp_path / "out" / "grid.json").is_file() and (tmp_path / "out" / "resume.tar.00").is_file()
    jobs = json.loads((tmp_path / "out" / "grid.json").read_text())["jobs"]
    assert sorted(jobs) == ["resnet56/s0/cnn", "resnet56/s0/ic_only"]  # VARIANTS: no SDN training in this grid
    assert all(job["train_args"] == ["--compile"] for job in jobs.values())


def test_resume_from_is_ignored_when_the_work_folder_has_a_state(tmp_path: Path) -> None:
    first = Runner(_settings(tmp_path, work=tmp_path / "a"))
    first.environment = {}
    first.pack(first.summary())  # OUT: a resume pack holding a's state
    Runner(_settings(tmp_path, work=tmp_path / "b"))  # b has its own state now
    second = Runner(_settings(tmp_path, work=tmp_path / "b", resume_from=tmp_path / "out"))
    assert len(second.state.data["calls"]) == 2  # b's own two calls, not a's one
    fresh = Runner(_settings(tmp_path, work=tmp_path / "c", resume_from=tmp_path / "out"))
    assert len(fresh.state.data["calls"]) == 2  # a's call, carried in, and this one


def test_choose_jobs_moves_up_only_for_a_real_gain() -> None:
    from sdn.reproduce.concurrency import choose_jobs

    assert choose_jobs({1: 100.0, 2: 180.0, 3: 200.0, 4: 205.0}) == 3  # 4 adds only 2.5%
    assert choose_jobs({1: 100.0, 2: 98.0, 3: 120.0}) == 3  # a dip at 2 does not stop the walk
    assert choose_jobs({1: 100.0, 2: 103.0}) == 1
    with pytest.raises(ValueError, match="no measured rates"):
        choose_jobs({})


def test_jobs_auto_is_measured_once_and_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []

    def fake_run(command: list[str], **kwargs: object) -> subprocess.CompletedProcess[bytes]:
        calls.append(command)
        out = Path(command[command.index("--json-out") + 1])
        out.write_text(json.dumps({"rates": {"1": 100.0, "2": 150.0}, "chosen": 2}))
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(subprocess, "run", fake_run)
    runner = Runner(_settings(tmp_path, jobs=0))
    (runner.work / "logs").mkdir()
    assert runner.resolve_jobs() == 2
    assert Runner(_settings(tmp_path, jobs=0)).resolve_jobs() == 2 and len(calls) == 1  # kept in state.json
    assert calls[0][2] == "sdn.reproduce.concurrency" and "resnet56" in calls[0]


def test_prepared_data_is_reused_by_a_later_call(fake_cifar_archive, tmp_path: Path) -> None:
    archive = tmp_path / "c10.tar.gz"
    fake_cifar_archive(archive, train_per_class=10, test_per_class=4)
    settings = _settings(tmp_path, archive=archive, prepare_args=["--holdout", "6"])
    first = Runner(settings)
    (first.work / "logs").mkdir()
    first.prepare_data()
    meta = first.work / "data" / "meta.json"
    assert json.loads(meta.read_text())["sizes"] == {"train": 24, "holdout": 6, "test": 12}
    assert not (first.work / "raw").exists()  # the extracted images are removed
    stamp = meta.stat().st_mtime_ns
    second = Runner(settings)
    second.prepare_data()
    assert meta.stat().st_mtime_ns == stamp and "prepare_s" not in second.call
