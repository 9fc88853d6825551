"""An interrupted training run resumes from last.pt and ends bit-identical to an uninterrupted one (CPU)."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sdn import io
from sdn.config import paper_recipe

TESTS_DIR = Path(__file__).resolve().parent
LAUNCHER = (
    "import sys; sys.path.insert(0, sys.argv[1]); import conftest; conftest.register_tiny_arch(); "
    "from sdn.cli import main; raise SystemExit(main(sys.argv[2:]))"
)


class Interrupt(Exception):
    pass


def _stop_after(stop_epoch: int):
    def hook(epoch: int, metrics: dict[str, float]) -> None:
        if epoch == stop_epoch:
            raise Interrupt

    return hook


def _history(out: Path) -> list[dict[str, str]]:
    with open(out / "history.csv") as handle:
        rows = list(csv.DictReader(handle))
    return [{k: v for k, v in row.items() if k not in ("seconds", "images_per_s")} for row in rows]


def _assert_same_weights(a: Path, b: Path) -> None:
    sa, sb = io.load_torch(a)["state_dict"], io.load_torch(b)["state_dict"]
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_interrupted_run_resumes_bit_identical(tiny, tiny_data: Path, tmp_path: Path) -> None:
    recipe = tiny.recipe("sdn", epochs=3, milestones=(2,))
    full = tiny.train(tiny_data, tmp_path / "full", recipe=recipe)
    out = tmp_path / "resumed"
    with pytest.raises(Interrupt):
        tiny.train(tiny_data, out, recipe=recipe, on_epoch=_stop_after(1))
    assert io.load_torch(out / "last.pt")["epoch"] == 1 and not (out / "model.pt").exists()
    seen: list[int] = []
    resumed = tiny.train(tiny_data, out, recipe=recipe, on_epoch=lambda e, m: seen.append(e))
    assert seen == [2, 3]
    assert not (out / "last.pt").exists()
    _assert_same_weights(full, resumed)
    assert _history(out) == _history(full.parent) and len(_history(out)) == 3


def test_resume_with_other_settings_is_refused(tiny, tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    recipe = tiny.recipe("sdn", epochs=2, milestones=())
    with pytest.raises(Interrupt):
        tiny.train(tiny_data, out, recipe=recipe, on_epoch=_stop_after(1))
    before = (out / "last.pt").read_bytes()
    with pytest.raises(ValueError, match=r"with recipe=.*'lr': 0\.05.*this run has recipe=.*'lr': 0\.02"):
        tiny.train(tiny_data, out, recipe=tiny.recipe("sdn", epochs=2, milestones=(), lr=0.02))
    with pytest.raises(ValueError, match="seed=3.*seed=4"):
        tiny.train(tiny_data, out, recipe=recipe, seed=4)
    assert (out / "last.pt").read_bytes() == before


def test_changed_split_starts_fresh_instead_of_resuming(
    tiny, tiny_data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "run"
    recipe = tiny.recipe("sdn", epochs=2, milestones=())
    with pytest.raises(Interrupt):
        tiny.train(tiny_data, out, recipe=recipe, on_epoch=_stop_after(1))
    assert io.load_torch(out / "last.pt")["identity"]["data"]["sha256"].keys() == {"train", "holdout", "test"}
    tiny.prepared(tiny_data, n_holdout=16)  # the held-out size changed: other split files in the same folder
    seen: list[int] = []
    with caplog.at_level("WARNING", logger="sdn.train"):
        model = tiny.train(tiny_data, out, recipe=recipe, on_epoch=lambda e, m: seen.append(e))
    assert seen == [1, 2]  # trained from scratch, not resumed after epoch 1
    message = caplog.text
    assert "not resuming" in message and str(out / "last.pt") in message and "holdout" in message
    meta = io.read_json(model.parent / "meta.json")
    assert meta["data"]["sha256"]["holdout"] == io.sha256_file(tiny_data / "holdout.pt")


def test_same_split_elsewhere_still_resumes(tiny, tiny_data: Path, tmp_path: Path) -> None:
    import shutil

    out = tmp_path / "run"
    recipe = tiny.recipe("sdn", epochs=2, milestones=())
    with pytest.raises(Interrupt):
        tiny.train(tiny_data, out, recipe=recipe, on_epoch=_stop_after(1))
    copy = shutil.copytree(tiny_data, tmp_path / "copy")  # same content at another path: the same data
    seen: list[int] = []
    tiny.train(copy, out, recipe=recipe, on_epoch=lambda e, m: seen.append(e))
    assert seen == [2]


def _cli_train(arch: str, data: Path, out: Path, *, slow: str | None = None) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k != "SDN_TEST_SLOW"}
    if slow:
        env["SDN_TEST_SLOW"] = slow
    args = ["train", "--recipe", "sdn", "--arch", arch, "--data", str(data), "--out", str(out)]
    args += ["--epochs", "4", "--batch-size", "16", "--lr", "0.05", "--seed", "7", "--device", "cpu"]
    return subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, str(TESTS_DIR), *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def test_sigkill_mid_epoch_then_rerun_is_bit_identical(tiny, tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "killed"
    proc = _cli_train(tiny.ARCH, tiny_data, out, slow="0.05")
    try:
        deadline = time.monotonic() + 120
        while not (out / "last.pt").exists():
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "no last.pt written in time"
            time.sleep(0.005)
        time.sleep(0.1)  # well inside epoch 2 (4 slowed steps of >= 50 ms each)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "model.pt").exists()
    assert io.load_torch(out / "last.pt")["epoch"] == 1

    rerun = _cli_train(tiny.ARCH, tiny_data, out)
    assert rerun.wait(timeout=300) == 0, rerun.stderr.read().decode() if rerun.stderr else ""
    assert not (out / "last.pt").exists()

    recipe = paper_recipe("sdn", tiny.ARCH).with_overrides({"epochs": 4, "batch_size": 16, "lr": 0.05})
    full = tiny.train(tiny_data, tmp_path / "full", recipe=recipe, seed=7)
    _assert_same_weights(full, out / "model.pt")
    assert _history(out) == _history(full.parent)


class _OnAnotherDevice:
    """Stands for a tensor that torch.load(map_location="cuda") left on the GPU: usable only after .cpu()."""

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor

    def cpu(self) -> torch.Tensor:
        return self.tensor


def test_rng_state_loaded_onto_a_gpu_restores() -> None:
    # A GPU resume once failed with "RNG state must be a torch.ByteTensor": last.pt was loaded with
    # map_location="cuda", which moved the saved RNG states to the GPU.
    from sdn import checkpoint

    state = checkpoint.get_rng_state()
    expected = torch.rand(3)
    state["torch"] = _OnAnotherDevice(state["torch"])
    state["numpy"]["keys"] = _OnAnotherDevice(state["numpy"]["keys"])
    torch.rand(5)  # move the generator on
    checkpoint.set_rng_state(state)
    assert torch.equal(torch.rand(3), expected)


def test_meta_names_the_commit_the_training_started_on(
    tiny, tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A paper-scale call trains for hours; a commit made meanwhile must not be recorded as the code that trained.
    from sdn import checkpoint

    head = ["commit-at-start"]
    monkeypatch.setattr(checkpoint, "git_commit", lambda: head[0])

    def commit_meanwhile(epoch: int, metrics: dict[str, float]) -> None:
        head[0] = "commit-made-while-training"

    recipe = tiny.recipe("cnn", epochs=1, milestones=())
    model = tiny.train(tiny_data, tmp_path / "run", recipe=recipe, on_epoch=commit_meanwhile)
    assert io.read_json(model.parent / "meta.json")["git_commit"] == "commit-at-start"


def test_sdn_commit_names_the_code_where_the_tree_was_copied(monkeypatch: pytest.MonkeyPatch) -> None:
    # On the GPU machine the copied tree's .git was stale: meta.json named an older commit than the code that ran.
    from sdn import checkpoint

    monkeypatch.setenv("SDN_COMMIT", "eb3dbc6")
    assert checkpoint.git_commit() == "eb3dbc6"
    monkeypatch.delenv("SDN_COMMIT")
    assert checkpoint.git_commit() != "eb3dbc6"  # git's HEAD here (or None outside a checkout)
