"""Overthinking analysis on tiny hand-made logits whose answers are worked out by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sdn.analysis import overthinking as ot
from sdn.cli import main

# 2 ICs + final, 6 samples, 3 classes. Predictions per exit and labels:
LABELS = np.array([0, 0, 2, 1, 2, 0])
PREDS = np.array(
    [
        [0, 1, 2, 0, 1, 1],  # IC1: right on 0, 2
        [0, 0, 2, 1, 1, 1],  # IC2: right on 0, 1, 2, 3
        [0, 0, 1, 2, 2, 1],  # final: right on 0, 1, 4
    ]
)
STRENGTH = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])  # logit of the predicted class per sample; others 0


def make_logits(preds: np.ndarray, strength: np.ndarray, num_classes: int = 3) -> np.ndarray:
    logits = np.zeros((*preds.shape, num_classes), dtype=np.float32)
    for e in range(preds.shape[0]):
        logits[e, np.arange(preds.shape[1]), preds[e]] = strength
    return logits


def conf(a: float, num_classes: int = 3) -> float:
    """Max softmax when one logit is ``a`` and the rest are 0."""
    return float(np.exp(a) / (np.exp(a) + num_classes - 1))


LOGITS = make_logits(PREDS, STRENGTH)
FRACTION = np.array([0.2, 0.5, 1.1])


def test_earliest_correct_and_never() -> None:
    correct = ot.correctness(LOGITS, LABELS)
    assert ot.earliest_correct_exit(correct).tolist() == [0, 1, 0, 1, 2, ot.NEVER]


def test_wasteful_shares_and_oracle_cost_by_hand() -> None:
    w = ot.wasteful(LOGITS, LABELS, FRACTION)
    np.testing.assert_allclose(w.first_correct_share, [2 / 6, 2 / 6, 1 / 6])
    np.testing.assert_allclose(w.cumulative_correct_share, [2 / 6, 4 / 6, 5 / 6])
    np.testing.assert_allclose(w.correct_share, [2 / 6, 4 / 6, 3 / 6])
    assert w.never_correct_share == pytest.approx(1 / 6)
    assert w.early_correct_share == pytest.approx(4 / 6)
    # two samples pay 0.2, two pay 0.5, one is first right at the final (1.1), one never (pays 1.1)
    assert w.oracle_cost_fraction == pytest.approx((2 * 0.2 + 2 * 0.5 + 1.1 + 1.1) / 6)
    assert w.oracle_cost_fraction_nominal is None  # nominal costs need exactly 6 ICs


def test_nominal_oracle_cost_with_six_ics() -> None:
    labels = np.array([1, 1])
    preds = np.zeros((7, 2), dtype=int)
    preds[2:, 0] = 1  # sample 0 first right at IC3 (nominal .45); sample 1 never right (pays 1.0)
    w = ot.wasteful(make_logits(preds, np.array([1.0, 1.0]), 2), labels, np.linspace(0.1, 1.2, 7))
    assert w.oracle_cost_fraction_nominal == pytest.approx((0.45 + 1.0) / 2)
    assert w.oracle_cost_fraction == pytest.approx((np.linspace(0.1, 1.2, 7)[2] + 1.2) / 2)


def test_destructive_union_counts_and_confidences() -> None:
    d = ot.destructive(LOGITS, LABELS)
    assert d.final_errors == 3  # samples 2, 3, 5
    assert d.count_by_ic.tolist() == [1, 2]  # IC1: {2}; IC2: {2, 3}
    assert d.destructive_count == 2  # union {2, 3}, not 1 + 2
    assert d.destructive_share_of_errors == pytest.approx(2 / 3)
    assert d.correct_count_by_ic.tolist() == [2, 4]
    np.testing.assert_allclose(d.mean_confidence_destructive_by_ic, [conf(3), (conf(3) + conf(4)) / 2])
    np.testing.assert_allclose(
        d.mean_confidence_correct_by_ic, [(conf(1) + conf(3)) / 2, np.mean([conf(a) for a in (1, 2, 3, 4)])]
    )


def test_no_final_errors_gives_undefined_share_and_nan_means() -> None:
    labels = np.array([0, 1])
    preds = np.array([[1, 1], [0, 1]])  # IC1 right on sample 1 only; final right on both
    d = ot.destructive(make_logits(preds, np.array([2.0, 2.0]), 2), labels)
    assert d.final_errors == 0
    assert d.destructive_share_of_errors is None
    assert d.destructive_count == 0
    assert np.isnan(d.mean_confidence_destructive_by_ic[0])
    assert d.mean_confidence_correct_by_ic[0] == pytest.approx(conf(2.0, 2))


def test_one_sample_single_class() -> None:
    logits = np.zeros((2, 1, 1), dtype=np.float32)
    w = ot.wasteful(logits, np.array([0]), np.array([0.4, 1.0]))
    assert w.first_correct_share.tolist() == [1.0, 0.0]
    assert w.oracle_cost_fraction == pytest.approx(0.4)
    d = ot.destructive(logits, np.array([0]))
    assert d.final_errors == 0 and d.destructive_share_of_errors is None
    assert d.mean_confidence_correct_by_ic[0] == pytest.approx(1.0)


def test_bad_inputs_raise_naming_the_problem() -> None:
    with pytest.raises(ValueError, match="disagree"):
        ot.wasteful(LOGITS, LABELS[:4], FRACTION)
    bad = LOGITS.copy()
    bad[1, 2, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        ot.destructive(bad, LABELS)
    with pytest.raises(ValueError, match="exit_fraction"):
        ot.wasteful(LOGITS, LABELS, FRACTION[:2])


def test_command_writes_tables_summary_and_figure(tmp_path) -> None:
    npz = tmp_path / "outputs.npz"
    np.savez(npz, test_logits=LOGITS, test_labels=LABELS, exit_fraction=FRACTION, exit_positions=np.array([1, 2]))
    out = tmp_path / "ot"
    assert main(["overthinking", "--outputs", str(npz), "--out", str(out)]) == 0
    doc = json.loads((out / "summary.json").read_text())
    assert doc["wasteful_share_by_exit"] == pytest.approx([2 / 6, 2 / 6, 1 / 6])
    assert doc["early_correct_share"] == pytest.approx(4 / 6)
    assert doc["oracle_cost_fraction"] == pytest.approx(0.6)
    assert doc["destructive_share_of_errors"] == pytest.approx(2 / 3)
    assert doc["final_errors"] == 3 and doc["destructive_count"] == 2
    assert doc["oracle_cost_fraction_nominal"] is None
    assert (out / "wasteful.csv").read_text().splitlines()[0].startswith("exit,cost_fraction")
    assert len((out / "destructive.csv").read_text().splitlines()) == 3  # header + 2 ICs
    assert (out / "overthinking.png").stat().st_size > 0 and (out / "overthinking.pdf").stat().st_size > 0


def test_command_missing_split_is_a_clear_error(tmp_path, capsys) -> None:
    npz = tmp_path / "outputs.npz"
    np.savez(npz, test_logits=LOGITS, test_labels=LABELS, exit_fraction=FRACTION)
    assert main(["overthinking", "--outputs", str(npz), "--out", str(tmp_path / "o"), "--split", "holdout"]) == 2
    assert "holdout" in capsys.readouterr().err
