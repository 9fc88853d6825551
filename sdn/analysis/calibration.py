"""Calibration (our addition): expected calibration error and reliability diagrams, per exit and for early exits.

Confidence is the top softmax probability. Bins are equal-width on [0, 1]: bin b holds confidences in
(b/B, (b+1)/B], except that a confidence of exactly 0 falls in bin 0. ECE = sum_b (n_b / N) |acc_b - conf_b|,
a fraction in [0, 1] (not percent).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from sdn.analysis import early_exit as ee
from sdn.analysis.arrays import softmax
from sdn.outputs import exit_costs, exit_names, load_split

DEFAULT_BINS = 15


def _check_probs_2d(probs: np.ndarray, labels: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    if probs.ndim != 2 or probs.shape[0] == 0 or probs.shape[1] == 0:
        raise ValueError(f"probs must have shape [N, K] with N, K >= 1, got shape {probs.shape}")
    if labels.shape != (probs.shape[0],):
        raise ValueError(
            f"labels must have shape [{probs.shape[0]}] to match probs {probs.shape}, got {labels.shape}"
        )
    if not np.isfinite(probs).all():
        raise ValueError(f"probs contain {int((~np.isfinite(probs)).sum())} NaN or inf values")
    if isinstance(n_bins, bool) or not isinstance(n_bins, int | np.integer) or n_bins < 1:
        raise ValueError(f"n_bins must be an integer >= 1, got {n_bins!r}")
    return probs, labels


def reliability_table(probs: np.ndarray, labels: np.ndarray, n_bins: int = DEFAULT_BINS) -> pd.DataFrame:
    """One row per bin: ``lower``, ``upper``, ``count``, ``accuracy`` and ``confidence`` (NaN for empty bins)."""
    probs, labels = _check_probs_2d(probs, labels, n_bins)
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    bins = np.clip(np.ceil(confidence * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.bincount(bins, weights=correct, minlength=n_bins) / count
        mean_conf = np.bincount(bins, weights=confidence, minlength=n_bins) / count
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return pd.DataFrame(
        {"lower": edges[:-1], "upper": edges[1:], "count": count, "accuracy": accuracy, "confidence": mean_conf}
    )


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = DEFAULT_BINS) -> float:
    """ECE of softmax outputs ``probs`` [N, K] against ``labels`` [N] with ``n_bins`` equal-width bins."""
    table = reliability_table(probs, labels, n_bins)
    filled = table[table["count"] > 0]
    weights = filled["count"] / table["count"].sum()
    return float((weights * (filled["accuracy"] - filled["confidence"]).abs()).sum())


def early_exit_probs(probs: np.ndarray, result: ee.ExitResult) -> np.ndarray:
    """The softmax [N, K] of the output each sample's early-exit prediction came from."""
    return np.asarray(probs)[result.output_index, np.arange(result.output_index.shape[0])]


def analyze(
    outputs: Mapping[str, np.ndarray],
    *,
    split: str = "test",
    n_bins: int = DEFAULT_BINS,
    threshold: float | None = None,
    tolerance: float = ee.DEFAULT_TOLERANCE,
    fallback: str = "final",
    split_choose: str = "holdout",
) -> dict[str, Any]:
    """ECE per exit on ``split`` and for confidence-policy early exits.

    The early-exit threshold is ``threshold`` when given, otherwise the tolerance rule's choice on ``split_choose``
    (as in ``sdn early-exit``). Returns ``{"table": DataFrame, "reliability": {name: DataFrame}, "summary": dict}``.
    """
    logits, labels = load_split(outputs, split)
    probs = softmax(logits)
    num_exits = probs.shape[0]
    cost = exit_costs(outputs, num_exits)
    if threshold is None:
        choose_logits, choose_labels = load_split(outputs, split_choose)
        choose_probs = softmax(choose_logits)
        final_acc = float(100.0 * (choose_probs[-1].argmax(axis=-1) == choose_labels).mean())
        table = ee.sweep(choose_probs, choose_labels, cost, "confidence", None, fallback)
        choice = ee.choose_by_tolerance_or_best(table, final_acc, tolerance)
        threshold, status, reason = choice.threshold, choice.status, choice.reason
        rule = f"tolerance {tolerance} on {split_choose}"
    else:
        threshold = float(ee.check_threshold("confidence", threshold))
        rule, status, reason = "given", "ok", None
    result = ee.simulate(probs, labels, cost, "confidence", threshold, fallback)
    names = exit_names(num_exits)
    sources = {name: probs[e] for e, name in enumerate(names)}
    sources["early_exit"] = early_exit_probs(probs, result)
    rows, reliability = [], {}
    for e, (name, p) in enumerate(sources.items()):
        reliability[name] = reliability_table(p, labels, n_bins)
        rows.append(
            {
                "output": name,
                "exit": e if e < num_exits else None,
                "accuracy": float(100.0 * (p.argmax(axis=1) == labels).mean()),
                "mean_confidence": float(p.max(axis=1).mean()),
                "ece": expected_calibration_error(p, labels, n_bins),
            }
        )
    table = pd.DataFrame(rows).astype({"exit": "Int64"})
    summary = {
        "split": split,
        "n_bins": n_bins,
        "per_exit_ece": table["ece"].iloc[:num_exits].tolist(),
        "per_exit_accuracy": table["accuracy"].iloc[:num_exits].tolist(),
        "per_exit_mean_confidence": table["mean_confidence"].iloc[:num_exits].tolist(),
        "early_exit": {
            "policy": "confidence",
            "threshold": threshold,
            "rule": rule,
            "threshold_status": status,
            "threshold_reason": reason,
            "fallback": fallback,
            "ece": rows[-1]["ece"],
            "accuracy": result.accuracy,
            "mean_confidence": rows[-1]["mean_confidence"],
            "cost_fraction": result.avg_cost_fraction,
        },
    }
    return {"table": table, "reliability": reliability, "summary": summary}


def plot_reliability(result: Mapping[str, Any], path_without_suffix: str, *, label: str | None = None) -> None:
    """Reliability diagrams: one panel per output (ICs, final, early exit), accuracy per confidence bin."""
    from sdn.report.plots import new_figure, savefig

    reliability: Mapping[str, pd.DataFrame] = result["reliability"]
    eces = dict(zip(result["table"]["output"], result["table"]["ece"], strict=True))
    cols = min(4, len(reliability))
    rows = -(-len(reliability) // cols)
    fig, axes = new_figure(rows, cols, figsize=(3 * cols, 3 * rows), squeeze=False, sharex=True, sharey=True)
    for ax, (name, table) in zip(axes.flat, reliability.items(), strict=False):
        width = table["upper"] - table["lower"]
        ax.bar(table["lower"], table["accuracy"].fillna(0.0), width=width, align="edge", edgecolor="black", alpha=0.7)
        ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
        ax.set_title(f"{name}  ECE {100 * eces[name]:.1f}%", fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
    for ax in list(axes.flat)[len(reliability) :]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("confidence")
    for ax in axes[:, 0]:
        ax.set_ylabel("accuracy")
    savefig(fig, path_without_suffix, label=label)
