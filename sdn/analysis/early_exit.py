"""Offline early-exit simulation over cached per-exit softmax outputs (paper §5.1), and threshold choice.

Outputs are ordered E-1 internal classifiers (ICs) then the final classifier. A policy decides, IC by IC, whether a
sample stops there:

- ``confidence``: the IC's top probability is at least ``q`` (q in [0, 1]; the paper's rule);
- ``entropy``: the IC's normalised entropy ``H / log K`` is at most ``t`` (t in [0, 1]; 0 when K = 1);
- ``patience``: the IC's prediction equals that of the ``k - 1`` ICs before it (integer k >= 1; k = 1 exits at IC1).

A sample no IC stops is answered by the fallback: ``final`` (the final classifier) or ``most-confident`` (whichever
of all E outputs has the highest top probability, the original code's rule; ties go to the earliest). Both are
charged the final exit's cost. The cost of exiting at e is ``exit_cost_fraction[e]``, the cumulative cost (backbone
plus every IC evaluated so far) as a fraction of the CNN's.

Thresholds are chosen on the held-out split only (:func:`choose_by_tolerance`, :func:`choose_by_budget`) and then
reported on the test split (:func:`analyze`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any, Literal

import numpy as np
import pandas as pd

from sdn.analysis.arrays import softmax, validate_probs
from sdn.outputs import exit_costs, load_split, validate_costs

Policy = Literal["confidence", "entropy", "patience"]
Fallback = Literal["final", "most-confident"]
POLICIES: tuple[str, ...] = ("confidence", "entropy", "patience")
# the policies that decide at each exit from its own probabilities alone (patience counts across exits)
PER_EXIT_POLICIES: tuple[str, ...] = ("confidence", "entropy")
FALLBACKS: tuple[str, ...] = ("final", "most-confident")
PAPER_CONFIDENCE_GRID: tuple[float, ...] = (0.1, 0.15, 0.25, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999)
DEFAULT_BUDGETS: tuple[float, ...] = (0.25, 0.5, 0.75)
DEFAULT_TOLERANCE = 0.5


class NoThresholdError(ValueError):
    """No threshold of the grid satisfies the selection rule (a property of the data, not a usage error)."""


@dataclass(frozen=True)
class ExitResult:
    """Outcome of one policy at one threshold.

    ``exit_index[n]`` is where sample n stopped computing (E-1 when no IC fired); ``output_index[n]`` is the output
    whose prediction was returned (equal to ``exit_index`` except under the ``most-confident`` fallback).
    ``accuracy`` is in percent, ``avg_cost_fraction`` relative to the CNN, ``exit_histogram[e]`` counts samples.
    """

    predictions: np.ndarray
    exit_index: np.ndarray
    output_index: np.ndarray
    accuracy: float
    avg_cost_fraction: float
    exit_histogram: np.ndarray


def check_policy(policy: str) -> None:
    if policy not in POLICIES:
        raise ValueError(f"unknown early-exit policy {policy!r}; allowed: {', '.join(POLICIES)}")


def check_fallback(fallback: str) -> None:
    if fallback not in FALLBACKS:
        raise ValueError(f"unknown fallback {fallback!r}; allowed: {', '.join(FALLBACKS)}")


def check_threshold(policy: str, threshold: Any) -> float | int:
    """Return ``threshold`` as the policy's type, or raise ValueError naming policy, value and allowed range."""
    check_policy(policy)
    if policy == "patience":
        valid = isinstance(threshold, Integral) and not isinstance(threshold, bool)
        if not valid and isinstance(threshold, Real) and float(threshold).is_integer():
            threshold, valid = int(threshold), True
        if not valid or int(threshold) < 1:
            raise ValueError(f"threshold for policy 'patience' must be an integer >= 1, got {threshold!r}")
        return int(threshold)
    if isinstance(threshold, bool) or not isinstance(threshold, Real) or not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold for policy {policy!r} must lie in [0, 1], got {threshold!r}")
    return float(threshold)


def normalised_entropy(probs: np.ndarray) -> np.ndarray:
    """Entropy over the last axis divided by log K (so in [0, 1]); 0 everywhere when K = 1."""
    probs = np.asarray(probs, dtype=np.float64)
    num_classes = probs.shape[-1]
    if num_classes == 1:
        return np.zeros(probs.shape[:-1])
    safe = np.where(probs > 0, probs, 1.0)
    entropy = -(probs * np.log(safe)).sum(axis=-1)
    return np.clip(entropy / math.log(num_classes), 0.0, 1.0)


def exit_scores(probs: np.ndarray, policy: str) -> np.ndarray:
    """[E-1, N] what ``policy`` compares with its threshold at each IC: the top softmax (confidence), the normalised
    entropy (entropy) or how many ICs in a row ending here agree (patience)."""
    check_policy(policy)
    ic_probs = np.asarray(probs)[:-1]
    if policy == "confidence":
        return ic_probs.max(axis=-1)
    if policy == "entropy":
        return normalised_entropy(ic_probs)
    predictions = ic_probs.argmax(axis=-1)
    run = np.ones(predictions.shape, dtype=np.int64)
    for e in range(1, predictions.shape[0]):  # loop over exits only; vectorised over samples
        run[e] = np.where(predictions[e] == predictions[e - 1], run[e - 1] + 1, 1)
    return run


def _fires(scores: np.ndarray, policy: str, threshold: float | int) -> np.ndarray:
    return scores <= threshold if policy == "entropy" else scores >= threshold


def fire_mask(probs: np.ndarray, policy: str, threshold: float | int) -> np.ndarray:
    """Boolean [E-1, N]: whether each IC would stop each sample (ignoring earlier ICs)."""
    threshold = check_threshold(policy, threshold)
    return _fires(exit_scores(probs, policy), policy, threshold)


@dataclass(frozen=True)
class _Replay:
    """What every threshold of one policy shares (computed once per sweep): each IC's score, each exit's
    prediction and, per sample, the output used when no IC fires."""

    scores: np.ndarray  # [E-1, N]
    predictions: np.ndarray  # [E, N]
    fallback_output: np.ndarray  # [N]

    @classmethod
    def of(cls, probs: np.ndarray, policy: str, fallback: str) -> _Replay:
        num_exits, num_samples, _ = probs.shape
        if fallback == "final":
            fallback_output = np.full(num_samples, num_exits - 1, dtype=np.int64)
        else:
            fallback_output = probs.max(axis=-1).argmax(axis=0).astype(np.int64)
        return cls(exit_scores(probs, policy), probs.argmax(axis=-1).astype(np.int64), fallback_output)


def simulate(
    probs: np.ndarray,
    labels: np.ndarray,
    exit_cost_fraction: np.ndarray,
    policy: str,
    threshold: float | int,
    fallback: str = "final",
) -> ExitResult:
    """Replay early exiting for one threshold over softmax outputs ``probs`` [E, N, K] with ``labels`` [N]."""
    validate_probs(probs, labels)
    probs = np.asarray(probs)
    labels = np.asarray(labels)
    cost = np.asarray(exit_cost_fraction, dtype=np.float64)
    validate_costs(cost, probs.shape[0])
    check_fallback(fallback)
    return _simulate(probs, labels, cost, policy, threshold, fallback)


def _simulate(
    probs: np.ndarray,
    labels: np.ndarray,
    cost: np.ndarray,
    policy: str,
    threshold: float | int,
    fallback: str,
    replay: _Replay | None = None,
) -> ExitResult:
    num_exits, num_samples, _ = probs.shape
    final = num_exits - 1
    if replay is None:
        replay = _Replay.of(probs, policy, fallback)
    fired = _fires(replay.scores, policy, check_threshold(policy, threshold))
    any_fired = fired.any(axis=0) if final > 0 else np.zeros(num_samples, dtype=bool)
    first = fired.argmax(axis=0) if final > 0 else np.zeros(num_samples, dtype=np.int64)
    exit_index = np.where(any_fired, first, final).astype(np.int64)
    output_index = np.where(any_fired, exit_index, replay.fallback_output)
    predictions = replay.predictions[output_index, np.arange(num_samples)]
    return ExitResult(
        predictions=predictions,
        exit_index=exit_index,
        output_index=output_index,
        accuracy=float(100.0 * (predictions == labels).mean()),
        avg_cost_fraction=float(cost[exit_index].mean()),
        exit_histogram=np.bincount(exit_index, minlength=num_exits).astype(np.int64),
    )


def default_thresholds(policy: str, num_exits: int) -> list[float] | list[int]:
    """The default sweep grid: the paper's q grid plus a fine grid (confidence), a fine grid (entropy), 1..E-1."""
    check_policy(policy)
    if policy == "patience":
        return list(range(1, max(num_exits - 1, 1) + 1))
    fine = np.round(np.linspace(0.0, 1.0, 101), 4)
    if policy == "confidence":
        extra = np.array([*PAPER_CONFIDENCE_GRID, 0.995, 0.9995, 0.9999])
    else:
        extra = np.round(np.geomspace(1e-4, 1e-2, 9), 6)
    return sorted({float(v) for v in np.concatenate([fine, extra])})


def histogram_columns(num_exits: int) -> list[str]:
    return [f"exit_{e}" for e in range(num_exits)]


def sweep(
    probs: np.ndarray,
    labels: np.ndarray,
    exit_cost_fraction: np.ndarray,
    policy: str,
    thresholds: Sequence[float | int] | None = None,
    fallback: str = "final",
) -> pd.DataFrame:
    """One row per threshold: ``threshold``, ``accuracy`` (%), ``cost`` (fraction), ``exit_0..exit_{E-1}`` counts."""
    validate_probs(probs, labels)
    probs = np.asarray(probs)
    cost = np.asarray(exit_cost_fraction, dtype=np.float64)
    validate_costs(cost, probs.shape[0])
    check_fallback(fallback)
    if thresholds is None:
        thresholds = default_thresholds(policy, probs.shape[0])
    if len(thresholds) == 0:
        raise ValueError(f"no thresholds given for policy {policy!r}")
    rows = []
    replay = _Replay.of(probs, policy, fallback)
    labels = np.asarray(labels)
    for threshold in thresholds:
        result = _simulate(probs, labels, cost, policy, threshold, fallback, replay)
        rows.append(
            [check_threshold(policy, threshold), result.accuracy, result.avg_cost_fraction, *result.exit_histogram]
        )
    return pd.DataFrame(rows, columns=["threshold", "accuracy", "cost", *histogram_columns(probs.shape[0])])


def choose_by_tolerance(
    table: pd.DataFrame, final_accuracy: float, tolerance: float = DEFAULT_TOLERANCE
) -> pd.Series:
    """The cheapest row of a (held-out) sweep whose accuracy >= ``final_accuracy - tolerance`` (points).

    Equal costs go to the more accurate row. Raises NoThresholdError when no row qualifies.
    """
    if not tolerance >= 0:
        raise ValueError(f"tolerance must be >= 0 accuracy points, got {tolerance!r}")
    floor = final_accuracy - tolerance
    ok = table[table["accuracy"] >= floor - 1e-9]
    if ok.empty:
        raise NoThresholdError(
            f"no threshold reaches accuracy >= {floor:.3f}% (final exit {final_accuracy:.3f}% - {tolerance}); "
            f"best on the grid is {table['accuracy'].max():.3f}%"
        )
    return ok.sort_values(["cost", "accuracy"], ascending=[True, False], kind="stable").iloc[0]


@dataclass(frozen=True)
class ToleranceChoice:
    """A threshold chosen by the tolerance rule, or the best the grid offers when none meets it.

    ``status`` is ``"ok"`` when ``row`` meets the tolerance and ``"none"`` when it does not; then ``row`` is the most
    accurate row of the grid (cheapest among equals) and ``reason`` says why no row qualified.
    """

    status: Literal["ok", "none"]
    row: pd.Series
    reason: str | None = None

    @property
    def threshold(self) -> float:
        return float(self.row["threshold"])

    def record(self) -> dict[str, Any]:
        """The JSON fields every report of a tolerance choice carries."""
        return {"threshold_status": self.status, "threshold_reason": self.reason}


def choose_by_tolerance_or_best(
    table: pd.DataFrame, final_accuracy: float, tolerance: float = DEFAULT_TOLERANCE
) -> ToleranceChoice:
    """:func:`choose_by_tolerance`, falling back to the most accurate row (cheapest among equals) with status
    ``"none"`` when no row reaches the tolerance: for commands that must report, not fail, on such a model."""
    try:
        return ToleranceChoice("ok", choose_by_tolerance(table, final_accuracy, tolerance))
    except NoThresholdError as err:
        best = table.sort_values(["accuracy", "cost"], ascending=[False, True], kind="stable").iloc[0]
        return ToleranceChoice("none", best, f"{err}; using the most accurate threshold {best['threshold']:g}")


def choose_by_budget(table: pd.DataFrame, budget: float, exit_cost_fraction: np.ndarray) -> pd.Series:
    """The most accurate row of a (held-out) sweep whose average cost <= ``budget`` (fraction of the CNN's cost).

    Equal accuracies go to the cheaper row. A budget below the first exit's cost raises ValueError naming both;
    NoThresholdError when no row of the grid fits the budget.
    """
    first_cost = float(np.asarray(exit_cost_fraction)[0])
    if not budget >= first_cost:
        raise ValueError(
            f"budget {budget} of the CNN's cost is below the first exit's cost {first_cost:.4f}: "
            "no sample can exit that cheaply"
        )
    ok = table[table["cost"] <= budget + 1e-12]
    if ok.empty:
        raise NoThresholdError(
            f"no threshold keeps the average cost <= {budget}; cheapest on the grid costs {table['cost'].min():.4f}"
        )
    return ok.sort_values(["accuracy", "cost"], ascending=[False, True], kind="stable").iloc[0]


def budget_rule(budget: float) -> str:
    return f"budget_{budget:g}"


def analyze(
    outputs: Mapping[str, np.ndarray],
    *,
    policies: Sequence[str] = POLICIES,
    fallback: str = "final",
    tolerance: float = DEFAULT_TOLERANCE,
    budgets: Sequence[float] = DEFAULT_BUDGETS,
    split_choose: str = "holdout",
    split_report: str = "test",
    thresholds: Mapping[str, Sequence[float | int]] | None = None,
) -> dict[str, Any]:
    """Sweep every policy on both splits, choose thresholds on ``split_choose``, report them on ``split_report``.

    Returns ``{"sweeps": {policy: DataFrame}, "chosen": DataFrame, "summary": dict}``; the sweep columns are
    ``threshold`` then ``{split}_accuracy``, ``{split}_cost``, ``{split}_exit_{e}`` for both splits; the summary's
    keys are documented in docs/internals.md ("Analysis outputs").
    """
    for policy in policies:
        check_policy(policy)
    check_fallback(fallback)
    splits = {"choose": split_choose, "report": split_report}
    probs, labels = {}, {}
    for role, split in splits.items():
        logits, labels[role] = load_split(outputs, split)
        probs[role] = softmax(logits)
    if probs["choose"].shape[0] != probs["report"].shape[0] or probs["choose"].shape[2] != probs["report"].shape[2]:
        raise ValueError(
            f"splits {split_choose!r} and {split_report!r} disagree in exits/classes: "
            f"{probs['choose'].shape} vs {probs['report'].shape}"
        )
    num_exits = probs["report"].shape[0]
    cost = exit_costs(outputs, num_exits)
    final_acc = {role: float(100.0 * (probs[role][-1].argmax(axis=-1) == labels[role]).mean()) for role in splits}
    sweeps: dict[str, pd.DataFrame] = {}
    chosen_rows: list[dict[str, Any]] = []
    summary_policies: dict[str, Any] = {}
    for policy in policies:
        grid = (thresholds or {}).get(policy) or default_thresholds(policy, num_exits)
        tables = {role: sweep(probs[role], labels[role], cost, policy, grid, fallback) for role in splits}
        sweeps[policy] = _merge_sweeps(tables, splits)
        rules: dict[str, Any] = {}
        choices: list[tuple[str, Any]] = [("tolerance", None)] + [(budget_rule(b), b) for b in budgets]
        for rule, budget in choices:
            try:
                if budget is None:
                    row = choose_by_tolerance(tables["choose"], final_acc["choose"], tolerance)
                else:
                    row = choose_by_budget(tables["choose"], budget, cost)
            except NoThresholdError as err:
                rules[rule] = {"status": "none", "reason": str(err), "budget": budget}
                chosen_rows.append({"policy": policy, "rule": rule, "threshold": None})
                continue
            threshold = check_threshold(policy, row["threshold"])
            report = _simulate(probs["report"], labels["report"], cost, policy, threshold, fallback)
            entry = {
                "status": "ok",
                "budget": budget,
                "threshold": threshold,
                "holdout_accuracy": float(row["accuracy"]),
                "holdout_cost_fraction": float(row["cost"]),
                "test_accuracy": report.accuracy,
                "test_cost_fraction": report.avg_cost_fraction,
                "test_reduction_percent": 100.0 * (1.0 - report.avg_cost_fraction),
                "test_exit_histogram": report.exit_histogram.tolist(),
            }
            rules[rule] = entry
            chosen_rows.append({"policy": policy, "rule": rule, **{k: v for k, v in entry.items() if k != "status"}})
        summary_policies[policy] = rules
    chosen = pd.DataFrame(chosen_rows).drop(columns=["test_exit_histogram"], errors="ignore")
    chosen["final_test_accuracy"] = final_acc["report"]
    summary = {
        "split_choose": split_choose,
        "split_report": split_report,
        "fallback": fallback,
        "tolerance": tolerance,
        "budgets": [float(b) for b in budgets],
        "num_exits": num_exits,
        "exit_cost_fraction": cost.tolist(),
        "final_holdout_accuracy": final_acc["choose"],
        "final_test_accuracy": final_acc["report"],
        "final_test_cost_fraction": float(cost[-1]),
        "policies": summary_policies,
    }
    return {"sweeps": sweeps, "chosen": chosen, "summary": summary}


def _merge_sweeps(tables: Mapping[str, pd.DataFrame], splits: Mapping[str, str]) -> pd.DataFrame:
    merged = pd.DataFrame({"threshold": tables["choose"]["threshold"]})
    for role in ("choose", "report"):
        renamed = tables[role].drop(columns=["threshold"]).add_prefix(f"{splits[role]}_")
        merged = pd.concat([merged, renamed.reset_index(drop=True)], axis=1)
    return merged


def chosen_markdown(chosen: pd.DataFrame, split_report: str = "test") -> str:
    """The chosen thresholds as a Markdown table like the paper's early-exit table."""
    header = (
        f"| policy | rule | threshold | {split_report} accuracy (%) | cost fraction | reduction (%) "
        f"| final-exit accuracy (%) |\n|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for row in chosen.to_dict("records"):
        if row.get("threshold") is None or pd.isna(row.get("threshold")):
            lines.append(f"| {row['policy']} | {row['rule']} | none | - | - | - | {row['final_test_accuracy']:.2f} |")
            continue
        threshold = row["threshold"]
        shown = f"{int(threshold)}" if row["policy"] == "patience" else f"{threshold:g}"
        lines.append(
            f"| {row['policy']} | {row['rule']} | {shown} | {row['test_accuracy']:.2f} | "
            f"{row['test_cost_fraction']:.3f} | {row['test_reduction_percent']:.1f} | "
            f"{row['final_test_accuracy']:.2f} |"
        )
    return header + "\n".join(lines) + "\n"


def plot_accuracy_vs_cost(
    result: Mapping[str, Any],
    path_without_suffix: str,
    *,
    label: str | None = None,
    cnn_accuracy: float | None = None,
) -> None:
    """Accuracy vs average cost on the report split, one curve per policy; chosen thresholds, the final exit and
    (given its accuracy on the same split) the CNN at cost 1 marked; ``label`` names the model and data set."""
    from sdn.report.plots import new_figure, savefig

    summary = result["summary"]
    split = summary["split_report"]
    fig, ax = new_figure(figsize=(6, 4.5))
    markers = {"tolerance": "*"} | {budget_rule(b): "o" for b in summary["budgets"]}
    for policy, table in result["sweeps"].items():
        ordered = table.sort_values(f"{split}_cost")
        (line,) = ax.plot(
            ordered[f"{split}_cost"],
            ordered[f"{split}_accuracy"],
            label=policy,
            linewidth=1.2,
            marker=".",
            markersize=3,
        )
        for rule, entry in summary["policies"][policy].items():
            if entry["status"] == "ok":
                ax.scatter(
                    entry["test_cost_fraction"],
                    entry["test_accuracy"],
                    marker=markers.get(rule, "o"),
                    s=70 if rule == "tolerance" else 30,
                    color=line.get_color(),
                    edgecolor="black",
                    zorder=3,
                )
    ax.scatter(
        summary["final_test_cost_fraction"],
        summary["final_test_accuracy"],
        marker="s",
        color="black",
        zorder=4,
        label="final exit",
    )
    if cnn_accuracy is not None:
        ax.scatter(1.0, cnn_accuracy, marker="D", color="tab:gray", edgecolor="black", zorder=4, label="CNN")
    ax.set_xlabel("average cost (fraction of the CNN)")
    ax.set_ylabel(f"{split} accuracy (%)")
    ax.set_title("Early exit: accuracy vs cost (* tolerance rule, o budgets)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    savefig(fig, path_without_suffix, label=label)


def plot_exit_histogram(result: Mapping[str, Any], path_without_suffix: str, *, label: str | None = None) -> None:
    """Fraction of report-split samples exiting at each output, per policy, at the tolerance-rule threshold."""
    from sdn.report.plots import new_figure, savefig

    summary = result["summary"]
    num_exits = summary["num_exits"]
    fig, ax = new_figure(figsize=(6, 4))
    policies = list(summary["policies"])
    width = 0.8 / max(len(policies), 1)
    x = np.arange(num_exits)
    for i, policy in enumerate(policies):
        entry = summary["policies"][policy]["tolerance"]
        if entry["status"] != "ok":
            continue
        counts = np.asarray(entry["test_exit_histogram"], dtype=np.float64)
        ax.bar(x + (i - (len(policies) - 1) / 2) * width, counts / counts.sum(), width, label=f"{policy}")
    ax.set_xticks(x, [f"IC{e + 1}" for e in range(num_exits - 1)] + ["final"])
    ax.set_ylabel(f"fraction of {summary['split_report']} samples")
    ax.set_title("Where samples exit (tolerance-rule thresholds)", fontsize=10)
    ax.legend()
    savefig(fig, path_without_suffix, label=label)
