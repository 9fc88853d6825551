"""The evaluation pass: cached per-exit logits, labels, costs and per-exit top-1/top-5."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from sdn import io
from sdn.checkpoint import load_checkpoint
from sdn.evaluate import evaluate
from sdn.outputs import exit_cost_arrays, topk_accuracy


@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("eval")
    data = tiny.prepared(root / "data")
    return tiny.train(data, root / "sdn", recipe=tiny.recipe("sdn", epochs=1, milestones=())), data


def test_topk_accuracy_on_hand_made_logits() -> None:
    logits = np.array(
        [
            [[3.0, 2.0, 1.0], [0.0, 1.0, 2.0], [1.0, 3.0, 2.0], [2.0, 1.0, 0.0]],
            [[0.5, 0.0, 1.0], [5.0, 1.0, 0.0], [0.0, 2.0, 1.0], [1.0, 0.0, 2.0]],
        ],
        dtype=np.float32,
    )
    labels = np.array([0, 2, 2, 1])
    assert topk_accuracy(logits, labels, 1) == [50.0, 0.0]
    assert topk_accuracy(logits, labels, 2) == [100.0, 50.0]
    assert topk_accuracy(logits, labels, 5) == [100.0, 100.0]  # k above the class count: all correct
    assert topk_accuracy(np.zeros((2, 0, 3), dtype=np.float32), np.zeros(0, dtype=np.int64)) == [None, None]


def test_exit_cost_arrays_accept_records_with_or_without_final() -> None:
    cnn = {"params": 10, "macs": 100, "ops": 200}
    ic = {"params": 4, "macs": 30, "ops": 60, "fraction": 0.3}
    without = exit_cost_arrays({"cnn": cnn, "exits": [ic]}, 2)
    assert without["exit_fraction"].tolist() == [0.3, 1.0] and without["exit_ops"].tolist() == [60.0, 200.0]
    final = {"params": 14, "macs": 130, "ops": 260, "fraction": 1.3}
    assert exit_cost_arrays({"cnn": cnn, "exits": [ic, final]}, 2)["exit_macs"].tolist() == [30.0, 130.0]
    with pytest.raises(ValueError, match="lists 1 exits but the model has 3"):
        exit_cost_arrays({"cnn": cnn, "exits": [ic]}, 3)


def test_evaluate_writes_documented_outputs(tiny, trained: tuple[Path, Path], tmp_path: Path) -> None:
    checkpoint, data = trained
    out = tmp_path / "outputs.npz"
    metrics = evaluate(checkpoint, data, out, device="cpu", batch_size=10)
    arrays = dict(np.load(out))
    num_exits = len(tiny.EXITS) + 1
    expected = {"holdout_logits", "holdout_labels", "test_logits", "test_labels"}
    expected |= {"exit_fraction", "exit_macs", "exit_ops", "exit_positions"}
    assert set(arrays) == expected
    assert arrays["holdout_logits"].shape == (num_exits, 32, tiny.CLASSES)
    assert arrays["test_logits"].shape == (num_exits, 24, tiny.CLASSES)
    assert arrays["test_logits"].dtype == np.float32 and arrays["test_labels"].dtype == np.int64
    assert arrays["exit_positions"].tolist() == list(tiny.EXITS) and arrays["exit_positions"].dtype == np.int64
    for key in ("exit_fraction", "exit_macs", "exit_ops"):
        assert arrays[key].shape == (num_exits,) and arrays[key].dtype == np.float64
    assert np.all(np.diff(arrays["exit_ops"]) > 0)

    # The stored logits are the model's outputs on the normalised test images, in order.
    blob = io.load_torch(data / "test.pt")
    assert np.array_equal(arrays["test_labels"], blob["labels"].numpy())
    x = (blob["images"].float() / 255.0 - 0.5) / 0.25
    model, _ = load_checkpoint(checkpoint)
    with torch.no_grad():
        manual = torch.stack(model(x)).numpy()
    np.testing.assert_allclose(arrays["test_logits"], manual, rtol=1e-5, atol=1e-5)

    top1 = [100.0 * float((manual[e].argmax(1) == arrays["test_labels"]).mean()) for e in range(num_exits)]
    assert metrics["splits"]["test"]["top1"] == pytest.approx(top1)
    written = io.read_json(tmp_path / "metrics.json")
    assert written["splits"]["test"]["top1"] == pytest.approx(top1)
    assert written["splits"]["holdout"]["n"] == 32 and len(written["splits"]["holdout"]["top5"]) == num_exits
    assert all(t5 >= t1 for t1, t5 in zip(top1, written["splits"]["test"]["top5"], strict=True))


def test_evaluate_missing_split_lists_available(trained: tuple[Path, Path], tmp_path: Path) -> None:
    checkpoint, data = trained
    with pytest.raises(ValueError, match=r"\['val'\] not found .*available splits: holdout, test, train"):
        evaluate(checkpoint, data, tmp_path / "o.npz", splits=("val", "test"), device="cpu")
    assert not (tmp_path / "o.npz").exists()


def test_evaluate_cli(trained: tuple[Path, Path], tmp_path: Path) -> None:
    from sdn.cli import main

    checkpoint, data = trained
    out = tmp_path / "cli" / "outputs.npz"
    args = ["evaluate", "--checkpoint", str(checkpoint), "--data", str(data), "--out", str(out)]
    assert main([*args, "--splits", "test", "--device", "cpu"]) == 0
    assert set(np.load(out)) >= {"test_logits", "test_labels"} and "holdout_logits" not in set(np.load(out))
    assert main([*args, "--splits", "nope", "--device", "cpu"]) == 2
    assert main(["evaluate", "--checkpoint", str(tmp_path / "none.pt"), "--data", str(data), "--out", str(out)]) == 2


def test_load_checkpoint_is_strict(tiny, trained: tuple[Path, Path], tmp_path: Path) -> None:
    checkpoint, _ = trained
    payload = io.load_torch(checkpoint)
    payload["state_dict"]["exits.0.extra"] = torch.zeros(1)
    io.save_torch(payload, tmp_path / "bad.pt")
    with pytest.raises(RuntimeError, match="exits.0.extra"):
        load_checkpoint(tmp_path / "bad.pt")
    model, meta = load_checkpoint(checkpoint)
    assert meta["arch"] == tiny.ARCH and model.exit_positions == tiny.EXITS


def test_evaluate_records_which_images_a_split_holds(trained: tuple[Path, Path], tmp_path: Path) -> None:
    """A prepared split's ``indices`` (positions in the data set's original split) go into outputs.npz as
    ``{split}_indices``, so that runs on other splits of the data set compare image by image (sdn train-size)."""
    checkpoint, data = trained
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    blob = io.load_torch(copy / "test.pt")
    positions = torch.arange(len(blob["labels"])) * 3 + 1  # e.g. what is left of a test set after a held-out split
    io.save_torch({**blob, "indices": positions}, copy / "test.pt")
    out = tmp_path / "outputs.npz"
    evaluate(checkpoint, copy, out, device="cpu", force_data_mismatch=True)  # the file changed, its content did not
    arrays = dict(np.load(out))
    assert arrays["test_indices"].tolist() == positions.tolist() and arrays["test_indices"].dtype == np.int64
    assert "holdout_indices" not in arrays  # a split prepared without them records none
