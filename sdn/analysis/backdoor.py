"""The backdoor experiment's analysis (paper §5, spec §6): how a backdoored CNN and its IC-only SDN answer.

The poisoning itself is :mod:`sdn.data.backdoor`. The analysis is a pure function of the cached per-exit logits of
the backdoored CNN and of the IC-only SDN built from it (``outputs.npz`` with splits ``holdout``, ``test`` and
``test_triggered``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from sdn.analysis import early_exit
from sdn.analysis.arrays import softmax
from sdn.analysis.early_exit import DEFAULT_TOLERANCE
from sdn.outputs import exit_costs, load_split, splits, validate_logits

SPLITS = ("holdout", "test", "test_triggered")
ALL_TRIGGERED = "test_triggered_all"  # optional: every test image with the trigger, target class included


def accuracy_per_exit(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Top-1 accuracy (%) of every exit, [E] float64."""
    validate_logits(logits, labels)
    return 100.0 * (np.asarray(logits).argmax(axis=-1) == np.asarray(labels)[None, :]).mean(axis=1)


def attack_success_per_exit(logits: np.ndarray, target: int) -> np.ndarray:
    """Share (%) of samples every exit predicts as ``target``, [E] (on triggered non-target inputs: the ASR)."""
    logits = np.asarray(logits)
    if logits.ndim != 3 or logits.shape[1] == 0:
        raise ValueError(f"logits must have shape [E, N, K] with N >= 1, got {logits.shape}")
    if not 0 <= target < logits.shape[2]:
        raise ValueError(f"target class {target} is not one of the {logits.shape[2]} classes")
    return 100.0 * (logits.argmax(axis=-1) == target).mean(axis=1)


@dataclass(frozen=True)
class EarlyExitOutcome:
    """Early exit on one split at the threshold chosen on the clean holdout (accuracies in %)."""

    accuracy: float
    attack_success: float
    cost_fraction: float
    exit_histogram: list[int]


@dataclass(frozen=True)
class BackdoorResult:
    """Everything ``sdn backdoor analyze`` reports (accuracies and attack success in %)."""

    target: int
    policy: str
    tolerance: float
    fallback: str
    num_test: int
    num_triggered: int
    cnn_clean_accuracy: float
    cnn_triggered_accuracy: float
    cnn_attack_success: float
    cnn_holdout_accuracy: float
    sdn_clean_accuracy: list[float]
    sdn_triggered_accuracy: list[float]
    sdn_attack_success: list[float]
    sdn_holdout_accuracy: list[float]
    exit_fraction: list[float]
    threshold: float
    threshold_holdout_accuracy: float
    threshold_holdout_cost: float
    early_exit_clean: EarlyExitOutcome
    early_exit_triggered: EarlyExitOutcome
    threshold_status: str = "ok"
    threshold_reason: str | None = None
    triggered_all: dict[str, Any] | None = None  # over EVERY triggered test image (split test_triggered_all)

    def summary(self) -> dict[str, Any]:
        """The summary.json document (keys in docs/internals.md, "Analysis outputs: backdoor, gradcam")."""
        return {
            "target": self.target,
            "policy": self.policy,
            "tolerance": self.tolerance,
            "fallback": self.fallback,
            "num_test": self.num_test,
            "num_triggered": self.num_triggered,
            "cnn": {
                "clean_accuracy": self.cnn_clean_accuracy,
                "triggered_accuracy": self.cnn_triggered_accuracy,
                "attack_success": self.cnn_attack_success,
                "holdout_accuracy": self.cnn_holdout_accuracy,
            },
            "sdn_final": {
                "clean_accuracy": self.sdn_clean_accuracy[-1],
                "triggered_accuracy": self.sdn_triggered_accuracy[-1],
                "attack_success": self.sdn_attack_success[-1],
                "holdout_accuracy": self.sdn_holdout_accuracy[-1],
            },
            "per_exit": {
                "clean_accuracy": self.sdn_clean_accuracy,
                "triggered_accuracy": self.sdn_triggered_accuracy,
                "attack_success": self.sdn_attack_success,
                "exit_fraction": self.exit_fraction,
            },
            "early_exit": {
                "threshold": self.threshold,
                "threshold_status": self.threshold_status,
                "threshold_reason": self.threshold_reason,
                "holdout_accuracy": self.threshold_holdout_accuracy,
                "holdout_cost_fraction": self.threshold_holdout_cost,
                "clean": asdict(self.early_exit_clean),
                "triggered": asdict(self.early_exit_triggered),
            },
            "triggered_all": self.triggered_all,
        }

    def per_exit_rows(self) -> list[dict[str, Any]]:
        """One row per SDN exit (the final head last) for per_exit.csv."""
        num = len(self.sdn_clean_accuracy)
        return [
            {
                "exit": e,
                "name": "final" if e == num - 1 else f"IC{e + 1}",
                "exit_fraction": self.exit_fraction[e],
                "clean_accuracy": self.sdn_clean_accuracy[e],
                "triggered_accuracy": self.sdn_triggered_accuracy[e],
                "attack_success": self.sdn_attack_success[e],
            }
            for e in range(num)
        ]


def analyze(
    cnn: Mapping[str, np.ndarray],
    sdn: Mapping[str, np.ndarray],
    *,
    target: int = 5,
    policy: str = "confidence",
    tolerance: float = DEFAULT_TOLERANCE,
    fallback: str = "final",
) -> BackdoorResult:
    """The backdoor measurements from two ``outputs.npz`` mappings (backdoored CNN, IC-only SDN built from it).

    Both hold ``{split}_logits``/``{split}_labels`` for holdout, test and test_triggered (TRUE labels, no
    target-class sample); the SDN also ``exit_fraction``. The early-exit threshold is chosen on the CLEAN holdout
    exactly as :mod:`sdn.analysis.early_exit` does (the cheapest threshold of the default grid whose holdout
    accuracy is at least the SDN final head's minus ``tolerance`` points), then replayed on the clean and the
    triggered test sets.
    """
    early_exit.check_policy(policy)
    early_exit.check_fallback(fallback)
    cnn_splits = {split: load_split(cnn, split) for split in SPLITS}
    sdn_splits = {split: load_split(sdn, split) for split in SPLITS}
    for split in SPLITS:
        if not np.array_equal(cnn_splits[split][1], sdn_splits[split][1]):
            raise ValueError(
                f"CNN and SDN outputs disagree on the {split} labels: were both evaluated on one data dir?"
            )
    triggered_labels = sdn_splits["test_triggered"][1]
    if (triggered_labels == target).any():
        raise ValueError(f"test_triggered holds samples of the target class {target}: wrong --target or data?")
    num_exits = sdn_splits["test"][0].shape[0]
    if num_exits < 2:
        raise ValueError("the SDN outputs hold a single exit: pass the IC-only SDN's outputs as --sdn-outputs")
    cost = exit_costs(sdn, num_exits)

    def cnn_final(split: str, fn: str) -> float:
        logits, labels = cnn_splits[split]
        if fn == "attack":
            return float(attack_success_per_exit(logits[-1:], target)[0])
        return float(accuracy_per_exit(logits[-1:], labels)[0])

    per_exit = {split: accuracy_per_exit(*sdn_splits[split]) for split in SPLITS}
    probs = {split: softmax(sdn_splits[split][0]) for split in SPLITS}
    grid = early_exit.default_thresholds(policy, num_exits)
    table = early_exit.sweep(probs["holdout"], sdn_splits["holdout"][1], cost, policy, grid, fallback)
    choice = early_exit.choose_by_tolerance_or_best(table, float(per_exit["holdout"][-1]), tolerance)
    row = choice.row
    threshold = early_exit.check_threshold(policy, row["threshold"])
    outcomes = {}
    for split in ("test", "test_triggered", ALL_TRIGGERED):
        if split == ALL_TRIGGERED and not (ALL_TRIGGERED in splits(sdn) and ALL_TRIGGERED in splits(cnn)):
            continue
        if split == ALL_TRIGGERED:
            sdn_splits[split] = load_split(sdn, split)
            probs[split] = softmax(sdn_splits[split][0])
        result = early_exit.simulate(probs[split], sdn_splits[split][1], cost, policy, threshold, fallback)
        outcomes[split] = EarlyExitOutcome(
            accuracy=result.accuracy,
            attack_success=float(100.0 * (result.predictions == target).mean()),
            cost_fraction=result.avg_cost_fraction,
            exit_histogram=result.exit_histogram.tolist(),
        )
    triggered_all = None
    if ALL_TRIGGERED in outcomes:
        logits, labels = load_split(cnn, ALL_TRIGGERED)
        sdn_logits, sdn_labels = sdn_splits[ALL_TRIGGERED]
        if not np.array_equal(labels, sdn_labels):
            raise ValueError(f"CNN and SDN outputs disagree on the {ALL_TRIGGERED} labels")
        triggered_all = {
            "num": int(labels.shape[0]),
            "cnn_accuracy": float(accuracy_per_exit(logits[-1:], labels)[0]),
            "sdn_final_accuracy": float(accuracy_per_exit(sdn_logits[-1:], labels)[0]),
            "early_exit": asdict(outcomes[ALL_TRIGGERED]),
        }
    return BackdoorResult(
        target=target,
        triggered_all=triggered_all,
        policy=policy,
        tolerance=tolerance,
        fallback=fallback,
        num_test=int(sdn_splits["test"][1].shape[0]),
        num_triggered=int(triggered_labels.shape[0]),
        cnn_clean_accuracy=cnn_final("test", "accuracy"),
        cnn_triggered_accuracy=cnn_final("test_triggered", "accuracy"),
        cnn_attack_success=cnn_final("test_triggered", "attack"),
        cnn_holdout_accuracy=cnn_final("holdout", "accuracy"),
        sdn_clean_accuracy=per_exit["test"].tolist(),
        sdn_triggered_accuracy=per_exit["test_triggered"].tolist(),
        sdn_attack_success=attack_success_per_exit(sdn_splits["test_triggered"][0], target).tolist(),
        sdn_holdout_accuracy=per_exit["holdout"].tolist(),
        exit_fraction=cost.tolist(),
        threshold=float(threshold),
        threshold_holdout_accuracy=float(row["accuracy"]),
        threshold_holdout_cost=float(row["cost"]),
        early_exit_clean=outcomes["test"],
        early_exit_triggered=outcomes["test_triggered"],
        threshold_status=choice.status,
        threshold_reason=choice.reason,
    )


def backdoor_figure(result: BackdoorResult) -> Any:
    """Per-exit accuracy on clean vs triggered inputs (TRUE labels) and attack success per exit."""
    from sdn.report.plots import new_figure

    rows = result.per_exit_rows()
    x = np.arange(len(rows))
    names = [row["name"] for row in rows]
    fig, (left, right) = new_figure(1, 2, figsize=(10, 3.8), layout="constrained")  # room for a label above
    left.plot(x, result.sdn_clean_accuracy, marker="o", label="SDN exit, clean")
    left.plot(x, result.sdn_triggered_accuracy, marker="s", label="SDN exit, triggered")
    left.axhline(
        result.cnn_triggered_accuracy,
        color="black",
        linestyle=":",
        linewidth=1.8,
        label=f"backdoored CNN, triggered ({result.cnn_triggered_accuracy:.1f}%)",
    )
    left.axhline(
        result.early_exit_triggered.accuracy,
        color="tab:red",
        linestyle="--",
        label=f"early exit, triggered ({result.early_exit_triggered.accuracy:.1f}%)",
    )
    left.set_ylabel("accuracy vs true labels (%)")
    left.set_title("Accuracy per exit")
    right.bar(x, result.sdn_attack_success, color="tab:purple")
    right.axhline(
        result.cnn_attack_success,
        color="black",
        linestyle=":",
        linewidth=1.8,
        label=f"backdoored CNN ({result.cnn_attack_success:.1f}%)",
    )
    right.set_ylabel(f"predicted as target class {result.target} (%)")
    right.set_title("Attack success per exit (triggered inputs)")
    for axis in (left, right):
        axis.set_xticks(x, names)
        axis.set_ylim(-4, 104)  # a line at 0% or 100% stays visible above the axis
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7, loc="best")
    return fig
