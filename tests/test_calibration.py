"""Expected calibration error and the ``sdn calibration`` command on hand-worked arrays."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from sdn.analysis import calibration as cal
from sdn.analysis import early_exit as ee
from sdn.cli import main
from sdn.io import save_npz

# conf .9 (right), .8 (wrong), .6 (right) fall in bin (0.5, 1]; .4 (wrong) in [0, 0.5].
PROBS = np.array([[0.9, 0.05, 0.05], [0.8, 0.1, 0.1], [0.2, 0.6, 0.2], [0.4, 0.3, 0.3]])
LABELS = np.array([0, 1, 1, 1])


def test_ece_hand_worked_two_bins():
    # high bin: acc 2/3, conf 2.3/3 -> gap 0.1, weight 3/4; low bin: acc 0, conf 0.4, weight 1/4
    assert cal.expected_calibration_error(PROBS, LABELS, n_bins=2) == pytest.approx(0.75 * 0.1 + 0.25 * 0.4)
    table = cal.reliability_table(PROBS, LABELS, n_bins=2)
    assert table["count"].tolist() == [1, 3]
    assert table["accuracy"].tolist() == pytest.approx([0.0, 2 / 3])
    assert table["confidence"].tolist() == pytest.approx([0.4, 2.3 / 3])


def test_ece_one_bin_is_the_accuracy_confidence_gap():
    # one bin: acc 0.5, mean conf 2.7/4
    assert cal.expected_calibration_error(PROBS, LABELS, n_bins=1) == pytest.approx(abs(0.5 - 2.7 / 4))


def test_bins_are_closed_on_the_right_and_empty_bins_ignored():
    probs = np.array([[0.5, 0.5], [1.0, 0.0]])
    table = cal.reliability_table(probs, np.array([0, 0]), n_bins=2)
    assert table["count"].tolist() == [1, 1]  # 0.5 goes to (0, 0.5], 1.0 to (0.5, 1]
    assert cal.expected_calibration_error(probs, np.array([0, 0]), n_bins=2) == pytest.approx(0.25)
    table15 = cal.reliability_table(probs, np.array([0, 0]), n_bins=15)
    assert table15["count"].sum() == 2 and table15["accuracy"].isna().sum() == 13
    assert cal.expected_calibration_error(np.ones((3, 1)), np.zeros(3, dtype=np.int64)) == pytest.approx(0.0)


def test_ece_bad_input():
    with pytest.raises(ValueError, match=r"labels must have shape \[4\]"):
        cal.expected_calibration_error(PROBS, LABELS[:3])
    with pytest.raises(ValueError, match=r"shape \[N, K\]"):
        cal.expected_calibration_error(PROBS[None], LABELS)
    with pytest.raises(ValueError, match="n_bins must be an integer >= 1, got 0"):
        cal.expected_calibration_error(PROBS, LABELS, n_bins=0)
    bad = PROBS.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="1 NaN"):
        cal.expected_calibration_error(bad, LABELS)


def test_early_exit_probs_follow_the_answering_output():
    probs = np.stack([PROBS, PROBS[[1, 0, 3, 2]], PROBS[[3, 3, 3, 3]]])
    result = ee.simulate(probs, LABELS, np.array([0.3, 0.6, 1.0]), "confidence", 0.85, "most-confident")
    # sample 0 exits at IC1 (0.9), sample 1 at IC2 (0.9); nothing fires for samples 2 and 3, whose most
    # confident outputs are IC1 (.6 vs .4, .4) and IC2 (.6 vs .4, .4)
    assert result.output_index.tolist() == [0, 1, 0, 1]
    assert result.exit_index.tolist() == [0, 1, 2, 2]
    picked = cal.early_exit_probs(probs, result)
    assert picked.tolist() == [PROBS[0].tolist(), PROBS[0].tolist(), PROBS[2].tolist(), PROBS[2].tolist()]


def write_outputs(path):
    probs = np.stack([PROBS, PROBS[[1, 0, 3, 2]], PROBS[[3, 3, 3, 3]]])
    logits = np.log(probs).astype(np.float32)  # softmax(log p) = p
    save_npz(
        path,
        holdout_logits=logits,
        holdout_labels=LABELS,
        test_logits=logits,
        test_labels=LABELS,
        exit_fraction=np.array([0.3, 0.6, 1.0]),
        exit_macs=np.array([1.0, 2.0, 3.0]),
        exit_ops=np.array([2.0, 4.0, 6.0]),
        exit_positions=np.array([0, 1]),
    )
    return probs


def test_cli_end_to_end(tmp_path):
    npz = tmp_path / "outputs.npz"
    probs = write_outputs(npz)
    out = tmp_path / "cal"
    assert (
        main(["calibration", "--outputs", str(npz), "--out", str(out), "--threshold", "0.85", "--n-bins", "2"]) == 0
    )
    table = pd.read_csv(out / "ece.csv")
    assert table["output"].tolist() == ["IC1", "IC2", "final", "early_exit"]
    assert table["ece"].iloc[0] == pytest.approx(0.175)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["per_exit_ece"][0] == pytest.approx(0.175)
    result = ee.simulate(probs, LABELS, np.array([0.3, 0.6, 1.0]), "confidence", 0.85)
    expected = cal.expected_calibration_error(cal.early_exit_probs(probs, result), LABELS, n_bins=2)
    assert summary["early_exit"]["ece"] == pytest.approx(expected)
    assert summary["early_exit"]["threshold"] == 0.85 and summary["early_exit"]["rule"] == "given"
    assert (out / "reliability.png").stat().st_size > 0 and (out / "reliability.pdf").stat().st_size > 0
    assert len(pd.read_csv(out / "reliability.csv")) == 4 * 2


def test_cli_chooses_threshold_on_holdout_by_default(tmp_path):
    npz = tmp_path / "outputs.npz"
    write_outputs(npz)
    out = tmp_path / "cal"
    assert main(["calibration", "--outputs", str(npz), "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["early_exit"]["rule"] == "tolerance 0.5 on holdout"
    assert 0.0 <= summary["early_exit"]["threshold"] <= 1.0
    assert main(["calibration", "--outputs", str(npz), "--out", str(out), "--threshold", "2"]) == 2


def test_no_threshold_meeting_the_tolerance_is_reported_not_fatal(tmp_path):
    labels = np.array([0, 1, 2, 0])
    wrong = np.eye(3)[(labels + 1) % 3] * 1e4  # ICs: softmax exactly 1.0 on a wrong class, at every threshold
    logits = np.stack([wrong, wrong, np.eye(3)[labels] * 5.0]).astype(np.float32)  # the final head is right
    npz = tmp_path / "outputs.npz"
    save_npz(
        npz,
        holdout_logits=logits,
        holdout_labels=labels,
        test_logits=logits,
        test_labels=labels,
        exit_fraction=np.array([0.3, 0.6, 1.0]),
    )
    out = tmp_path / "cal"
    assert main(["calibration", "--outputs", str(npz), "--out", str(out)]) == 0
    early = json.loads((out / "summary.json").read_text())["early_exit"]
    assert early["threshold_status"] == "none" and "no threshold reaches accuracy" in early["threshold_reason"]
    assert early["accuracy"] == 0.0  # the most accurate threshold of the grid still exits every sample at IC1
