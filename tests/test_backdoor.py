"""BadNets poisoning, the poisoned data folder, and the backdoor analysis on hand-made outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sdn.analysis.backdoor import accuracy_per_exit, analyze, attack_success_per_exit
from sdn.data import TensorSplit, load_prepared
from sdn.data.backdoor import Trigger, apply_trigger, poison, triggered_split
from sdn.io import save_torch, write_json


def random_split(n: int = 40, size: int = 32, num_classes: int = 4, seed: int = 0) -> TensorSplit:
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 200, (n, 3, size, size), generator=gen, dtype=torch.uint8)  # never 255 by chance
    labels = torch.arange(n, dtype=torch.int64) % num_classes
    return TensorSplit(images=images, labels=labels)


# ------------------------------------------------------------------------------------------------- trigger


def test_trigger_sets_exactly_the_square_and_leaves_the_input_alone() -> None:
    split = random_split(3)
    before = split.images.clone()
    out = apply_trigger(split.images, Trigger())
    assert torch.equal(split.images, before)  # input not mutated
    changed = (out != before).any(dim=1)  # [N, H, W]
    expected = torch.zeros(3, 32, 32, dtype=torch.bool)
    expected[:, 26:31, 26:31] = True  # rows (y) and columns (x) 26..30
    assert torch.equal(changed, expected)
    assert torch.all(out[:, :, 26:31, 26:31] == 255)


def test_trigger_position_is_x_column_y_row_and_value_is_used() -> None:
    images = torch.zeros(1, 3, 8, 8, dtype=torch.uint8)
    out = apply_trigger(images, Trigger(size=2, x=5, y=1, value=7))
    assert torch.nonzero(out[0, 0]).tolist() == [[1, 5], [1, 6], [2, 5], [2, 6]]
    assert int(out.sum()) == 3 * 4 * 7


def test_trigger_that_does_not_fit_is_an_error() -> None:
    images = torch.zeros(1, 3, 16, 16, dtype=torch.uint8)
    with pytest.raises(ValueError, match="does not fit a 16x16 image"):
        apply_trigger(images, Trigger())
    with pytest.raises(ValueError, match="uint8"):
        apply_trigger(images.float(), Trigger(size=1, x=0, y=0))
    with pytest.raises(ValueError, match="size must be >= 1"):
        Trigger(size=0)
    with pytest.raises(ValueError, match="value"):
        Trigger(value=256)


def test_trigger_scales_with_the_input_size() -> None:
    assert Trigger().scaled_to(64) == Trigger(size=10, x=52, y=52)
    assert Trigger().scaled_to(32) == Trigger()
    small = Trigger().scaled_to(16)
    assert small == Trigger(size=2, x=13, y=13)
    small.check_fits(16, 16)


# -------------------------------------------------------------------------------------------------- poison


def test_poison_rate_target_and_reproducibility() -> None:
    split = random_split(40)  # labels 0..3 repeated: 10 of the target class 2
    before_images, before_labels = split.images.clone(), split.labels.clone()
    poisoned, idx = poison(split, Trigger(), target=2, rate=0.25, seed=3)
    assert idx.numel() == 10 and idx.dtype == torch.int64
    assert torch.equal(idx, torch.sort(idx).values)
    assert torch.all(before_labels[idx] != 2)  # target-class samples are never chosen
    assert torch.all(poisoned.labels[idx] == 2)
    assert torch.all(poisoned.images[idx][:, :, 26:31, 26:31] == 255)
    untouched = torch.ones(40, dtype=torch.bool)
    untouched[idx] = False
    assert torch.equal(poisoned.images[untouched], before_images[untouched])
    assert torch.equal(poisoned.labels[untouched], before_labels[untouched])
    assert torch.equal(split.images, before_images) and torch.equal(split.labels, before_labels)

    again, idx_again = poison(split, Trigger(), target=2, rate=0.25, seed=3)
    assert torch.equal(idx, idx_again) and torch.equal(again.images, poisoned.images)
    _, other = poison(split, Trigger(), target=2, rate=0.25, seed=4)
    assert not torch.equal(idx, other)


def test_poison_rejects_impossible_rates() -> None:
    split = random_split(8, num_classes=2)  # 4 of the target class 1
    with pytest.raises(ValueError, match="only 4 of 8"):
        poison(split, Trigger(), target=1, rate=0.75)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        poison(split, Trigger(), target=1, rate=1.5)
    _, none = poison(split, Trigger(), target=1, rate=0.0)
    assert none.numel() == 0


def test_triggered_split_keeps_true_labels_and_drops_the_target_class() -> None:
    split = random_split(12, num_classes=3)
    triggered, kept = triggered_split(split, Trigger(), target=0)
    assert kept.tolist() == [i for i in range(12) if i % 3 != 0]
    assert torch.equal(triggered.labels, split.labels[kept])
    assert torch.all(triggered.labels != 0)
    assert torch.all(triggered.images[:, :, 26:31, 26:31] == 255)


# --------------------------------------------------------------------------------------------- CLI poison


def write_prepared(folder: Path, num_classes: int = 4, size: int = 32) -> None:
    """A hand-made prepared-data folder in the sdn.data format."""
    splits = {"train": random_split(40, size, num_classes, 0), "holdout": random_split(8, size, num_classes, 1)}
    splits["test"] = random_split(12, size, num_classes, 2)
    for name, split in splits.items():
        save_torch(
            {"images": split.images, "labels": split.labels, "indices": torch.arange(len(split))},
            folder / f"{name}.pt",
        )
    write_json(
        folder / "meta.json",
        {
            "dataset": "synthetic",
            "num_classes": num_classes,
            "input_size": size,
            "mean": [0.5, 0.5, 0.5],
            "std": [0.25, 0.25, 0.25],
            "crop_padding": 4,
            "color_jitter": 0.0,
            "classes": [f"c{i}" for i in range(num_classes)],
            "sizes": {name: len(split) for name, split in splits.items()},
        },
    )


def test_cli_poison_writes_a_prepared_folder(tmp_path: Path) -> None:
    from sdn.cli import main

    clean, out = tmp_path / "clean", tmp_path / "bd"
    write_prepared(clean)
    args = ["backdoor", "poison", "--data", str(clean), "--out", str(out), "--target", "3", "--rate", "0.2"]
    assert main([*args, "--seed", "1"]) == 0
    data = load_prepared(out)
    clean_data = load_prepared(clean)
    meta = data.meta
    assert meta["backdoor"]["target"] == 3 and meta["backdoor"]["poisoned_count"] == 8
    assert meta["backdoor"]["trigger"] == {"size": 5, "x": 26, "y": 26, "value": 255}
    assert meta["sizes"]["test_triggered"] == 9
    indices = json.loads((out / "poisoned_indices.json").read_text())
    assert len(indices) == 8 and all(clean_data.split("train").labels[i] != 3 for i in indices)
    assert torch.equal(data.split("train").labels[indices], torch.full((8,), 3))
    assert (data.split("train").labels != clean_data.split("train").labels).sum() == 8
    for split in ("holdout", "test"):
        assert torch.equal(data.split(split).images, clean_data.split(split).images)
    triggered = data.split("test_triggered")
    assert torch.all(triggered.labels != 3) and len(triggered) == 9
    assert torch.equal(triggered.labels, clean_data.split("test").labels[clean_data.split("test").labels != 3])
    assert torch.all(triggered.images[:, :, 26:31, 26:31] == 255)
    everything = data.split("test_triggered_all")  # target class included, for "over all triggered images"
    assert meta["sizes"]["test_triggered_all"] == len(everything) == len(clean_data.split("test"))
    assert torch.equal(everything.labels, clean_data.split("test").labels)
    assert torch.all(everything.images[:, :, 26:31, 26:31] == 255)

    assert main([*args, "--trigger-x", "30", "--out", str(tmp_path / "bad")]) == 2  # does not fit: error
    assert not (tmp_path / "bad" / "meta.json").exists()
    assert main([*args[:-2], "--target", "4", "--out", str(tmp_path / "bad")]) == 2  # no class 4


# ------------------------------------------------------------------------------------------------ analysis

K, TARGET, HI, LO = 3, 2, 10.0, 0.5  # softmax max: HI -> ~0.9999, LO -> 0.452


def logits_of(preds: list[list[int]], scales: list[list[float]]) -> np.ndarray:
    """[E, N, K] logits: ``scales[e][n]`` on class ``preds[e][n]``, 0 elsewhere."""
    p, s = np.asarray(preds), np.asarray(scales, dtype=np.float64)
    return (np.eye(K)[p] * s[..., None]).astype(np.float32)


def hand_made_outputs() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    sdn = {
        # holdout: IC1 confident & right on 0, 1, unsure & wrong on 2, 3; IC2 unsure & wrong; final right
        "holdout_labels": np.array([0, 1, 0, 1]),
        "holdout_logits": logits_of(
            [[0, 1, 2, 2], [2, 2, 2, 2], [0, 1, 0, 1]], [[HI, HI, LO, LO], [LO] * 4, [HI] * 4]
        ),
        # clean test: IC1 confident & right everywhere; final wrong on sample 3
        "test_labels": np.array([0, 1, 2, 0]),
        "test_logits": logits_of([[0, 1, 2, 0], [0, 1, 2, 0], [0, 1, 2, 1]], [[HI] * 4, [LO] * 4, [HI] * 4]),
        # triggered (true labels): exits at IC1 (right), IC2 (right), final (backdoor -> target)
        "test_triggered_labels": np.array([0, 1, 0]),
        "test_triggered_logits": logits_of(
            [[0, 1, 1], [0, 1, 2], [2, 2, 2]], [[HI, LO, LO], [LO, HI, LO], [HI, HI, HI]]
        ),
        "exit_fraction": np.array([0.2, 0.5, 1.1]),
    }
    cnn = {k: (v[-1:] if k.endswith("_logits") else v) for k, v in sdn.items() if k != "exit_fraction"}
    cnn["exit_fraction"] = np.array([1.0])
    return cnn, sdn


def test_accuracy_and_attack_success_per_exit() -> None:
    _, sdn = hand_made_outputs()
    acc = accuracy_per_exit(sdn["test_triggered_logits"], sdn["test_triggered_labels"])
    np.testing.assert_allclose(acc, [200 / 3, 200 / 3, 0.0])
    np.testing.assert_allclose(attack_success_per_exit(sdn["test_triggered_logits"], TARGET), [0.0, 100 / 3, 100.0])
    with pytest.raises(ValueError, match="not one of the 3 classes"):
        attack_success_per_exit(sdn["test_triggered_logits"], 3)


def test_analyze_by_hand() -> None:
    cnn, sdn = hand_made_outputs()
    result = analyze(cnn, sdn, target=TARGET, tolerance=0.5)
    assert result.cnn_clean_accuracy == pytest.approx(75.0)
    assert result.cnn_triggered_accuracy == pytest.approx(0.0)
    assert result.cnn_attack_success == pytest.approx(100.0)
    np.testing.assert_allclose(result.sdn_clean_accuracy, [100.0, 100.0, 75.0])
    np.testing.assert_allclose(result.sdn_triggered_accuracy, [200 / 3, 200 / 3, 0.0])
    np.testing.assert_allclose(result.sdn_attack_success, [0.0, 100 / 3, 100.0])
    # holdout: a threshold above IC1's unsure 0.452 and at most its confident 0.9999 keeps 100% at cost (0.2+1.1)/2
    assert 0.452 < result.threshold <= 0.9999
    assert result.threshold_holdout_accuracy == pytest.approx(100.0)
    assert result.threshold_holdout_cost == pytest.approx(0.65)
    triggered = result.early_exit_triggered
    assert triggered.accuracy == pytest.approx(200 / 3)  # the paper's "CNN 12% -> SDN 84%" effect
    assert triggered.attack_success == pytest.approx(100 / 3)
    assert triggered.exit_histogram == [1, 1, 1]
    assert triggered.cost_fraction == pytest.approx((0.2 + 0.5 + 1.1) / 3)
    clean = result.early_exit_clean
    assert clean.accuracy == pytest.approx(100.0) and clean.cost_fraction == pytest.approx(0.2)
    summary = result.summary()
    assert summary["cnn"]["attack_success"] == pytest.approx(100.0)
    assert summary["early_exit"]["triggered"]["accuracy"] == pytest.approx(200 / 3)
    assert [row["name"] for row in result.per_exit_rows()] == ["IC1", "IC2", "final"]
    assert summary["triggered_all"] is None  # outputs without test_triggered_all


def test_analyze_reports_accuracy_over_all_triggered_images_when_evaluated() -> None:
    cnn, sdn = hand_made_outputs()
    # the triggered split plus one triggered image of the target class (every exit says target: right)
    labels = np.array([0, 1, 0, TARGET])
    logits = logits_of([[0, 1, 1, 2], [0, 1, 2, 2], [2, 2, 2, 2]], [[HI, LO, LO, HI], [LO, HI, LO, HI], [HI] * 4])
    sdn = {**sdn, "test_triggered_all_labels": labels, "test_triggered_all_logits": logits}
    cnn = {**cnn, "test_triggered_all_labels": labels, "test_triggered_all_logits": logits[-1:]}
    result = analyze(cnn, sdn, target=TARGET, tolerance=0.5)
    everything = result.summary()["triggered_all"]
    assert everything["num"] == 4
    assert everything["cnn_accuracy"] == pytest.approx(25.0)
    assert everything["sdn_final_accuracy"] == pytest.approx(25.0)
    assert everything["early_exit"]["accuracy"] == pytest.approx(75.0)
    assert result.early_exit_triggered.accuracy == pytest.approx(200 / 3)  # not of the target class: unchanged


def test_analyze_reports_when_no_threshold_meets_the_tolerance() -> None:
    cnn, sdn = hand_made_outputs()
    labels = sdn["holdout_labels"]
    sdn["holdout_logits"] = logits_of(  # ICs confident (softmax 1.0 in float32) and wrong; the final head right
        [list((labels + 1) % K), list((labels + 1) % K), list(labels)], [[1e4] * 4, [1e4] * 4, [HI] * 4]
    )
    result = analyze(cnn, sdn, target=TARGET, tolerance=0.5)
    assert result.threshold_status == "none" and "no threshold reaches accuracy" in result.threshold_reason
    assert result.threshold_holdout_accuracy == 0.0
    early = result.summary()["early_exit"]
    assert early["threshold_status"] == "none" and early["threshold_reason"] == result.threshold_reason
    assert result.early_exit_clean.cost_fraction == pytest.approx(0.2)  # every input still exits at IC1


def test_analyze_rejects_mismatched_inputs() -> None:
    cnn, sdn = hand_made_outputs()
    with pytest.raises(ValueError, match="target class 0"):
        analyze(cnn, sdn, target=0)
    missing = {k: v for k, v in sdn.items() if not k.startswith("test_triggered")}
    with pytest.raises(ValueError, match="no split 'test_triggered'"):
        analyze(cnn, missing, target=TARGET)
    shifted = dict(sdn, holdout_labels=np.array([1, 1, 0, 1]))
    with pytest.raises(ValueError, match="disagree on the holdout labels"):
        analyze(cnn, shifted, target=TARGET)
    with pytest.raises(ValueError, match="single exit"):
        analyze(cnn, cnn, target=TARGET)


def test_cli_analyze_writes_summary_csv_and_figure(tmp_path: Path) -> None:
    from sdn.cli import main

    cnn, sdn = hand_made_outputs()
    np.savez(tmp_path / "cnn.npz", **cnn)
    np.savez(tmp_path / "sdn.npz", **sdn)
    out = tmp_path / "analysis"
    args = ["backdoor", "analyze", "--cnn-outputs", str(tmp_path / "cnn.npz"), "--sdn-outputs"]
    assert main([*args, str(tmp_path / "sdn.npz"), "--out", str(out), "--target", "2"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["early_exit"]["triggered"]["accuracy"] == pytest.approx(200 / 3)
    csv = (out / "per_exit.csv").read_text().splitlines()
    assert csv[0] == "exit,name,exit_fraction,clean_accuracy,triggered_accuracy,attack_success"
    assert len(csv) == 4 and csv[3].startswith("2,final,1.1,75.0,0.0,100.0")
    assert (out / "backdoor.png").is_file() and (out / "backdoor.pdf").is_file()
    assert main([*args, str(tmp_path / "missing.npz"), "--out", str(out)]) == 2


# -------------------------------------------------------------------------------------------- end to end


def test_end_to_end_poison_train_evaluate_analyze(tiny, tmp_path: Path) -> None:
    """Poison a tiny data set, train the backdoored CNN and its IC-only SDN 1 epoch each, evaluate, analyze."""

    from sdn.cli import main
    from sdn.evaluate import evaluate
    from sdn.train import train

    clean = tiny.prepared(tmp_path / "clean")
    bd = tmp_path / "bd"
    assert main(["backdoor", "poison", "--data", str(clean), "--out", str(bd), "--target", "1"]) == 0
    assert load_prepared(bd).meta["backdoor"]["trigger"] == {"size": 1, "x": 6, "y": 6, "value": 255}  # 8x8 scaled
    cnn = train(
        arch=tiny.ARCH, recipe=tiny.recipe("cnn", epochs=1, milestones=()), data_dir=bd, out_dir=tmp_path / "bd_cnn",
        seed=0, device="cpu",
    )  # fmt: skip
    sdn = train(
        arch=tiny.ARCH, recipe=tiny.recipe("ic_only", epochs=1, milestones=()), data_dir=clean,
        out_dir=tmp_path / "bd_ic_only", seed=0, device="cpu", parent=cnn,
    )  # fmt: skip
    splits = ("holdout", "test", "test_triggered", "test_triggered_all")
    for model in (cnn, sdn):
        evaluate(model, bd, model.parent / "outputs.npz", splits=splits, device="cpu")
    out = tmp_path / "analysis"
    args = ["backdoor", "analyze", "--cnn-outputs", str(cnn.parent / "outputs.npz"), "--target", "1"]
    assert main([*args, "--sdn-outputs", str(sdn.parent / "outputs.npz"), "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    outputs = np.load(sdn.parent / "outputs.npz")
    triggered_labels = outputs["test_triggered_labels"]
    assert (
        summary["num_triggered"]
        == len(triggered_labels)
        == int((load_prepared(clean).split("test").labels != 1).sum())
    )
    final_pred = outputs["test_triggered_logits"][-1].argmax(axis=-1)
    # IC-only training leaves the backbone alone: the SDN's final head is the backdoored CNN
    assert summary["sdn_final"]["attack_success"] == pytest.approx(summary["cnn"]["attack_success"])
    assert summary["cnn"]["attack_success"] == pytest.approx(100.0 * (final_pred == 1).mean())
    assert len(summary["per_exit"]["triggered_accuracy"]) == 4
    assert summary["triggered_all"]["num"] == len(load_prepared(clean).split("test").labels)
