"""Tracking under faults: half-alive servers, a full disk, corrupt journals, concurrent first use of a store."""

from __future__ import annotations

import errno
import json
import logging
import multiprocessing
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from sdn import tracking
from sdn.cli import main as cli_main

REPO = Path(__file__).resolve().parents[1]
TRACKING_ENV = (
    "SDN_TRACKING",
    "SDN_TRACKING_URI",
    "MLFLOW_TRACKING_URI",
    "SDN_EXPERIMENT",
    "SDN_MLFLOW_TAGS",
    "SDN_TRACKING_DEADLINE",
    *tracking.MLFLOW_HTTP_DEFAULTS,
)
HANG_BOUND_S = 60  # "does not hang": generous, never a timing measurement


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in TRACKING_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(tracking, "_unavailable", {})


def one_journal(folder: Path) -> dict:
    journals = sorted(folder.glob(tracking.JOURNAL_GLOB))
    assert len(journals) == 1, journals
    return json.loads(journals[0].read_text())


# ----------------------------------------------------------------------------------------------- fake servers


class _Handler(BaseHTTPRequestHandler):
    health_ok = False  # answer /health with 200 (the rest per `mode`)
    mode = "503"  # "503": answer 503; "silent": never answer
    release = threading.Event()

    def _answer(self) -> None:
        if self.health_ok and self.path.rstrip("/").endswith("/health"):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"OK")
            return
        if self.mode == "silent":
            self.release.wait(600)  # hold the connection open, say nothing
            return
        self.send_response(503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST = do_PATCH = do_PUT = _answer  # noqa: N815 - http.server's naming

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def serve(kind: str) -> Iterator[str]:
    """A half-alive MLflow server on 127.0.0.1: 503 or silence (``kind``), prefixed ``healthy-``: all but /health."""
    healthy, _, mode = kind.rpartition("-")
    release = threading.Event()
    handler = type("Handler", (_Handler,), {"health_ok": bool(healthy), "mode": mode, "release": release})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        release.set()
        server.shutdown()
        server.server_close()


@pytest.fixture(params=["503", "silent", "healthy-503", "healthy-silent"])
def broken_server(request: pytest.FixtureRequest) -> Iterator[str]:
    with serve(request.param) as url:
        yield url


def test_half_alive_server_never_stalls_a_job(tmp_path: Path, broken_server: str) -> None:
    """The command finishes well within a minute with exit 0 and its outputs; the journal waits for sync."""
    results = tmp_path / "results"
    results.mkdir()
    out = tmp_path / "report"
    env = {**os.environ, "SDN_TRACKING_URI": broken_server, "PYTHONPATH": str(REPO)}  # the defaults, no tuning
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "sdn", "report", "--results", str(results), "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=5 * HANG_BOUND_S,
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr[-3000:]
    assert elapsed < HANG_BOUND_S, f"took {elapsed:.0f} s against {broken_server}"
    assert (out / "summary.md").is_file()
    journal = one_journal(out)
    assert journal["status"] == "FINISHED" and journal["synced"] is False
    assert broken_server in journal["sync"]["uri"] and journal["sync"]["error"]
    assert "sync-mlflow" in done.stderr and broken_server in done.stderr  # one warning says what to do


@pytest.mark.parametrize("kind", ["503", "silent"])
def test_unavailable_server_is_not_contacted_again(monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    with serve(kind) as url:
        with pytest.raises(tracking.TrackingUnavailable, match=url):
            tracking.check_reachable(url, timeout=1)
        calls = []
        monkeypatch.setattr(tracking.urllib.request, "urlopen", lambda *a, **k: calls.append(a))
        with pytest.raises(tracking.TrackingUnavailable):
            tracking.check_reachable(url)
        assert calls == []


def test_deadline_cuts_off_what_mlflow_settings_do_not_cover() -> None:
    with pytest.raises(tracking.TrackingUnavailable, match="did not finish the upload within 0.2 s"):
        tracking.call_with_deadline(lambda: time.sleep(30), deadline=0.2, what="the upload", uri="sqlite:///x.db")
    assert "sqlite:///x.db" in tracking._unavailable
    assert tracking.call_with_deadline(lambda: 7, deadline=5, what="x", uri="u") == 7
    with pytest.raises(KeyError):
        tracking.call_with_deadline(lambda: {}["k"], deadline=5, what="x", uri="u")


def test_mlflow_http_settings_bounded_unless_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "9")
    with tracking.bounded_mlflow_http():
        assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "9"
        assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "1"
        assert os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] == "0"
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ


def test_deadline_from_environment(caplog: pytest.LogCaptureFixture) -> None:
    assert tracking.tracking_config({"SDN_TRACKING_DEADLINE": "12"}).deadline == 12.0
    assert tracking.tracking_config({}).deadline is None
    for bad in ("nan", "-1", "soon", "1e9"):
        assert tracking.tracking_config({"SDN_TRACKING_DEADLINE": bad}).deadline is None
    assert "SDN_TRACKING_DEADLINE" in caplog.text
    assert tracking.deadline_for("http://h:5000") == tracking.DEADLINE_S <= HANG_BOUND_S / 2  # room for the rest
    assert tracking.deadline_for("sqlite:///x.db") == tracking.LOCAL_STORE_DEADLINE_S
    assert tracking.deadline_for("http://h:5000", 12.0) == 12.0


# ----------------------------------------------------------------------------------------------- disk full


def _disk_full_after(monkeypatch: pytest.MonkeyPatch, good_writes: int) -> None:
    real = tracking.write_json
    count = {"n": 0}

    def write_json(path: Path, obj: object) -> None:
        count["n"] += 1
        if count["n"] > good_writes:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real(path, obj)

    monkeypatch.setattr(tracking, "write_json", write_json)


def test_disk_full_ends_the_journal_failed_not_running(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _disk_full_after(monkeypatch, good_writes=1)  # the journal at start is written, nothing after
    monkeypatch.setattr(tracking, "JOURNAL_FLUSH_INTERVAL_S", 0.0)  # every log_metrics tries to write
    with pytest.raises(OSError, match="No space left"):  # the job's own error propagates, not tracking's
        with tracking.track("train", {"recipe": {"lr": 0.1}}, out_dir=tmp_path) as run:
            for step in range(50):
                run.log_metrics({"loss": 1.0, "acc": 50.0}, step=step)  # tracking itself never raises
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "model.pt"))
    journal = one_journal(tmp_path)
    assert journal["status"] == "FAILED" and journal["end_time"] is not None
    assert "No space left" in journal["journal_error"]
    assert journal["truncated"] is True and journal["journal_id"]  # 100 metrics did not fit the first file's bytes


def test_disk_full_at_the_end_of_a_good_job_still_ends_finished(tmp_path: Path, monkeypatch) -> None:
    _disk_full_after(monkeypatch, good_writes=1)
    with tracking.track("evaluate", {"split": "test"}, out_dir=tmp_path) as run:
        run.log_metrics({"top1": 90.0})
    journal = one_journal(tmp_path)
    assert journal["status"] == "FINISHED" and journal["synced"] is False
    assert "No space left" in journal["journal_error"]


def test_journal_patch_gives_up_cleanly_when_nothing_fits(tmp_path: Path) -> None:
    path = tmp_path / "journal.json"
    path.write_text("{}")
    assert not tracking.patch_journal_in_place(path, {"journal_id": "x" * 100, "status": "FAILED"}, "disk full")
    assert path.read_text() == "{}"
    assert not tracking.patch_journal_in_place(tmp_path / "missing.json", {}, "disk full")


# ----------------------------------------------------------------------------------------------- sync


def test_sync_skips_a_corrupt_journal_and_uploads_the_rest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    results = tmp_path / "results"
    for name in ("a", "b"):
        with tracking.track("evaluate", {"k": name}, out_dir=results / name) as run:
            run.log_metrics({"top1": 50.0})
    truncated = tracking.journal_path(results / "c", "train")
    truncated.parent.mkdir()
    truncated.write_text('{"version": 1, "journal_id": "ab')
    not_object = tracking.journal_path(results / "d", "train")
    not_object.parent.mkdir()
    not_object.write_text("[1, 2]")

    store = f"sqlite:///{(tmp_path / 'store' / 'mlflow.db').resolve()}"
    assert cli_main(["sync-mlflow", "--results", str(results), "--uri", store]) == 1  # 1: not everything synced
    out = capsys.readouterr().out
    assert "uploaded 2" in out and "corrupt 2" in out and str(truncated) in out and str(not_object) in out
    warned = "\n".join(r.getMessage() for r in caplog.records if r.name == "sdn.tracking")
    assert str(truncated) in warned and str(not_object) in warned and "fix or delete" in warned
    assert one_journal(results / "a")["synced"] and one_journal(results / "b")["synced"]
    assert truncated.read_text() == '{"version": 1, "journal_id": "ab'  # left as found


# ----------------------------------------------------------------------------------------------- fresh SQLite


def _first_use_job(uri: str, out_dir: str, index: int) -> tuple[bool, str]:
    os.environ["SDN_TRACKING_URI"] = uri
    from sdn.tracking import track

    with track("train", {"job": index}, out_dir=out_dir) as run:
        run.log_metrics({"loss": float(index)}, step=0)
    journal = json.loads(next(Path(out_dir).glob(".mlflow-journal*.json")).read_text())
    return bool(journal["synced"]), str(journal.get("sync", {}).get("error", ""))


@pytest.mark.slow  # 4 fresh interpreters importing mlflow at once: ~20-60 s on 2 busy cores
def test_four_concurrent_jobs_on_a_fresh_sqlite_store(tmp_path: Path) -> None:
    store = f"sqlite:///{(tmp_path / 'fresh' / 'mlflow.db').resolve()}"  # no tracking-init: first use races
    context = multiprocessing.get_context("spawn")
    with context.Pool(4) as pool:
        outcomes = pool.starmap(_first_use_job, [(store, str(tmp_path / f"job{i}"), i) for i in range(4)])
    assert outcomes == [(True, "")] * 4

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=store)
    runs = client.search_runs([client.get_experiment_by_name("sdn").experiment_id])
    assert sorted(r.data.params["job"] for r in runs) == ["0", "1", "2", "3"]


LOCK_HOLDER = (
    "import fcntl, sys, time; f = open(sys.argv[1], 'a'); fcntl.flock(f, fcntl.LOCK_EX); "
    "print('locked', flush=True); time.sleep(600)"
)
PIPE: dict = {"stdout": subprocess.PIPE, "text": True}


def test_store_lock_wait_is_bounded(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(tmp_path / "mlflow.db.lock")], **PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(tracking.TrackingUnavailable, match="mlflow.db.lock"):
            with tracking.store_lock(uri, timeout=0.3):
                pass
    finally:
        holder.kill()
        holder.wait()
    with tracking.store_lock(uri, timeout=5):  # the dead holder's lock is gone
        (tmp_path / "mlflow.db").write_bytes(b"SQLite format 3")  # as if the store had been created here
    assert (tmp_path / "mlflow.db.lock").read_text().strip() == "ready"
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(tmp_path / "mlflow.db.lock")], **PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with tracking.store_lock(uri, timeout=0.3):  # a ready store is opened without the lock
            pass
    finally:
        holder.kill()
        holder.wait()
