"""Confusion metric on 3 hand-made samples: L1 sums, z-normalisation, the four counts, AUROC (ours)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sdn.analysis import confusion as cf
from sdn.cli import main

# softmax(log p) == p, so these are the per-exit probabilities exactly. 2 ICs + final, 3 samples, 2 classes.
PROBS = np.array(
    [
        [[0.8, 0.2], [0.8, 0.2], [0.5, 0.5]],  # IC1: L1 to final 0, 0.6, 0.6
        [[0.5, 0.5], [0.5, 0.5], [0.8, 0.2]],  # IC2: L1 to final 0.6, 0, 1.2
        [[0.8, 0.2], [0.5, 0.5], [0.2, 0.8]],  # final: predicts 0, 0 (tie), 1
    ]
)
LOGITS = np.log(PROBS)
LABELS = np.array([0, 1, 1])  # final right, wrong, right


def test_confusion_is_sum_of_l1_distances_to_final() -> None:
    np.testing.assert_allclose(cf.confusion_scores(LOGITS), [0.6, 0.6, 1.8])


def test_zscore_uses_given_split_statistics() -> None:
    stats = cf.norm_stats(np.array([0.6, 0.6, 1.8]), "holdout")
    assert stats.mean == pytest.approx(1.0)
    assert stats.std == pytest.approx(np.sqrt(0.32))
    np.testing.assert_allclose(cf.zscore(np.array([1.0, 1.0 + np.sqrt(0.32)]), stats), [0.0, 1.0])


def test_constant_norm_split_raises_naming_it() -> None:
    with pytest.raises(ValueError, match="'holdout'.*standard deviation 0"):
        cf.norm_stats(np.array([0.3, 0.3]), "holdout")


def test_analyze_of_a_degenerate_model_centres_and_says_so() -> None:
    constant = np.log(np.repeat(PROBS[:, :1], 3, axis=1))  # every sample the same outputs: confusion std 0
    result = cf.analyze(LOGITS, LABELS, constant, split="test", norm_split="holdout")
    assert result.summary["norm_std"] == 1.0
    assert "'holdout'" in result.summary["norm_note"] and "not scaled" in result.summary["norm_note"]
    np.testing.assert_allclose(result.normalised, result.raw - cf.confusion_scores(constant).mean())
    assert cf.analyze(LOGITS, LABELS, LOGITS, split="test", norm_split="holdout").summary["norm_note"] is None


def test_four_counts_by_hand() -> None:
    correct = np.array([True, True, True, False, False])
    counts = cf.confusion_counts(np.array([0.0, 5.0, 1.0, 3.0, 0.5]), correct)
    # mean(wrong) = 1.75: correct above it -> {5}; mean(correct) = 2: wrong below it -> {0.5}
    assert counts == {"correct_with_confusion_above_mean_wrong": 1, "wrong_with_confusion_below_mean_correct": 1}
    counts = cf.confidence_counts(np.array([0.9, 0.3, 0.8, 0.6, 0.95]), correct)
    # mean(wrong) = 0.775: correct below -> {0.3}; mean(correct) = 0.667: wrong above -> {0.95}
    assert counts == {"correct_with_confidence_below_mean_wrong": 1, "wrong_with_confidence_above_mean_correct": 1}
    all_right = cf.confidence_counts(np.array([0.9, 0.3]), np.array([True, True]))
    assert all_right["correct_with_confidence_below_mean_wrong"] is None


def test_auroc_separable_and_undefined() -> None:
    assert cf.auroc(np.array([0.1, 0.2, 0.8, 0.9]), np.array([False, False, True, True])) == pytest.approx(1.0)
    assert cf.auroc(np.array([0.1, 0.2]), np.array([True, True])) is None
    assert cf.auroc(np.array([0.1, 0.2]), np.array([False, False])) is None


def test_analyse_by_hand() -> None:
    result = cf.analyze(LOGITS, LABELS, LOGITS, split="test", norm_split="holdout")
    doc = result.summary
    z = (np.array([0.6, 0.6, 1.8]) - 1.0) / np.sqrt(0.32)
    np.testing.assert_allclose(result.normalised, z)
    np.testing.assert_allclose(result.confidence, [0.8, 0.5, 0.8])
    assert result.correct.tolist() == [True, False, True]
    assert doc["num_wrong"] == 1
    assert doc["confusion_mean_wrong"] == pytest.approx(z[1])
    assert doc["confusion_mean_correct"] == pytest.approx((z[0] + z[2]) / 2)
    assert doc["correct_with_confusion_above_mean_wrong"] == 1  # sample 2
    assert doc["wrong_with_confusion_below_mean_correct"] == 1  # sample 1
    assert doc["auroc_confidence"] == pytest.approx(1.0)  # the wrong sample is the least confident
    assert doc["auroc_confusion"] == pytest.approx(0.25)  # ties sample 0 (0.5), below sample 2 (0)
    assert "OUR ADDITION" in doc["auroc_note"]


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="internal classifier"):
        cf.confusion_scores(LOGITS[-1:])
    with pytest.raises(ValueError, match="disagree"):
        cf.analyze(LOGITS, LABELS[:2], LOGITS)
    bad = LOGITS.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        cf.analyze(bad, LABELS, LOGITS)
    with pytest.raises(ValueError, match="holdout_logits"):
        cf.analyze(LOGITS, LABELS, np.nan * LOGITS)
    with pytest.raises(ValueError, match="other than"):
        cf.analyze(LOGITS, LABELS, LOGITS, split="test", norm_split="test")


def test_one_sample_and_single_class() -> None:
    result = cf.analyze(LOGITS[:, :1], LABELS[:1], LOGITS)
    assert result.summary["num_samples"] == 1 and result.summary["auroc_confusion"] is None
    one_class = np.zeros((3, 4, 1))
    degenerate = cf.analyze(one_class, np.zeros(4, dtype=np.int64), one_class)  # reported, with a note
    assert "standard deviation 0" in degenerate.summary["norm_note"]


def test_command_with_cnn_baseline(tmp_path) -> None:
    sdn_npz, cnn_npz = tmp_path / "sdn.npz", tmp_path / "cnn.npz"
    fraction = np.array([0.3, 0.6, 1.05])
    np.savez(
        sdn_npz,
        test_logits=LOGITS,
        test_labels=LABELS,
        holdout_logits=LOGITS,
        holdout_labels=LABELS,
        exit_fraction=fraction,
    )
    cnn_logits = np.log(np.array([[[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]]]))  # right, wrong, right
    np.savez(cnn_npz, test_logits=cnn_logits, test_labels=LABELS, exit_fraction=np.array([1.0]))
    out = tmp_path / "conf"
    assert main(["confusion", "--outputs", str(sdn_npz), "--out", str(out), "--cnn-outputs", str(cnn_npz)]) == 0
    doc = json.loads((out / "summary.json").read_text())
    assert doc["norm_mean"] == pytest.approx(1.0)
    assert doc["auroc_confusion"] == pytest.approx(0.25)
    assert doc["cnn_accuracy"] == pytest.approx(2 / 3)
    assert doc["auroc_cnn_confidence"] == pytest.approx(1.0)  # CNN's wrong sample (0.6) is its least confident
    assert doc["cnn_wrong_with_confidence_above_mean_correct"] == 0
    header = (out / "confusion.csv").read_text().splitlines()[0]
    assert "confusion_normalised" in header and "cnn_confidence" in header
    assert (out / "confusion_hist.png").exists() and (out / "confusion_hist.pdf").exists()


def test_command_rejects_mismatched_cnn_labels(tmp_path, capsys) -> None:
    sdn_npz, cnn_npz = tmp_path / "sdn.npz", tmp_path / "cnn.npz"
    np.savez(
        sdn_npz,
        test_logits=LOGITS,
        test_labels=LABELS,
        holdout_logits=LOGITS,
        holdout_labels=LABELS,
        exit_fraction=np.ones(3),
    )
    np.savez(cnn_npz, test_logits=LOGITS[-1:], test_labels=LABELS[::-1].copy(), exit_fraction=np.ones(1))
    assert (
        main(["confusion", "--outputs", str(sdn_npz), "--out", str(tmp_path / "o"), "--cnn-outputs", str(cnn_npz)])
        == 2
    )
    assert "different test labels" in capsys.readouterr().err
