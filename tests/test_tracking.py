"""Tracking: journal first, MLflow upload at the end, failures as one warning, sync later, 8 concurrent jobs."""

from __future__ import annotations

import json
import logging
import multiprocessing
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from sdn import tracking
from sdn.cli import main as cli_main

TRACKING_ENV = ("SDN_TRACKING", "SDN_TRACKING_URI", "MLFLOW_TRACKING_URI", "SDN_EXPERIMENT", "SDN_MLFLOW_TAGS")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in TRACKING_ENV:
        monkeypatch.delenv(name, raising=False)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def sqlite_uri(path: Path) -> str:
    return f"sqlite:///{path.resolve()}"


def tracking_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "sdn.tracking" and r.levelno == logging.WARNING]


def one_journal(folder: Path) -> dict:
    journals = sorted(folder.glob(tracking.JOURNAL_GLOB))
    assert len(journals) == 1, journals
    return json.loads(journals[0].read_text())


def test_import_does_not_load_mlflow() -> None:
    code = "import sys, sdn, sdn.tracking, sdn.cli; print('mlflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_config_from_environment() -> None:
    env = {
        "MLFLOW_TRACKING_URI": "http://other:5000",
        "SDN_TRACKING_URI": "sqlite:///x.db",
        "SDN_EXPERIMENT": "repro",
        "SDN_MLFLOW_TAGS": json.dumps(
            {"rule": "train", "wildcards": {"arch": "vgg16", "seed": 0}, "git_commit": "ab"}
        ),
    }
    config = tracking.tracking_config(env)
    assert config.enabled and config.uri == "sqlite:///x.db" and config.experiment == "repro"
    assert config.tags == {"rule": "train", "arch": "vgg16", "seed": "0", "git_commit": "ab"}
    assert tracking.tracking_config({"MLFLOW_TRACKING_URI": "http://h:1"}).uri == "http://h:1"
    assert tracking.tracking_config({}).uri is None
    assert tracking.tracking_config({}).experiment == "sdn"
    assert not tracking.tracking_config({"SDN_TRACKING": "off"}).enabled
    assert tracking.tracking_config({"SDN_MLFLOW_TAGS": "[1, 2]"}).tags == {}
    readable = tracking.tracking_config({"SDN_MLFLOW_TAGS": "rule=train,dataset=digits,seed=0,workflow_id="}).tags
    assert readable == {"rule": "train", "dataset": "digits", "seed": "0", "workflow_id": ""}
    assert tracking.tracking_config({"SDN_MLFLOW_TAGS": "no pairs here"}).tags == {}


def test_flatten_params_respects_mlflow_limits() -> None:
    flat = tracking.flatten_params(
        {"recipe": {"lr": 0.1, "milestones": [50, 75]}, "long": "x" * 7000, "bad key!": None, "path": Path("/a")}
    )
    assert flat["recipe.lr"] == "0.1"
    assert flat["recipe.milestones"] == "[50, 75]"
    assert len(flat["long"]) == tracking.MAX_PARAM_VALUE_LENGTH and flat["long"].endswith("...")
    assert flat["bad key_"] == "None"
    assert flat["path"] == "/a"
    assert len(tracking.clean_key("k" * 300)) == tracking.MAX_KEY_LENGTH
    with pytest.raises(ValueError, match="params must be a mapping"):
        tracking.flatten_params([1, 2])


def test_journal_only_without_uri(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    (tmp_path / "fig.png").write_bytes(b"png")
    with tracking.track("evaluate", {"split": "test"}, out_dir=tmp_path) as run:
        run.log_metrics({"top1": 0.5}, step=3)
        run.log_artifact(tmp_path / "fig.png")
        run.set_tags({"extra": 1})
    journal = one_journal(tmp_path)
    assert journal["status"] == "FINISHED" and journal["synced"] is False
    assert journal["params"] == {"split": "test"}
    assert journal["metrics"][0]["key"] == "top1" and journal["metrics"][0]["step"] == 3
    assert journal["metrics"][0]["value"] == 0.5
    assert journal["artifacts"] == ["fig.png"]
    assert journal["tags"]["sdn.command"] == "evaluate" and journal["tags"]["extra"] == "1"
    assert tracking_warnings(caplog) == []


def test_failing_body_is_journaled_failed_and_propagates(tmp_path: Path) -> None:
    with pytest.raises(ZeroDivisionError):
        with tracking.track("train", {}, out_dir=tmp_path) as run:
            run.log_metrics({"loss": 1.0}, step=0)
            _ = 1 / 0
    journal = one_journal(tmp_path)
    assert journal["status"] == "FAILED" and journal["metrics"][0]["value"] == 1.0


def test_tracking_off_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SDN_TRACKING", "off")
    monkeypatch.setenv("SDN_TRACKING_URI", f"http://127.0.0.1:{closed_port()}")
    with tracking.track("train", {"a": 1}, out_dir=tmp_path) as run:
        run.log_metrics({"loss": 1.0})
    assert list(tmp_path.iterdir()) == []


def test_mlflow_missing_warns_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    caplog.set_level(logging.WARNING)
    monkeypatch.setitem(sys.modules, "mlflow", None)
    monkeypatch.setitem(sys.modules, "mlflow.tracking", None)
    monkeypatch.setattr(tracking, "_mlflow_missing_warned", False)
    monkeypatch.setenv("SDN_TRACKING_URI", sqlite_uri(tmp_path / "store" / "mlflow.db"))
    for name in ("a", "b"):
        with tracking.track("train", {}, out_dir=tmp_path / name) as run:
            run.log_metrics({"loss": 2.0}, step=1)
        assert one_journal(tmp_path / name)["synced"] is False
    warnings = tracking_warnings(caplog)
    assert len(warnings) == 1 and "mlflow is not installed" in warnings[0]
    assert not (tmp_path / "store").exists()


def test_lock_retry_recovers_and_gives_up(monkeypatch: pytest.MonkeyPatch) -> None:
    import sqlite3

    monkeypatch.setattr(tracking, "LOCK_BASE_DELAY_S", 0.001)
    calls = {"n": 0}

    def flaky() -> str:
        calls["n"] += 1
        if calls["n"] < 3:
            try:
                raise sqlite3.OperationalError("database is locked")
            except sqlite3.OperationalError as err:
                raise RuntimeError("store error") from err
        return "ok"

    assert tracking.with_lock_retry(flaky) == "ok" and calls["n"] == 3

    def always_locked() -> None:
        calls["n"] += 1
        raise sqlite3.OperationalError("database is locked")

    calls["n"] = 0
    with pytest.raises(sqlite3.OperationalError):
        tracking.with_lock_retry(always_locked, attempts=4)
    assert calls["n"] == 4

    def other_error() -> None:
        calls["n"] += 1
        raise ValueError("no such table")

    calls["n"] = 0
    with pytest.raises(ValueError):
        tracking.with_lock_retry(other_error)
    assert calls["n"] == 1


def test_unreachable_server_then_sync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    caplog.set_level(logging.WARNING)
    down = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("SDN_TRACKING_URI", down)
    monkeypatch.setenv("SDN_MLFLOW_TAGS", json.dumps({"rule": "train", "wildcards": {"arch": "tiny"}}))
    results = tmp_path / "results"
    out_dir = results / "digits" / "tiny" / "s0" / "sdn"
    out_dir.mkdir(parents=True)
    (out_dir / "history.csv").write_text("epoch,loss\n0,1.0\n")
    with tracking.track("train", {"recipe": {"lr": 0.1, "epochs": 2}}, out_dir=out_dir) as run:
        for epoch in range(2):
            run.log_metrics({"loss": 1.0 / (epoch + 1), "acc": 0.1 * epoch}, step=epoch)
        run.log_artifact(out_dir / "history.csv")

    journal = one_journal(out_dir)
    assert journal["synced"] is False and journal["status"] == "FINISHED"
    assert down in journal["sync"]["uri"] and "unreachable" in journal["sync"]["error"]
    warnings = tracking_warnings(caplog)
    assert len(warnings) == 1 and down in warnings[0]
    assert (out_dir / "history.csv").read_text().startswith("epoch")

    store = sqlite_uri(tmp_path / "store" / "mlflow.db")
    assert cli_main(["sync-mlflow", "--results", str(results), "--uri", store]) == 0
    synced = one_journal(out_dir)
    assert synced["synced"] is True

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=store)
    experiment = client.get_experiment_by_name("sdn")
    assert experiment.artifact_location == "mlflow-artifacts:/sdn"  # names no machine's folder
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    remote = runs[0]
    assert remote.info.run_id == synced["sync"]["run_id"] and remote.info.status == "FINISHED"
    assert remote.data.params == {"recipe.lr": "0.1", "recipe.epochs": "2"}
    assert remote.data.tags["rule"] == "train" and remote.data.tags["arch"] == "tiny"
    assert remote.data.tags["sdn.journal_id"] == journal["journal_id"]
    assert [m.value for m in client.get_metric_history(remote.info.run_id, "loss")] == [1.0, 0.5]
    stored = tracking.local_artifact_root(store, remote.info.artifact_uri)
    assert stored is not None and [p.name for p in stored.iterdir()] == ["history.csv"]
    assert stored.is_relative_to(tmp_path / "store" / "mlartifacts")

    assert cli_main(["sync-mlflow", "--results", str(results), "--uri", store]) == 0
    assert len(client.search_runs([experiment.experiment_id])) == 1


def test_sync_reuses_a_half_uploaded_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A journal whose earlier upload died half-way (run created, journal not marked) is completed, not doubled."""
    store = sqlite_uri(tmp_path / "mlflow.db")
    with tracking.track("evaluate", {"k": 1}, out_dir=tmp_path / "r") as run:
        run.log_metrics({"top1": 0.9}, step=0)
    journal = one_journal(tmp_path / "r")
    first = tracking.upload_journal(journal, base_dir=tmp_path / "r", uri=store)
    summary = tracking.sync_results(tmp_path, store)
    assert len(summary.uploaded) == 1 and one_journal(tmp_path / "r")["sync"]["run_id"] == first

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=store)
    assert len(client.search_runs([client.get_experiment_by_name("sdn").experiment_id])) == 1
    assert len(client.get_metric_history(first, "top1")) == 1


STEPS = 10
KEYS = ("loss", "acc", "top1", "top5", "lr")  # 5 keys x 10 steps = 50 metrics per job


def _concurrent_job(uri: str, out_dir: str, index: int) -> bool:
    import os

    os.environ["SDN_TRACKING_URI"] = uri
    os.environ["SDN_MLFLOW_TAGS"] = json.dumps({"rule": "train", "wildcards": {"job": index}})
    from sdn.tracking import track

    with track("train", {"job": index}, out_dir=out_dir) as run:
        for step in range(STEPS):
            run.log_metrics({key: index * 1000 + step for key in KEYS}, step=step)
    return bool(json.loads(next(Path(out_dir).glob(".mlflow-journal*.json")).read_text())["synced"])


@pytest.mark.slow  # 8 fresh interpreters each importing torch and mlflow: CPU-bound, ~30-90 s on 2 cores
def test_eight_concurrent_jobs_on_one_sqlite_store(tmp_path: Path) -> None:
    store = sqlite_uri(tmp_path / "mlflow.db")
    assert cli_main(["tracking-init", "--uri", store]) == 0
    jobs = 8
    context = multiprocessing.get_context("spawn")
    with context.Pool(jobs) as pool:
        synced = pool.starmap(_concurrent_job, [(store, str(tmp_path / f"job{i}"), i) for i in range(jobs)])
    assert synced == [True] * jobs

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=store)
    runs = client.search_runs([client.get_experiment_by_name("sdn").experiment_id], max_results=100)
    assert len(runs) == jobs
    seen_jobs = set()
    for remote in runs:
        index = int(remote.data.tags["job"])
        seen_jobs.add(index)
        for key in KEYS:
            history = client.get_metric_history(remote.info.run_id, key)
            assert sorted((m.step, m.value) for m in history) == [(s, index * 1000 + s) for s in range(STEPS)]
    assert seen_jobs == set(range(jobs))


def test_metric_names_run_names_and_tags_through_mlflow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Per-exit metrics say which exit (the last is ``final`` in every run kind); names and tags are one scheme."""
    from mlflow.tracking import MlflowClient

    from sdn.commands.train import epoch_metrics

    store = sqlite_uri(tmp_path / "results" / "mlflow.db")
    monkeypatch.setenv("SDN_TRACKING_URI", store)
    wildcards = {"dataset": "digits", "arch": "resnet56", "seed": "0"}
    for variant, exits in (("cnn", 1), ("sdn", 3)):
        tags = {"rule": "train", "wildcards": {**wildcards, "variant": variant}}
        monkeypatch.setenv("SDN_MLFLOW_TAGS", json.dumps(tags))
        row = {"epoch": 1, "lr": 0.1, "loss": 2.0, **{f"holdout_top1_exit{i}": 10.0 * i for i in range(exits)}}
        with tracking.track("train", {}, out_dir=tmp_path / "results" / variant) as run:
            run.log_metrics(epoch_metrics(row), step=1)
    monkeypatch.delenv("SDN_MLFLOW_TAGS")
    monkeypatch.chdir(tmp_path)
    with tracking.track("confusion", {}, out_dir=Path("/tmp/x")):  # by hand: no wildcards, an absolute --out
        pass

    client = MlflowClient(tracking_uri=store)
    runs = {r.info.run_name: r for r in client.search_runs([client.get_experiment_by_name("sdn").experiment_id])}
    assert set(runs) == {"digits/resnet56/s0/cnn: train", "digits/resnet56/s0/sdn: train", "confusion: tmp/x"}
    cnn, sdn = runs["digits/resnet56/s0/cnn: train"], runs["digits/resnet56/s0/sdn: train"]
    assert set(cnn.data.metrics) == {"train/lr", "train/loss", "holdout/top1/final"}
    assert set(sdn.data.metrics) == {
        "train/lr",
        "train/loss",
        "holdout/top1/ic1",
        "holdout/top1/ic2",
        "holdout/top1/final",
    }
    assert cnn.data.metrics["holdout/top1/final"] == 0.0 and sdn.data.metrics["holdout/top1/final"] == 20.0
    for remote, variant in ((cnn, "cnn"), (sdn, "sdn")):
        tags = remote.data.tags
        assert (tags["dataset"], tags["arch"], tags["seed"], tags["variant"]) == ("digits", "resnet56", "0", variant)
        assert tags["step"] == "train" and tags["rule"] == "train"
    assert runs["confusion: tmp/x"].data.tags["step"] == "confusion"
    # one filter finds every run of a variant, whatever its kind
    found = client.search_runs(
        [cnn.info.experiment_id], filter_string="tags.variant = 'sdn' and tags.arch = 'resnet56'"
    )
    assert [r.info.run_name for r in found] == ["digits/resnet56/s0/sdn: train"]
    assert tracking.metric_key("test", "top5", 0, 7) == "test/top5/ic1"
