"""Fault injection: corrupt prepared splits, checkpoints, resume states and outputs are refused, by name.

Each file that crosses a step boundary carries a sha256 recorded when it was written (a prepared split in its
folder's meta.json, model.pt in the meta.json beside it, last.pt and outputs.npz in a ``.sha256`` sidecar); a reader
checks it and names the file, what is wrong and what to do.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from sdn import checkpoint, io, outputs
from sdn.data import load_prepared
from sdn.data.prepare import prepare


def damage(path: Path, *, offset: int = 0, size: int = 20_000) -> None:
    """Overwrite ``size`` bytes of ``path`` from ``offset`` (capped at the file's length) with random bytes."""
    length = path.stat().st_size
    start = min(offset, max(length - 1, 0))
    count = max(1, min(size, length - start))
    with open(path, "r+b") as handle:
        handle.seek(start)
        handle.write(np.random.default_rng(0).integers(0, 256, count, dtype=np.uint8).tobytes())


def truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


@pytest.fixture
def digits(tmp_path: Path) -> Path:
    return prepare("digits", data_root=tmp_path / "raw", out_dir=tmp_path / "digits", max_train=300, max_test=100)


# ---------------------------------------------------------------- prepared splits


def test_prepared_splits_record_their_sha256(digits: Path) -> None:
    meta = io.read_json(digits / "meta.json")
    assert meta["sha256"] == {s: io.sha256_file(digits / f"{s}.pt") for s in ("train", "holdout", "test")}


def test_truncated_split_is_refused_by_name(digits: Path) -> None:
    truncate(digits / "test.pt")
    data = load_prepared(digits)
    with pytest.raises(io.CorruptFileError, match=r"test\.pt is corrupt.*sdn prepare-data"):
        data.split("test")
    assert len(data.split("train")) > 0  # the intact splits stay readable


def test_prepare_data_rebuilds_a_damaged_split(
    digits: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    expected = load_prepared(digits).split("test")
    truncate(digits / "test.pt")
    with caplog.at_level("WARNING"):
        prepare("digits", data_root=tmp_path / "raw", out_dir=digits, max_train=300, max_test=100)
    assert "test.pt" in caplog.text and "rebuilding" in caplog.text
    assert io.read_json(digits / "meta.json")["sha256"]["test"] == io.sha256_file(digits / "test.pt")
    rebuilt = load_prepared(digits).split("test")
    assert torch.equal(rebuilt.images, expected.images) and torch.equal(rebuilt.labels, expected.labels)


def test_corrupt_prepared_meta_json_is_named(digits: Path) -> None:
    (digits / "meta.json").write_text('{"dataset": "digits", ')
    with pytest.raises(io.CorruptFileError, match=r"meta\.json is not a valid.*sdn prepare-data"):
        load_prepared(digits)


def test_workflow_rules_read_the_split_files(snakemake, repo: Path, tmp_path: Path) -> None:
    done = snakemake(tmp_path, "-n", configfile=repo / "config" / "config.yaml")
    assert done.returncode == 0, done.stderr[-3000:]
    blocks = done.stdout.split("\nrule ")
    evaluate = next(b for b in blocks if b.startswith("evaluate:") and "variant=cnn" in b)
    train = next(b for b in blocks if b.startswith("train:") and "variant=cnn" in b)
    assert "data/digits/test.pt" in evaluate and "data/digits/holdout.pt" in evaluate
    assert "data/digits/train.pt" in train and "data/digits/holdout.pt" in train


# ---------------------------------------------------------------- model.pt, last.pt, outputs.npz


@pytest.fixture
def trained(tiny, tiny_data: Path, tmp_path: Path) -> Path:
    return tiny.train(tiny_data, tmp_path / "run", recipe=tiny.recipe("sdn", epochs=1, milestones=()))


def test_damaged_model_is_refused_by_evaluate(trained: Path, tiny_data: Path, tmp_path: Path) -> None:
    from sdn.evaluate import evaluate

    assert io.read_json(trained.parent / "meta.json")["model_sha256"] == io.sha256_file(trained)
    damage(trained, offset=trained.stat().st_size // 3)
    out = tmp_path / "eval" / "outputs.npz"
    with pytest.raises(io.CorruptFileError, match=rf"{trained}.*corrupt.*retrain"):
        evaluate(trained, tiny_data, out, splits=("test",), device="cpu")
    assert not out.exists() and not (out.parent / "metrics.json").exists()


def test_damaged_model_cli_exits_2_naming_the_file(
    tiny, trained: Path, tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sdn.cli import main

    damage(trained, offset=trained.stat().st_size // 3)
    out = tmp_path / "eval" / "outputs.npz"
    args = ["evaluate", "--checkpoint", str(trained), "--data", str(tiny_data), "--out", str(out), "--device", "cpu"]
    assert main(args) == 2
    assert str(trained) in capsys.readouterr().err
    assert not out.exists()


def test_corrupt_checkpoint_meta_json_is_named(trained: Path) -> None:
    (trained.parent / "meta.json").write_text("{not json")
    with pytest.raises(io.CorruptFileError, match=r"meta\.json is not valid JSON.*sdn train"):
        checkpoint.read(trained)


def test_damaged_last_pt_says_delete_it(tiny, tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"

    class Stop(Exception):
        pass

    def stop(epoch: int, metrics: dict[str, float]) -> None:
        raise Stop

    with pytest.raises(Stop):
        tiny.train(tiny_data, out, recipe=tiny.recipe("sdn", epochs=2, milestones=()), on_epoch=stop)
    last = out / "last.pt"
    assert io.recorded_sha256(last) == io.sha256_file(last)
    damage(last, offset=last.stat().st_size // 3, size=2_000)
    with pytest.raises(io.CorruptFileError, match=rf"{last} is corrupt.*delete {last} to restart"):
        tiny.train(tiny_data, out, recipe=tiny.recipe("sdn", epochs=2, milestones=()))
    truncate(last)
    io.sha256_sidecar(last).unlink()  # no record: still refused when it cannot be read
    with pytest.raises(io.CorruptFileError, match=rf"{last} cannot be read.*delete {last}"):
        tiny.train(tiny_data, out, recipe=tiny.recipe("sdn", epochs=2, milestones=()))


def test_damaged_outputs_npz_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "outputs.npz"
    arrays = {"test_logits": np.zeros((2, 5, 3), np.float32), "test_labels": np.zeros(5, np.int64)}
    outputs.save(path, arrays, {"splits": {}})
    assert io.recorded_sha256(path) == io.sha256_file(path)
    assert outputs.load(path)["test_logits"].shape == (2, 5, 3)
    damage(path, offset=path.stat().st_size // 2, size=8)
    with pytest.raises(io.CorruptFileError, match=r"outputs\.npz is corrupt.*sdn evaluate"):
        outputs.load(path)
    truncate(path)
    io.sha256_sidecar(path).unlink()
    with pytest.raises(io.CorruptFileError, match=r"outputs\.npz cannot be read.*sdn evaluate"):
        outputs.load(path)


def test_published_outputs_without_a_record_stay_readable(tmp_path: Path) -> None:
    path = tmp_path / "outputs.npz"
    io.save_npz(path, test_logits=np.zeros((2, 5, 3), np.float32), test_labels=np.zeros(5, np.int64))
    assert io.recorded_sha256(path) is None
    assert outputs.load(path)["test_labels"].shape == (5,)


def test_copy_of_a_run_is_still_verified(trained: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(trained.parent, tmp_path / "copy"))
    assert checkpoint.read(copy / "model.pt")[1]["arch"] == io.read_json(copy / "meta.json")["arch"]


# ---------------------------------------------------------------- checks between runs


def test_evaluate_refuses_a_checkpoint_trained_on_other_splits(
    tiny, trained: Path, tiny_data: Path, tmp_path: Path
) -> None:
    from sdn.evaluate import evaluate

    other = tiny.prepared(tmp_path / "other", n_holdout=16, seed=1)  # other held-out/test images
    out = tmp_path / "eval" / "outputs.npz"
    with pytest.raises(ValueError, match=rf"{trained} was trained on other data than {other}.*--force-data-mismatch"):
        evaluate(trained, other, out, splits=("test",), device="cpu")
    assert not out.exists()
    evaluate(trained, other, out, splits=("test",), device="cpu", force_data_mismatch=True)
    assert out.is_file()


def test_evaluate_accepts_same_splits_and_other_train_split(
    tiny, trained: Path, tiny_data: Path, tmp_path: Path
) -> None:
    from sdn.evaluate import evaluate

    poisoned = Path(shutil.copytree(tiny_data, tmp_path / "poisoned"))  # like the backdoor data: train differs
    shutil.copyfile(tiny.prepared(tmp_path / "x", seed=5) / "train.pt", poisoned / "train.pt")
    evaluate(trained, poisoned, tmp_path / "eval" / "outputs.npz", splits=("holdout", "test"), device="cpu")


def test_ic_only_refuses_a_parent_trained_on_other_splits(tiny, tiny_data: Path, tmp_path: Path) -> None:
    parent = tiny.train(tiny_data, tmp_path / "cnn", recipe=tiny.recipe("cnn", epochs=1, milestones=()))
    other = tiny.prepared(tmp_path / "other", n_holdout=16, seed=1)
    recipe = tiny.recipe("ic_only", epochs=1, milestones=())
    with pytest.raises(ValueError, match=rf"parent checkpoint {parent} was trained on other data than {other}"):
        tiny.train(other, tmp_path / "ic", recipe=recipe, parent=parent)
    assert not (tmp_path / "ic" / "model.pt").exists()
    tiny.train(other, tmp_path / "ic", recipe=recipe, parent=parent, force_data_mismatch=True)
    tiny.train(tiny_data, tmp_path / "ic_same", recipe=recipe, parent=parent)  # the parent's own data: fine


def test_evaluate_cli_refuses_a_truncated_split(
    tiny, trained: Path, tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sdn.cli import main
    from sdn.data.prepare import split_hashes

    io.write_json(
        tiny_data / "meta.json", {**io.read_json(tiny_data / "meta.json"), "sha256": split_hashes(tiny_data)}
    )
    truncate(tiny_data / "test.pt")
    out = tmp_path / "eval" / "outputs.npz"
    args = ["evaluate", "--checkpoint", str(trained), "--data", str(tiny_data), "--out", str(out), "--device", "cpu"]
    assert main([*args, "--splits", "test"]) == 2
    err = capsys.readouterr().err
    assert str(tiny_data / "test.pt") in err and "sdn prepare-data" in err
    assert not out.exists()


def test_checkpoint_with_non_finite_weights_is_refused_without_a_record(trained: Path) -> None:
    payload = io.load_torch(trained)
    name = next(k for k, v in payload["state_dict"].items() if v.is_floating_point())
    payload["state_dict"][name].view(-1)[0] = float("nan")
    io.save_torch(payload, trained)
    (trained.parent / "meta.json").unlink()  # a checkpoint copied alone: no sha256 to compare with
    with pytest.raises(io.CorruptFileError, match=rf"{trained} holds non-finite weights \({name}"):
        checkpoint.read(trained)
    assert torch.isnan(payload["state_dict"][name]).any()


def test_the_same_tensors_saved_twice_give_the_same_bytes(tmp_path: Path) -> None:
    """A split prepared again from the same images keeps its sha256, so a resumed run on another machine (or a
    fresh work folder) still recognises its data (torch.save to a path would embed the temporary file's name)."""
    import torch

    from sdn.io import save_torch

    blob = {"images": torch.arange(300, dtype=torch.uint8).reshape(3, 100), "labels": torch.tensor([0, 1, 2])}
    save_torch(blob, tmp_path / "a.pt")
    save_torch(blob, tmp_path / "b.pt")
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()
