"""``sdn bench`` and ``scripts/gpu-bench.sh`` on the CPU (small sizes): they run, and what they report adds up.

No timing is asserted: speed targets live in the benchmark's JSON, not in tests.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from sdn.bench import BenchSettings, project_paper_grid
from sdn.config import PAPER_EPOCHS

ROOT = Path(__file__).resolve().parents[1]


def _recipe(fast_epoch: float, reference_epoch: float) -> dict[str, float]:
    return {"fast_epoch_s": fast_epoch, "reference_epoch_s": reference_epoch}


def test_projection_sums_paper_epochs_and_credits_measured_sharing() -> None:
    results = [
        {  # every recipe measured, two jobs sharing measured at 1.5x
            "arch": "a",
            "recipes": {"sdn": _recipe(2.0, 20.0), "ic_only": _recipe(1.0, 10.0), "cnn": _recipe(1.5, 15.0)},
            "concurrency": {"jobs": 2, "gain": 1.5},
        },
        {"arch": "b", "recipes": {"sdn": _recipe(3.0, 30.0)}},  # the CNN and IC-only borrow the SDN's epoch
        {"arch": "c", "recipes": {"sdn": _recipe(1.0, 5.0)}, "concurrency": {"jobs": 2, "gain": 0.8}},
        {"arch": "d", "recipes": {"sdn": _recipe(1.0, 5.0)}, "concurrency": {"jobs": 2, "gain": 2.4}},
    ]
    p = project_paper_grid(results)
    a = PAPER_EPOCHS["cnn"] * 1.5 + PAPER_EPOCHS["ic_only"] * 1.0 + PAPER_EPOCHS["sdn"] * 2.0
    b = sum(PAPER_EPOCHS.values()) * 3.0
    c = d = sum(PAPER_EPOCHS.values()) * 1.0
    assert p["per_arch"]["a"]["fast_s"] == pytest.approx(a)
    assert p["per_arch"]["a"]["reference_s"] == pytest.approx(10 * a)
    assert p["per_arch"]["b"]["fast_s"] == pytest.approx(b)
    assert p["per_arch"]["b"]["measured_recipes"] == ["sdn"]
    assert p["serial_fast_minutes"] == pytest.approx((a + b + c + d) / 60)
    # a: credited 1.5x; b: nothing measured; c: a loss is not applied (don't share); d: capped at the job count
    assert p["projected_fast_minutes"] == pytest.approx((a / 1.5 + b + c + d / 2) / 60)
    assert p["concurrency_jobs"] == 2


def _sdn(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SDN_TRACKING": "off", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "sdn", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def test_fast_engine_autocast_follows_amp_as_sdn_train_does() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not BenchSettings(device=cpu).use_amp and BenchSettings(device=cuda).use_amp
    assert BenchSettings(device=cpu, amp=True).use_amp and not BenchSettings(device=cuda, amp=False).use_amp
    with BenchSettings(device=cpu, amp=True).autocast():
        assert torch.nn.functional.linear(torch.ones(2, 3), torch.ones(4, 3)).dtype == torch.bfloat16
    with BenchSettings(device=cpu).autocast():
        assert torch.nn.functional.linear(torch.ones(2, 3), torch.ones(4, 3)).dtype == torch.float32


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--recipes", "sdn,cnnn"], "unknown recipe"),
        (["--archs", "resnet56", "--concurrent-archs", "vgg16bn"], "not among --archs"),
        (["--concurrent-jobs", "0"], "at least 1"),
    ],
)
def test_bench_rejects_bad_arguments(tmp_path: Path, args: list[str], message: str) -> None:
    result = _sdn("bench", "--device", "cpu", *args, cwd=tmp_path)
    assert result.returncode != 0
    assert message in result.stderr


@pytest.mark.slow
def test_bench_on_cpu_reports_both_engines_and_sharing(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = _sdn(
        *("bench", "--device", "cpu", "--archs", "mobilenet", "--recipes", "sdn,cnn", "--steps", "2"),
        *("--warmup", "1", "--windows", "2", "--batch-size", "8", "--workers", "0"),
        *("--concurrent-jobs", "2", "--concurrent-seconds", "1", "--json-out", str(out)),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    doc = json.loads(out.read_text())
    (arch,) = doc["archs"]
    assert arch["arch"] == "mobilenet" and set(arch["recipes"]) == {"sdn", "cnn"}
    for r in arch["recipes"].values():
        assert r["reference_train_images_per_s"] > 0 and r["fast_train_images_per_s"] > 0
        assert r["train_speedup"] == pytest.approx(r["fast_train_images_per_s"] / r["reference_train_images_per_s"])
        assert r["cuda_graph"] is False  # no graphs on a CPU
    shared = arch["concurrency"]
    assert shared["jobs"] == 2 and len(shared["per_job_images_per_s"]) == 2
    assert shared["aggregate_images_per_s"] == pytest.approx(sum(shared["per_job_images_per_s"]))
    assert shared["gain"] == pytest.approx(
        shared["aggregate_images_per_s"] / arch["recipes"]["sdn"]["fast_train_images_per_s"]
    )
    projection = doc["projection"]
    assert projection["per_arch"]["mobilenet"]["measured_recipes"] == ["cnn", "sdn"]
    assert projection["projected_fast_minutes"] <= projection["serial_fast_minutes"]
    assert "mobilenet  sdn, 2 jobs sharing the device" in result.stdout


@pytest.mark.slow
def test_gpu_bench_script_runs_on_cpu(fake_cifar_archive: Any, tmp_path: Path) -> None:
    archive = tmp_path / "c10.tar.gz"
    fake_cifar_archive(archive)
    out = tmp_path / "out"
    env = {
        **os.environ,
        # the stage limits are sized for a GPU: stretch them so a slow or busy CPU cannot time a stage out
        **{"SMALL": "1", "DEVICE": "cpu", "EPOCHS": "1", "SEEDS": "0 1", "BUDGET_S": "3000", "STAGE_SCALE": "20"},
        "PYTHON": sys.executable,
    }
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu-bench.sh"), str(out), str(archive)],
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    with open(out / "stages.tsv", newline="") as f:
        stages = {row["stage"]: row for row in csv.DictReader(f, delimiter="\t")}
    runs = [f"{engine}-s{seed}" for seed in (0, 1) for engine in ("fast", "reference")]
    expected = {"bench", "extract", "prepare", "early-exit"} | {
        f"{step}-{run}" for run in runs for step in ("train", "evaluate")
    }
    assert set(stages) == expected, stages
    assert all(row["rc"] == "0" for row in stages.values()), stages
    bench = json.loads((out / "bench.json").read_text())
    assert [a["arch"] for a in bench["archs"]] == ["resnet56", "mobilenet"]
    assert "concurrency" in bench["archs"][1] and "concurrency" not in bench["archs"][0]
    parity = json.loads((out / "parity.json").read_text())
    assert parity["paired_seeds"] == ["0", "1"]
    assert len(parity["fast"]) == len(parity["reference"]) == 7  # ResNet-56: 6 ICs and the final head
    fast, reference = parity["per_seed"]["fast"], parity["per_seed"]["reference"]
    expected_diff = [
        ((f0 - r0) + (f1 - r1)) / 2
        for f0, r0, f1, r1 in zip(fast["0"], reference["0"], fast["1"], reference["1"], strict=True)
    ]
    assert parity["mean_diff_points"] == pytest.approx(expected_diff)
    early = json.loads((out / "early-exit.json").read_text())["early_exit"]
    assert set(early["batches"]) == {"1", "64"}  # the CPU default; a GPU times 1 and 256
    assert isinstance(early["online_exit_mismatches"], int)


def test_a_failing_shared_job_is_reported_not_hung() -> None:
    import torch

    from sdn.bench import BenchSettings, concurrent_train_rate

    settings = BenchSettings(device=torch.device("cpu"), batch_size=4, steps=1, warmup=1, windows=1, workers=0)
    with pytest.raises(RuntimeError, match="concurrent benchmark of no-such-arch sdn failed: .*no-such-arch"):
        concurrent_train_rate("no-such-arch", "sdn", settings, jobs=2, seconds=1)


def test_bench_reports_when_no_threshold_meets_the_tolerance(
    tiny: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A model whose ICs are confidently wrong where the final head is right: no threshold keeps the held-out
    accuracy within the tolerance. The bench says so in its JSON and output, times the best threshold, exits 0."""
    import sdn.inference
    from sdn.cli import main

    data = tiny.prepared(tmp_path / "data")
    checkpoint = tiny.train(data, tmp_path / "run", recipe=tiny.recipe(epochs=1, milestones=()))

    def confidently_wrong_ics(model: object, loader: object) -> tuple[np.ndarray, np.ndarray]:
        labels = np.concatenate([y.numpy() for _, y in loader])
        logits = np.zeros((4, len(labels), 4), dtype=np.float32)  # 3 ICs and the final head, 4 classes
        logits[:-1, np.arange(len(labels)), (labels + 1) % 4] = 1e4  # softmax exactly 1.0, always wrong
        logits[-1, np.arange(len(labels)), labels] = 5.0  # the final head is always right
        return logits, labels

    monkeypatch.setattr(sdn.inference, "collect_logits", confidently_wrong_ics)
    monkeypatch.setenv("SDN_TRACKING", "off")
    out = tmp_path / "bench.json"
    args = ["bench", "--device", "cpu", "--archs", "", "--recipes", "", "--json-out", str(out)]
    args += ["--early-exit-checkpoint", str(checkpoint), "--early-exit-data", str(data), "--early-exit-repeats", "1"]
    assert main(args) == 0
    early = json.loads(out.read_text())["early_exit"]
    assert early["threshold_status"] == "none"
    assert "no threshold reaches accuracy" in early["threshold_reason"]
    assert early["final_holdout_accuracy"] == 100.0 and early["holdout_accuracy"] == 0.0
    assert early["final_exit_cost_fraction"] >= 1.0  # the CNN plus every IC on the way
    assert set(early["batches"]) == {"1", "64"}  # the CPU default; a GPU times 1 and 256
    engines = {(r["engine"], r["batch_size"]) for r in early["latency"]}
    onnx = (
        {"onnxruntime", "onnxruntime-graph", "onnxruntime-graph-int8"}
        if importlib.util.find_spec("onnxruntime")
        else set()
    )
    expected = {"pytorch", "pytorch-deploy"} | onnx
    assert engines == {(engine, batch) for engine in expected for batch in (1, 64)}
    onnx_keys = ["onnx_exit_mismatches", "onnx_graph_exit_mismatches", "onnx_int8_exit_mismatches"]
    keys = ["deploy_exit_mismatches"] + (onnx_keys if onnx else [])
    assert all(isinstance(early[key], int) for key in keys)  # the logits here are faked: no equality to check
    for key in ("onnx", "onnx_graph", "onnx_int8") if onnx else ():
        assert 0.0 <= early[f"{key}_test_accuracy"] <= 100.0
    for row in early["latency"]:
        assert row["measured_saving"] == pytest.approx(1 - row["early_exit_pass_ms"] / row["cnn_pass_ms"])
        assert row["saving_ratio"] is None or row["saving_ratio"] == pytest.approx(
            row["measured_saving"] / row["predicted_saving"]
        )
    assert "no threshold reaches accuracy" in capsys.readouterr().out


def test_early_exit_bench_times_a_given_threshold(tiny, tmp_path: Path, monkeypatch, capsys) -> None:
    """--early-exit-threshold replaces the tolerance choice, says so, and is checked before any work."""
    import sdn.inference
    from sdn.cli import main

    data = tiny.prepared(tmp_path / "data")
    checkpoint = tiny.train(data, tmp_path / "run", recipe=tiny.recipe(epochs=1, milestones=()))

    def wrong_first_ic(model: object, loader: object) -> tuple[np.ndarray, np.ndarray]:
        labels = np.concatenate([y.numpy() for _, y in loader])
        logits = np.zeros((4, len(labels), 4), dtype=np.float32)  # 3 ICs and the final head, 4 classes
        logits[0, np.arange(len(labels)), (labels + 1) % 4] = 1e4  # IC 1: confidence 1.0, always wrong
        logits[1:, np.arange(len(labels)), labels] = 5.0  # the later exits: right, confidence below 0.99
        return logits, labels

    monkeypatch.setattr(sdn.inference, "collect_logits", wrong_first_ic)
    monkeypatch.setenv("SDN_TRACKING", "off")
    out = tmp_path / "bench.json"
    args = ["bench", "--device", "cpu", "--archs", "", "--recipes", "", "--json-out", str(out), "--no-onnx"]
    args += ["--early-exit-checkpoint", str(checkpoint), "--early-exit-data", str(data), "--early-exit-repeats", "1"]
    assert main([*args, "--early-exit-batches", "1", "--early-exit-threshold", "0.5"]) == 0
    early = json.loads(out.read_text())["early_exit"]
    assert early["threshold"] == 0.5 and early["threshold_status"] == "given"
    assert "0.5 given" in early["threshold_reason"]
    assert early["holdout_accuracy"] == 0.0  # every image leaves at the wrong first IC
    assert early["final_holdout_accuracy"] == 100.0
    capsys.readouterr()
    out.unlink()
    assert main([*args, "--early-exit-threshold", "1.5"]) != 0
    assert "--early-exit-threshold must be a confidence in [0, 1], got 1.5" in capsys.readouterr().err
    assert not out.exists()
