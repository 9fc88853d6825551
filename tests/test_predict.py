"""The predictor: image files in, the offline analysis' answers out; bad input is a clear error per image."""

from __future__ import annotations

import io as _io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sdn import exit_policy
from sdn.analysis import early_exit as ee
from sdn.analysis.arrays import softmax
from sdn.cli import main
from sdn.data.prepare import load_prepared
from sdn.outputs import exit_costs, load, load_split
from sdn.predict import Predictor, decode_image


@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory) -> dict[str, Path]:
    """A tiny SDN with its evaluation and early-exit analysis (as the workflow lays them out)."""
    from sdn.commands.early_exit import write_early_exit
    from sdn.evaluate import evaluate

    root = tmp_path_factory.mktemp("predict")
    data = tiny.prepared(root / "data", n_test=40)
    model = tiny.train(data, root / "run", "sdn", seed=1)
    evaluate(model, data, model.parent / "outputs.npz", device="cpu")
    write_early_exit(model.parent / "outputs.npz", model.parent / exit_policy.SUMMARY.parent, budgets=[0.75])
    images = root / "images"
    images.mkdir()
    test = load_prepared(data).split("test")
    for n, pixels in enumerate(test.images):
        Image.fromarray(pixels.permute(1, 2, 0).numpy()).save(images / f"{n:03d}.png")
    return {"data": data, "model": model, "images": images}


def png(array: np.ndarray, mode: str | None = None) -> bytes:
    buffer = _io.BytesIO()
    Image.fromarray(array, mode).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(("policy", "rule"), [("confidence", "tolerance"), ("entropy", "budget_0.75")])
def test_files_give_the_offline_analysis_answers(trained, policy, rule) -> None:
    predictor = Predictor.load(trained["model"], policy=policy, rule=rule, batch_size=7)
    summary = json.loads((trained["model"].parent / exit_policy.SUMMARY).read_text())
    entry = summary["policies"][policy][rule]
    assert predictor.policy.threshold == entry["threshold"]
    outputs = load(trained["model"].parent / "outputs.npz")
    logits, labels = load_split(outputs, "test")
    cost = exit_costs(outputs, logits.shape[0])
    offline = ee.simulate(softmax(logits), labels, cost, policy, entry["threshold"])

    online = predictor.predict_files([trained["images"]])
    assert [p.error for p in online] == [None] * len(labels)
    assert [p.class_index for p in online] == offline.predictions.tolist()
    assert [p.exit_index for p in online] == offline.exit_index.tolist()
    probs = softmax(logits)[offline.exit_index, np.arange(len(labels))].max(axis=-1)
    np.testing.assert_allclose([p.confidence for p in online], probs, rtol=1e-4)
    assert np.mean([p.cost_fraction for p in online]) == pytest.approx(entry["test_cost_fraction"])


def test_default_threshold_is_the_tolerance_choice(trained) -> None:
    predictor = Predictor.load(trained["model"])
    assert predictor.policy.rule == "tolerance" and predictor.policy.policy == "confidence"
    assert predictor.policy.source.endswith("analysis/early_exit/summary.json")
    assert predictor.with_overrides(threshold=0.25).threshold == 0.25
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\], got 1.5"):
        predictor.with_overrides(threshold=1.5)


def test_every_bad_image_is_its_own_clear_error(trained) -> None:
    predictor = Predictor.load(trained["model"])
    rgb = np.full((8, 8, 3), 120, dtype=np.uint8)
    items = [
        ("good.png", png(rgb)),
        ("notes.txt", b"this is not an image"),
        ("big.png", png(np.zeros((16, 8, 3), dtype=np.uint8))),
        ("gray.png", png(np.zeros((8, 8), dtype=np.uint8))),
        ("empty.png", b""),
        ("good2.png", png(rgb)),
    ]
    results = predictor.predict_bytes(items)
    assert [r.source for r in results] == [name for name, _ in items]
    assert results[0].error is None and results[5].error is None
    assert results[0].class_index == results[5].class_index
    assert "not an image file" in results[1].error
    assert "8x16 pixels; this model takes 8x8" in results[2].error
    assert "grayscale" in results[3].error
    assert "empty" in results[4].error
    assert all(r.class_index is None for r in results[1:5])


def test_decoded_pixels_are_the_prepared_ones(trained) -> None:
    test = load_prepared(trained["data"]).split("test")
    decoded = decode_image((trained["images"] / "003.png").read_bytes(), 8)
    assert torch.equal(decoded, test.images[3])


def test_missing_analysis_asks_for_a_threshold(tiny, tmp_path) -> None:
    data = tiny.prepared(tmp_path / "data")
    model = tiny.train(data, tmp_path / "run", "sdn", seed=1)
    with pytest.raises(FileNotFoundError, match="no early-exit analysis .*--threshold"):
        Predictor.load(model)
    assert Predictor.load(model, threshold=0.5).policy.threshold == 0.5


def test_cli_json_and_per_image_errors(trained, tmp_path, capsys) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "a.png").write_bytes((trained["images"] / "000.png").read_bytes())
    (folder / "b.txt").write_text("not an image")
    code = main(["predict", "--checkpoint", str(trained["model"]), "--images", str(folder), "--json"])
    captured = capsys.readouterr()
    assert code == 1  # one image failed
    document = json.loads(captured.out)
    assert document["policy"]["rule"] == "tolerance"
    first, second = document["predictions"]
    assert first["error"] is None and 0 <= first["exit_index"] <= 3 and 0 < first["cost_fraction"] <= 1
    assert "b.txt: not an image file" in second["error"] and "b.txt" in captured.err

    assert main(["predict", "--checkpoint", str(trained["model"]), "--images", str(folder / "a.png")]) == 0
    assert "confidence threshold" in capsys.readouterr().out
    code = main(["predict", "--checkpoint", str(trained["model"]), "--images", str(folder), "--threshold", "2"])
    assert code == 2 and "must lie in [0, 1], got 2.0" in capsys.readouterr().err


def test_summary_without_a_choice_is_a_clear_error(tmp_path) -> None:
    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps({"policies": {"confidence": {"tolerance": {"status": "none", "reason": "r"}}}}))
    with pytest.raises(ValueError, match="chose no threshold for policy 'confidence' \\(r\\)"):
        exit_policy.from_summary(summary)
    with pytest.raises(ValueError, match="holds no policy 'entropy'; it has: confidence"):
        exit_policy.from_summary(summary, "entropy")
    summary.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        exit_policy.from_summary(summary)


def test_a_model_trained_on_resized_images_takes_any_size_like_its_training_data(tmp_path) -> None:
    """Preprocess(resize=True) (an image folder prepared with --image-size) scales and crops exactly as the data
    preparation did; without it a wrong size is refused."""
    from sdn.data.datasets import read_image
    from sdn.predict import ImageError, Preprocess

    rng = np.random.default_rng(0)
    path = tmp_path / "wide.png"
    Image.fromarray(rng.integers(0, 256, (21, 37, 3), dtype=np.uint8)).save(path)
    decoded = decode_image(path.read_bytes(), 8, "wide.png", resize=True)
    assert torch.equal(decoded, torch.from_numpy(read_image(path, 8)).permute(2, 0, 1))
    with pytest.raises(ImageError, match="37x21 pixels"):
        decode_image(path.read_bytes(), 8, "wide.png")
    meta = {"num_classes": 2, "input_size": 8}
    record = {"mean": [0.5] * 3, "std": [0.25] * 3, "classes": ["a", "b"]}
    assert not Preprocess.from_meta({**meta, "preprocess": record}).resize  # checkpoints before the option
    assert Preprocess.from_meta({**meta, "preprocess": {**record, "resize": True}}).resize
