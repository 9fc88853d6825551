"""The real ``mlflow server`` on 127.0.0.1 serves a store filled by ``track``; every run is found via REST."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from sdn import tracking

pytestmark = pytest.mark.slow

STARTUP_TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def listening_addresses(port: int) -> list[str]:
    """Local addresses (hex, as in /proc/net/tcp*) of sockets listening on ``port``."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, port_hex = fields[1].rsplit(":", 1)
            if int(port_hex, 16) == port and fields[3] == "0A":  # 0A: LISTEN
                found.append(address)
    return found


def post_json(url: str, body: dict) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def wait_healthy(base: str, server: subprocess.Popen) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"mlflow server exited with {server.returncode}")
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise AssertionError(f"mlflow server did not answer {base}/health within {STARTUP_TIMEOUT_S} s")


def test_server_on_loopback_finds_every_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stop_server) -> None:
    db = tmp_path / "mlflow.db"
    store = f"sqlite:///{db}"
    monkeypatch.setenv("SDN_TRACKING_URI", store)
    monkeypatch.delenv("SDN_TRACKING", raising=False)
    monkeypatch.delenv("SDN_EXPERIMENT", raising=False)
    journal_ids = {}
    for variant in ("cnn", "sdn", "ic_only"):
        tags = {"rule": "train", "wildcards": {"variant": variant}, "workflow_id": "wf1", "git_commit": "abc"}
        monkeypatch.setenv("SDN_MLFLOW_TAGS", json.dumps(tags))
        out_dir = tmp_path / "results" / variant
        with tracking.track("train", {"variant": variant}, out_dir=out_dir) as run:
            run.log_metrics({"loss": 1.0}, step=0)
        journal = json.loads(tracking.journal_path(out_dir, "train").read_text())
        assert journal["synced"] is True
        journal_ids[journal["journal_id"]] = variant

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    command = [str(mlflow_bin), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    command += ["--backend-store-uri", store]
    server = subprocess.Popen(
        command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        wait_healthy(base, server)
        addresses = listening_addresses(port)
        assert addresses and all(a == "0100007F" for a in addresses), addresses  # 127.0.0.1 only

        with urllib.request.urlopen(f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name=sdn") as resp:
            experiment_id = json.loads(resp.read())["experiment"]["experiment_id"]
        found = post_json(
            f"{base}/api/2.0/mlflow/runs/search", {"experiment_ids": [experiment_id], "max_results": 50}
        )
        runs = found.get("runs", [])
        assert len(runs) == 3
        seen = {}
        for remote in runs:
            tags = {t["key"]: t["value"] for t in remote["data"]["tags"]}
            assert tags["rule"] == "train" and tags["workflow_id"] == "wf1" and tags["git_commit"] == "abc"
            assert tags["sdn.command"] == "train" and remote["info"]["status"] == "FINISHED"
            seen[tags["sdn.journal_id"]] = tags["variant"]
        assert seen == journal_ids
    finally:
        stop_server(server)


def test_results_copied_elsewhere_still_serve_artifacts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stop_server
) -> None:
    """Artifact locations name no folder: a copied results folder, served with --artifacts-destination, reads."""
    import shutil

    from mlflow.tracking import MlflowClient

    results = tmp_path / "cluster" / "results"
    monkeypatch.setenv("SDN_TRACKING_URI", f"sqlite:///{results / 'mlflow.db'}")
    monkeypatch.delenv("SDN_TRACKING", raising=False)
    monkeypatch.delenv("SDN_EXPERIMENT", raising=False)
    monkeypatch.delenv("SDN_MLFLOW_TAGS", raising=False)
    out_dir = results / "digits" / "tiny" / "s0" / "sdn"
    out_dir.mkdir(parents=True)
    (out_dir / "history.csv").write_text("epoch,loss\n1,0.5\n")
    with tracking.track("train", {}, out_dir=out_dir) as run:
        run.log_artifact(out_dir / "history.csv")

    laptop = tmp_path / "laptop" / "results"
    shutil.copytree(results, laptop)
    shutil.rmtree(tmp_path / "cluster")  # nothing of the first machine is left
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--workers", "1", "--backend-store-uri", f"sqlite:///{laptop / 'mlflow.db'}"]
    command += ["--artifacts-destination", str(laptop / "mlartifacts")]
    server = subprocess.Popen(
        command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        wait_healthy(base, server)
        client = MlflowClient(tracking_uri=base)
        (remote,) = client.search_runs([client.get_experiment_by_name("sdn").experiment_id])
        assert [a.path for a in client.list_artifacts(remote.info.run_id)] == ["history.csv"]
        fetched = client.download_artifacts(remote.info.run_id, "history.csv", str(tmp_path))
        assert Path(fetched).read_text() == "epoch,loss\n1,0.5\n"
    finally:
        stop_server(server)
