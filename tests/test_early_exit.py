"""Early-exit simulation and threshold choice on tiny hand-made arrays whose answers are worked out by hand."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from sdn.analysis import early_exit as ee
from sdn.analysis.arrays import softmax
from sdn.cli import main
from sdn.io import save_npz
from sdn.outputs import validate_logits

# 3 outputs (IC1, IC2, final), 4 samples, 3 classes.
#            IC1                  IC2                  final
PROBS = np.array(
    [
        [[0.9, 0.05, 0.05], [0.5, 0.4, 0.1], [0.4, 0.3, 0.3], [0.75, 0.2, 0.05]],
        [[0.2, 0.7, 0.1], [0.1, 0.85, 0.05], [0.5, 0.2, 0.3], [0.4, 0.5, 0.1]],
        [[0.1, 0.1, 0.8], [0.3, 0.6, 0.1], [0.2, 0.2, 0.6], [0.3, 0.3, 0.4]],
    ]
)
LABELS = np.array([0, 1, 2, 0])
COST = np.array([0.3, 0.6, 1.1])


def run(policy, threshold, fallback="final", probs=PROBS, labels=LABELS, cost=COST):
    return ee.simulate(probs, labels, cost, policy, threshold, fallback)


def test_confidence_policy_hand_worked():
    r = run("confidence", 0.8)
    # s0 fires at IC1 (0.9), s1 at IC2 (0.85), s2 and s3 never: final answers 2 and 2.
    assert r.exit_index.tolist() == [0, 1, 2, 2]
    assert r.predictions.tolist() == [0, 1, 2, 2]
    assert r.accuracy == pytest.approx(75.0)
    assert r.avg_cost_fraction == pytest.approx((0.3 + 0.6 + 1.1 + 1.1) / 4)
    assert r.exit_histogram.tolist() == [1, 1, 2]


def test_most_confident_fallback_takes_the_most_confident_output_at_full_cost():
    r = run("confidence", 0.8, "most-confident")
    # s3: max probs 0.75 (IC1), 0.5, 0.4 -> IC1 says 0 (correct); s2: final is the most confident.
    assert r.predictions.tolist() == [0, 1, 2, 0]
    assert r.output_index.tolist() == [0, 1, 2, 0]
    assert r.exit_index.tolist() == [0, 1, 2, 2]
    assert r.accuracy == pytest.approx(100.0)
    assert r.avg_cost_fraction == pytest.approx(3.1 / 4)


def test_nothing_exits_final_vs_most_confident():
    final = run("confidence", 1.0)
    assert final.exit_index.tolist() == [2, 2, 2, 2]
    assert final.predictions.tolist() == [2, 1, 2, 2]
    assert final.accuracy == pytest.approx(50.0)
    assert final.avg_cost_fraction == pytest.approx(1.1)
    best = run("confidence", 1.0, "most-confident")
    # max probs per output: s0 .9/.7/.8 -> IC1; s1 .5/.85/.6 -> IC2; s2 .4/.5/.6 -> final; s3 .75/.5/.4 -> IC1
    assert best.output_index.tolist() == [0, 1, 2, 0]
    assert best.predictions.tolist() == [0, 1, 2, 0]
    assert best.exit_histogram.tolist() == [0, 0, 4]
    assert best.avg_cost_fraction == pytest.approx(1.1)


def test_everything_exits_at_ic1_with_zero_threshold():
    r = run("confidence", 0.0)
    assert r.exit_index.tolist() == [0, 0, 0, 0]
    assert r.predictions.tolist() == [0, 0, 0, 0]
    assert r.accuracy == pytest.approx(50.0)
    assert r.avg_cost_fraction == pytest.approx(0.3)
    assert r.exit_histogram.tolist() == [4, 0, 0]


def test_confidence_tie_fires():
    at = run("confidence", 0.9)  # s0's IC1 confidence is exactly 0.9
    assert at.exit_index.tolist() == [0, 2, 2, 2]
    above = run("confidence", np.nextafter(0.9, 1.0))
    assert above.exit_index.tolist() == [2, 2, 2, 2]


def test_normalised_entropy_values():
    h = ee.normalised_entropy(np.array([[0.9, 0.05, 0.05], [1 / 3, 1 / 3, 1 / 3], [1.0, 0.0, 0.0]]))
    expected = -(0.9 * math.log(0.9) + 2 * 0.05 * math.log(0.05)) / math.log(3)
    assert h.tolist() == pytest.approx([expected, 1.0, 0.0])
    assert ee.normalised_entropy(np.ones((2, 1))).tolist() == [0.0, 0.0]


def test_entropy_policy_hand_worked():
    # normalised entropies: s0 IC1 .359; s1 IC1 .859, IC2 .472; s2 IC1 .991, IC2 .937; s3 IC1 .626, IC2 .859
    r = run("entropy", 0.5)
    assert r.exit_index.tolist() == [0, 1, 2, 2]
    r = run("entropy", 0.65)
    assert r.exit_index.tolist() == [0, 1, 2, 0]
    assert r.predictions.tolist() == [0, 1, 2, 0]
    assert r.avg_cost_fraction == pytest.approx((0.3 + 0.6 + 1.1 + 0.3) / 4)


def test_patience_policy_hand_worked():
    # IC predictions: s0 0,1  s1 0,1  s2 0,0  s3 0,1
    one = run("patience", 1)
    assert one.exit_index.tolist() == [0, 0, 0, 0]
    two = run("patience", 2)
    assert two.exit_index.tolist() == [2, 2, 1, 2]
    assert two.predictions.tolist() == [2, 1, 0, 2]
    assert two.accuracy == pytest.approx(25.0)
    assert two.avg_cost_fraction == pytest.approx(3.9 / 4)
    assert two.exit_histogram.tolist() == [0, 1, 3]
    never = run("patience", 3)
    assert never.exit_index.tolist() == [2, 2, 2, 2]


def test_patience_counts_consecutive_agreement_only():
    # 4 ICs predicting 0, 1, 1, 1 for one sample: k=2 fires at IC3 (index 2), k=3 at IC4 (index 3)
    onehot = np.eye(2)[[0, 1, 1, 1, 0]][:, None, :] * 0.8 + 0.1
    cost = np.linspace(0.2, 1.0, 5)
    assert run("patience", 2, probs=onehot, labels=np.array([1]), cost=cost).exit_index.tolist() == [2]
    assert run("patience", 3, probs=onehot, labels=np.array([1]), cost=cost).exit_index.tolist() == [3]
    assert run("patience", 4, probs=onehot, labels=np.array([1]), cost=cost).exit_index.tolist() == [4]


def test_single_class_everything_exits_at_ic1():
    probs = np.ones((3, 5, 1))
    labels = np.zeros(5, dtype=np.int64)
    for policy, threshold in (("confidence", 1.0), ("entropy", 0.0), ("patience", 1)):
        r = run(policy, threshold, probs=probs, labels=labels)
        assert r.exit_index.tolist() == [0] * 5
        assert r.accuracy == pytest.approx(100.0)
        assert r.avg_cost_fraction == pytest.approx(0.3)


def test_one_sample_and_no_internal_classifier():
    r = run("confidence", 0.6, probs=PROBS[:, 1:2], labels=LABELS[1:2])
    assert (r.exit_index.tolist(), r.predictions.tolist(), r.accuracy) == ([1], [1], 100.0)
    cnn = run("confidence", 0.0, probs=PROBS[2:], labels=LABELS, cost=np.array([1.0]))
    assert cnn.exit_index.tolist() == [0, 0, 0, 0]
    assert cnn.predictions.tolist() == [2, 1, 2, 2]


def test_sweep_table():
    table = ee.sweep(PROBS, LABELS, COST, "confidence", [0.0, 0.8, 1.0])
    assert list(table.columns) == ["threshold", "accuracy", "cost", "exit_0", "exit_1", "exit_2"]
    assert table["accuracy"].tolist() == pytest.approx([50.0, 75.0, 50.0])
    assert table["cost"].tolist() == pytest.approx([0.3, 0.775, 1.1])
    assert table[["exit_0", "exit_1", "exit_2"]].values.tolist() == [[4, 0, 0], [1, 1, 2], [0, 0, 4]]


def test_default_grids():
    conf = ee.default_thresholds("confidence", 7)
    assert set(ee.PAPER_CONFIDENCE_GRID) <= set(conf) and len(conf) > 100 and conf == sorted(conf)
    assert min(conf) == 0.0 and max(conf) == 1.0
    assert ee.default_thresholds("patience", 7) == [1, 2, 3, 4, 5, 6]
    assert 0.0 in ee.default_thresholds("entropy", 7)


TABLE = pd.DataFrame(
    {"threshold": [0.5, 0.7, 0.9, 0.99], "accuracy": [80.0, 88.0, 90.0, 91.0], "cost": [0.3, 0.5, 0.7, 0.9]}
)


def test_choose_by_tolerance_picks_cheapest_within_tolerance():
    assert ee.choose_by_tolerance(TABLE, 90.4, 0.5)["threshold"] == 0.9
    assert ee.choose_by_tolerance(TABLE, 90.4, 3.0)["threshold"] == 0.7
    with pytest.raises(ee.NoThresholdError, match="91.000"):
        ee.choose_by_tolerance(TABLE, 95.0, 0.5)


def test_choose_by_tolerance_or_best_reports_instead_of_failing():
    ok = ee.choose_by_tolerance_or_best(TABLE, 90.4, 0.5)
    assert (ok.status, ok.threshold, ok.reason) == ("ok", 0.9, None)
    none = ee.choose_by_tolerance_or_best(TABLE, 95.0, 0.5)
    assert none.status == "none" and none.threshold == 0.99  # the most accurate row
    assert "no threshold reaches accuracy >= 94.500%" in none.reason and "0.99" in none.reason
    assert none.record() == {"threshold_status": "none", "threshold_reason": none.reason}
    tied = pd.DataFrame({"threshold": [0.8, 0.9], "accuracy": [50.0, 50.0], "cost": [0.6, 0.4]})
    assert ee.choose_by_tolerance_or_best(tied, 99.0).threshold == 0.9  # equal accuracy: the cheaper row


def test_choose_by_budget_picks_most_accurate_within_budget():
    cost = np.array([0.3, 0.6, 1.1])
    assert ee.choose_by_budget(TABLE, 0.6, cost)["threshold"] == 0.7
    assert ee.choose_by_budget(TABLE, 0.3, cost)["threshold"] == 0.5
    assert ee.choose_by_budget(TABLE, 1.0, cost)["threshold"] == 0.99
    with pytest.raises(ValueError, match=r"budget 0.25 .*first exit's cost 0.3"):
        ee.choose_by_budget(TABLE, 0.25, cost)


def test_bad_thresholds_name_policy_value_and_range():
    with pytest.raises(ValueError, match=r"'confidence' must lie in \[0, 1\], got 1.5"):
        run("confidence", 1.5)
    with pytest.raises(ValueError, match=r"'entropy' must lie in \[0, 1\], got -0.1"):
        run("entropy", -0.1)
    with pytest.raises(ValueError, match=r"'patience' must be an integer >= 1, got 0"):
        run("patience", 0)
    with pytest.raises(ValueError, match=r"'patience' must be an integer >= 1, got 1.5"):
        run("patience", 1.5)
    with pytest.raises(ValueError, match="unknown early-exit policy 'greedy'"):
        run("greedy", 0.5)
    with pytest.raises(ValueError, match="unknown fallback 'best'"):
        run("confidence", 0.5, "best")


def test_bad_arrays_are_named():
    with pytest.raises(ValueError, match="labels has 3"):
        run("confidence", 0.5, labels=LABELS[:3])
    with pytest.raises(ValueError, match=r"exit cost must have shape \[3\]"):
        run("confidence", 0.5, cost=COST[:2])
    logits = np.zeros((3, 4, 3))
    logits[1, 2, 0] = np.nan
    logits[1, 3, 1] = np.inf
    with pytest.raises(ValueError, match="exit 1: 2 values"):
        validate_logits(logits, LABELS)
    with pytest.raises(ValueError, match="empty"):
        validate_logits(np.zeros((3, 0, 3)), np.zeros(0, dtype=np.int64))
    with pytest.raises(ValueError, match=r"must lie in \[0, 3\)"):
        validate_logits(np.zeros((3, 4, 3)), np.array([0, 1, 2, 3]))


def test_softmax_matches_definition():
    logits = np.array([[[1.0, 2.0, 3.0]], [[1000.0, 1000.0, 0.0]]])
    p = softmax(logits)
    e = np.exp([1.0, 2.0, 3.0])
    assert p[0, 0].tolist() == pytest.approx((e / e.sum()).tolist())
    assert p[1, 0].tolist() == pytest.approx([0.5, 0.5, 0.0])


def write_outputs(path, seed=0, num_exits=4, num_classes=5):
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("holdout", 60), ("test", 80)):
        labels = rng.integers(0, num_classes, n)
        logits = rng.normal(size=(num_exits, n, num_classes)).astype(np.float32)
        for e in range(num_exits):
            logits[e, np.arange(n), labels] += 1.0 + e
        arrays[f"{split}_logits"], arrays[f"{split}_labels"] = logits, labels
    fraction = np.array([0.2, 0.45, 0.7, 1.1])[:num_exits]
    save_npz(
        path,
        **arrays,
        exit_fraction=fraction,
        exit_macs=fraction * 1e6,
        exit_ops=fraction * 2e6,
        exit_positions=np.arange(num_exits - 1),
    )
    return arrays, fraction


def test_cli_end_to_end(tmp_path):
    npz = tmp_path / "outputs.npz"
    arrays, fraction = write_outputs(npz)
    out = tmp_path / "ee"
    assert main(["early-exit", "--outputs", str(npz), "--out", str(out)]) == 0
    for name in ("sweep_confidence.csv", "sweep_entropy.csv", "sweep_patience.csv", "chosen.csv", "chosen.md"):
        assert (out / name).is_file(), name
    for stem in ("accuracy_vs_cost", "exit_histogram"):
        assert (out / f"{stem}.png").stat().st_size > 0 and (out / f"{stem}.pdf").stat().st_size > 0
    summary = json.loads((out / "summary.json").read_text())
    test_probs = softmax(arrays["test_logits"])
    final_acc = 100.0 * (test_probs[-1].argmax(-1) == arrays["test_labels"]).mean()
    assert summary["final_test_accuracy"] == pytest.approx(final_acc)
    entry = summary["policies"]["confidence"]["tolerance"]
    replay = ee.simulate(test_probs, arrays["test_labels"], fraction, "confidence", entry["threshold"])
    assert entry["test_accuracy"] == pytest.approx(replay.accuracy)
    assert entry["test_cost_fraction"] == pytest.approx(replay.avg_cost_fraction)
    holdout_probs = softmax(arrays["holdout_logits"])
    holdout_final = 100.0 * (holdout_probs[-1].argmax(-1) == arrays["holdout_labels"]).mean()
    assert entry["holdout_accuracy"] >= holdout_final - 0.5
    budget = summary["policies"]["patience"]["budget_0.5"]
    assert budget["holdout_cost_fraction"] <= 0.5
    sweep = pd.read_csv(out / "sweep_patience.csv")
    assert sweep["threshold"].tolist() == [1, 2, 3]
    assert sweep.loc[0, "test_cost"] == pytest.approx(0.2) and sweep.loc[0, "holdout_exit_0"] == 60
    chosen = pd.read_csv(out / "chosen.csv")
    assert len(chosen) == 3 * 4 and set(chosen["rule"]) == {"tolerance", "budget_0.25", "budget_0.5", "budget_0.75"}
    assert "| confidence | tolerance |" in (out / "chosen.md").read_text()


def test_cli_marks_the_cnn_and_refuses_other_samples(tmp_path):
    npz, cnn = tmp_path / "outputs.npz", tmp_path / "cnn.npz"
    arrays, _ = write_outputs(npz)
    labels = arrays["test_labels"]
    cnn_logits = np.eye(5, dtype=np.float32)[np.where(np.arange(len(labels)) % 4 == 0, (labels + 1) % 5, labels)]
    save_npz(cnn, test_logits=cnn_logits[None], test_labels=labels, exit_fraction=np.array([1.0]))
    out = tmp_path / "ee"
    assert main(["early-exit", "--outputs", str(npz), "--cnn-outputs", str(cnn), "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cnn_test_accuracy"] == pytest.approx(75.0)  # every fourth sample wrong, by construction
    assert summary["cnn_outputs"] == str(cnn)
    save_npz(cnn, test_logits=cnn_logits[None], test_labels=(labels + 1) % 5, exit_fraction=np.array([1.0]))
    assert main(["early-exit", "--outputs", str(npz), "--cnn-outputs", str(cnn), "--out", str(out)]) == 2


def test_cli_budget_below_first_exit_is_a_usage_error(tmp_path, capsys):
    npz = tmp_path / "outputs.npz"
    write_outputs(npz)
    code = main(["early-exit", "--outputs", str(npz), "--out", str(tmp_path / "o"), "--budgets", "0.1"])
    assert code == 2
    assert "budget 0.1" in capsys.readouterr().err
    code = main(["early-exit", "--outputs", str(tmp_path / "missing.npz"), "--out", str(tmp_path / "o")])
    assert code == 2
    assert "missing.npz" in capsys.readouterr().err
