"""The SDN as an MLflow model: logged by the early-exit job, registered, and served over HTTP.

The served answers are the offline analysis' (same class and exit per test image at the held-out threshold), and
each bad input is a clear error of its own while the server keeps serving.
"""

from __future__ import annotations

import base64
import io as _io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sdn import tracking
from sdn.analysis import early_exit as ee
from sdn.analysis.arrays import softmax
from sdn.cli import main
from sdn.data.prepare import load_prepared
from sdn.outputs import exit_costs, load, load_split

STARTUP_TIMEOUT_S = 180


def encoded(array: np.ndarray) -> str:
    buffer = _io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def test_images(data: Path) -> list[str]:
    return [encoded(img.permute(1, 2, 0).numpy()) for img in load_prepared(data).split("test").images]


test_images.__test__ = False  # a helper, not a test


def offline(model: Path, threshold: float) -> ee.ExitResult:
    outputs = load(model.parent / "outputs.npz")
    logits, labels = load_split(outputs, "test")
    return ee.simulate(softmax(logits), labels, exit_costs(outputs, logits.shape[0]), "confidence", threshold)


def package(model: Path, data: Path, store: Path, monkeypatch: pytest.MonkeyPatch, tags: str) -> Path:
    """Evaluate the model and run the early-exit job (which logs and registers the MLflow model)."""
    from sdn.evaluate import evaluate

    monkeypatch.setenv("SDN_TRACKING_URI", f"sqlite:///{store}")
    monkeypatch.setenv("SDN_MLFLOW_TAGS", tags)
    monkeypatch.delenv("SDN_TRACKING", raising=False)
    monkeypatch.delenv("SDN_EXPERIMENT", raising=False)
    evaluate(model, data, model.parent / "outputs.npz", device="cpu")
    out = model.parent / "analysis" / "early_exit"
    argv = ["early-exit", "--outputs", str(model.parent / "outputs.npz"), "--out", str(out)]
    assert main([*argv, "--budgets", "0.75", "--checkpoint", str(model)]) == 0
    return out


def test_early_exit_job_registers_a_model_that_answers_like_the_analysis(tiny, tmp_path, monkeypatch) -> None:
    import mlflow
    import pandas as pd
    from mlflow.exceptions import MlflowException

    data = tiny.prepared(tmp_path / "data", n_test=32)
    model = tiny.train(data, tmp_path / "run", "sdn", seed=1)
    store = tmp_path / "mlflow.db"
    tags = "rule=early_exit,dataset=toy,arch=tiny_test,seed=1,variant=sdn,workflow_id=wf9"
    out = package(model, data, store, monkeypatch, tags)
    summary = json.loads((out / "summary.json").read_text())
    threshold = summary["policies"]["confidence"]["tolerance"]["threshold"]

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{store}")
    registered = client.get_registered_model("sdn-toy-tiny_test-sdn")
    assert registered.tags == {"dataset": "toy", "arch": "tiny_test", "variant": "sdn"}
    (version,) = client.search_model_versions("name = 'sdn-toy-tiny_test-sdn'")
    assert (
        version.tags["workflow_id"] == "wf9" and version.tags["seed"] == "1" and version.tags["rule"] == "early_exit"
    )
    run = client.get_run(version.run_id)
    assert run.data.tags["rule"] == "early_exit"

    # uploading the journal again (sdn sync-mlflow) adds no second version
    journal_file = tracking.journal_path(out, "early-exit")
    journal = json.loads(journal_file.read_text())
    assert journal["models"] == [{"path": "mlflow_model", "name": "sdn-toy-tiny_test-sdn"}]
    tracking.upload_journal(journal, base_dir=out, uri=f"sqlite:///{store}")
    assert len(client.search_model_versions("name = 'sdn-toy-tiny_test-sdn'")) == 1

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    served = mlflow.pyfunc.load_model("models:/sdn-toy-tiny_test-sdn/1")
    params = served.metadata.get_params_schema().to_dict()
    assert {p["name"]: p["default"] for p in params} == {"threshold": threshold, "policy": "confidence"}
    frame = pd.DataFrame({"image": test_images(data)})
    answers = served.predict(frame)
    expected = offline(model, threshold)
    assert answers["exit_index"].tolist() == expected.exit_index.tolist()
    assert answers["class_index"].tolist() == expected.predictions.tolist()
    assert answers["error"].isna().all()
    everyone_first = served.predict(frame, params={"threshold": 0.0})
    assert set(everyone_first["exit_index"]) == {0}
    with pytest.raises(MlflowException, match=r"must lie in \[0, 1\], got 1.5"):
        served.predict(frame, params={"threshold": 1.5})


# ------------------------------------------------------------------------------------------- the real server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def invoke(base: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"{base}/invocations", json.dumps(body).encode(), {"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def images_request(images: list[str], **params: object) -> dict:
    body: dict = {"dataframe_split": {"columns": ["image"], "data": [[image] for image in images]}}
    if params:
        body["params"] = params
    return body


def wait_ready(base: str, server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"mlflow models serve exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{base}/ping", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise AssertionError(
        f"mlflow models serve did not answer within {STARTUP_TIMEOUT_S} s:\n{log.read_text()[-3000:]}"
    )


@pytest.mark.slow
def test_mlflow_models_serve_answers_and_survives_bad_input(tmp_path, monkeypatch, stop_server) -> None:
    """`mlflow models serve -m models:/sdn-synthetic-mobilenet-sdn/1` on 127.0.0.1, queried over HTTP."""
    from sdn.config import paper_recipe
    from sdn.data.datasets import SyntheticSpec
    from sdn.data.prepare import prepare
    from sdn.train import train

    spec = SyntheticSpec(num_classes=4, input_size=32, train_size=64, test_size=24)
    data = prepare("synthetic", data_root=tmp_path, out_dir=tmp_path / "data", synthetic=spec)
    recipe = paper_recipe("sdn", "mobilenet").with_overrides({"epochs": 1, "batch_size": 32})
    model = train(arch="mobilenet", recipe=recipe, data_dir=data, out_dir=tmp_path / "run", seed=0, device="cpu")
    store = tmp_path / "mlflow.db"
    out = package(model, data, store, monkeypatch, "rule=early_exit,dataset=synthetic,arch=mobilenet,variant=sdn")
    threshold = json.loads((out / "summary.json").read_text())["policies"]["confidence"]["tolerance"]["threshold"]

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = [str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m"]
    command += ["models:/sdn-synthetic-mobilenet-sdn/1", "--env-manager", "local"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    venv_bin = str(Path(sys.executable).parent)  # `mlflow models serve` runs `uvicorn` from PATH
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{store}"}
    env["PATH"] = os.pathsep.join([venv_bin, env.get("PATH", "")])
    log = tmp_path / "serve.log"
    with log.open("w") as sink:
        server = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=sink, stderr=sink, start_new_session=True)
    try:
        wait_ready(base, server, log)
        images = test_images(data)
        status, body = invoke(base, images_request(images))
        assert status == 200, body
        rows = body["predictions"]
        expected = offline(model, threshold)
        assert [r["exit_index"] for r in rows] == expected.exit_index.tolist()
        assert [r["class_index"] for r in rows] == expected.predictions.tolist()
        assert all(r["error"] is None and 0 < r["cost_fraction"] <= 1 for r in rows)

        gray = encoded(np.zeros((32, 32), dtype=np.uint8))
        small = encoded(np.zeros((16, 16, 3), dtype=np.uint8))
        text = base64.b64encode(b"hello, not an image").decode()
        status, body = invoke(base, images_request([images[0], text, small, gray, "%%%"]))
        assert status == 200, body
        good, *bad = body["predictions"]
        assert good["error"] is None and good["exit_index"] == rows[0]["exit_index"]
        assert "#1: not an image file" in bad[0]["error"]
        assert "#2: 16x16 pixels; this model takes 32x32" in bad[1]["error"]
        assert "#3: grayscale" in bad[2]["error"]
        assert "#4: not a base64-encoded image" in bad[3]["error"]
        assert all(r["class_index"] is None for r in bad)

        status, body = invoke(base, images_request([]))
        assert status == 400 and "empty request" in body["message"], body
        for threshold_out in (1.5, -0.1):
            status, body = invoke(base, images_request(images[:2], threshold=threshold_out))
            assert status == 400 and "must lie in [0, 1]" in body["message"], body

        status, body = invoke(base, images_request(images[:3], threshold=0.0))  # still serving; override applies
        assert status == 200 and [r["exit_index"] for r in body["predictions"]] == [0, 0, 0]
    finally:
        stop_server(server)


def test_registered_model_name_comes_from_the_run_tags() -> None:
    tags = {"dataset": "digits", "arch": "resnet56", "variant": "ic_only", "seed": "0"}
    assert tracking.registered_model_name(tags) == "sdn-digits-resnet56-ic_only"
    with pytest.raises(ValueError, match="no tag variant"):
        tracking.registered_model_name({"dataset": "digits", "arch": "resnet56"})
