"""Overthinking (paper §4): the wasteful and the destructive effect, from cached per-exit logits.

Exit e = 0..E-1, the final head last. ``correct[e, n]`` says whether exit e predicts sample n's label.

* Wasteful: a sample's *earliest correct exit* is the smallest e with ``correct[e, n]``; computation after it is
  wasted. The oracle sends every sample out at its earliest correct exit; a sample no exit gets right pays the
  final exit's cost.
* Destructive: some internal classifier (IC) gets the sample right but the final head gets it wrong. Its share is
  taken over all final-head errors (the union over ICs, which the original code never computed); when the final
  head makes no error the share is undefined and reported as ``None``.

Confidence means are plain means; an empty set gives NaN (``None`` in JSON), not the original's ``/(0.1 + n)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sdn.analysis.arrays import softmax
from sdn.outputs import exit_names, validate_logits

# The original script's cost of reaching IC i (the placement targets, not measured costs); the final head costs 1.0.
NOMINAL_IC_COSTS: tuple[float, ...] = (0.15, 0.3, 0.45, 0.6, 0.75, 0.9)
NEVER = -1  # earliest_correct_exit() value for samples no exit gets right


def correctness(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Boolean [E, N]: whether each exit's arg-max prediction equals the label."""
    validate_logits(logits, labels)
    return np.asarray(logits).argmax(axis=-1) == np.asarray(labels)[None, :]


def earliest_correct_exit(correct: np.ndarray) -> np.ndarray:
    """Int [N]: the first exit that gets each sample right, or ``NEVER`` (-1) when none does."""
    correct = np.asarray(correct, dtype=bool)
    if correct.ndim != 2:
        raise ValueError(f"correct must have shape [E, N], got shape {correct.shape}")
    first = correct.argmax(axis=0)
    return np.where(correct.any(axis=0), first, NEVER)


def oracle_cost_fraction(earliest: np.ndarray, exit_costs: np.ndarray) -> float:
    """Mean cost when each sample exits at its earliest correct exit; never-correct samples pay the last cost."""
    earliest = np.asarray(earliest)
    exit_costs = np.asarray(exit_costs, dtype=np.float64)
    if earliest.size == 0:
        raise ValueError("oracle_cost_fraction needs at least one sample")
    if earliest.max() >= exit_costs.shape[0]:
        raise ValueError(f"earliest exit {earliest.max()} is beyond the {exit_costs.shape[0]} exit costs given")
    paid = np.where(earliest == NEVER, exit_costs[-1], exit_costs[np.maximum(earliest, 0)])
    return float(paid.mean())


def nominal_exit_costs(num_exits: int) -> np.ndarray | None:
    """The original's nominal costs (.15, ..., .9, then 1.0 for the final head); None unless there are 6 ICs."""
    if num_exits - 1 != len(NOMINAL_IC_COSTS):
        return None
    return np.array([*NOMINAL_IC_COSTS, 1.0])


@dataclass(frozen=True)
class Wasteful:
    """Per-exit shares of all N samples (arrays of length E) and the oracle costs (fractions of the CNN's cost)."""

    correct_share: np.ndarray  # correct at exit e
    first_correct_share: np.ndarray  # earliest correct exit is e (the wasteful share per exit)
    cumulative_correct_share: np.ndarray  # some exit <= e is correct
    never_correct_share: float
    early_correct_share: float  # some IC before the final is correct
    oracle_cost_fraction: float  # measured cumulative exit costs
    oracle_cost_fraction_nominal: float | None  # the original's nominal costs; None unless 6 ICs
    num_samples: int


def wasteful(logits: np.ndarray, labels: np.ndarray, exit_fraction: np.ndarray) -> Wasteful:
    """Wasteful-effect statistics; ``exit_fraction`` is the measured cumulative cost of reaching each exit."""
    correct = correctness(logits, labels)
    num_exits, num_samples = correct.shape
    exit_fraction = np.asarray(exit_fraction, dtype=np.float64)
    if exit_fraction.shape != (num_exits,):
        raise ValueError(
            f"exit_fraction has shape {exit_fraction.shape}, expected ({num_exits},) for {num_exits} exits"
        )
    earliest = earliest_correct_exit(correct)
    first_counts = np.bincount(earliest[earliest != NEVER], minlength=num_exits)
    first_share = first_counts / num_samples
    nominal = nominal_exit_costs(num_exits)
    return Wasteful(
        correct_share=correct.mean(axis=1),
        first_correct_share=first_share,
        cumulative_correct_share=np.cumsum(first_share),
        never_correct_share=float((earliest == NEVER).mean()),
        early_correct_share=float(first_share[:-1].sum()),
        oracle_cost_fraction=oracle_cost_fraction(earliest, exit_fraction),
        oracle_cost_fraction_nominal=None if nominal is None else oracle_cost_fraction(earliest, nominal),
        num_samples=num_samples,
    )


@dataclass(frozen=True)
class Destructive:
    """Destructive-effect statistics; per-IC arrays have length E-1 (the final head excluded)."""

    final_errors: int
    destructive_count: int  # samples some IC gets right and the final head gets wrong (union over ICs)
    destructive_share_of_errors: float | None  # destructive_count / final_errors; None when final_errors == 0
    count_by_ic: np.ndarray  # correct_i & wrong_final
    correct_count_by_ic: np.ndarray  # correct_i
    mean_confidence_destructive_by_ic: np.ndarray  # mean max-softmax of IC i on its destructive cases (NaN if none)
    mean_confidence_correct_by_ic: np.ndarray  # mean max-softmax of IC i on all samples it gets right (NaN if none)


def destructive(logits: np.ndarray, labels: np.ndarray) -> Destructive:
    """Destructive-effect statistics over the ICs (every exit but the last) against the final head."""
    correct = correctness(logits, labels)
    confidence = softmax(logits).max(axis=-1)  # [E, N]
    wrong_final = ~correct[-1]
    ic_correct = correct[:-1]
    destructive_mask = ic_correct & wrong_final[None, :]
    final_errors = int(wrong_final.sum())
    count = int(destructive_mask.any(axis=0).sum())
    return Destructive(
        final_errors=final_errors,
        destructive_count=count,
        destructive_share_of_errors=None if final_errors == 0 else count / final_errors,
        count_by_ic=destructive_mask.sum(axis=1),
        correct_count_by_ic=ic_correct.sum(axis=1),
        mean_confidence_destructive_by_ic=_masked_means(confidence[:-1], destructive_mask),
        mean_confidence_correct_by_ic=_masked_means(confidence[:-1], ic_correct),
    )


def _masked_means(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Row-wise mean of ``values`` where ``mask`` holds; NaN for a row with no selected entry."""
    counts = mask.sum(axis=1)
    sums = np.where(mask, values, 0.0).sum(axis=1)
    out = np.full(values.shape[0], np.nan)
    np.divide(sums, counts, out=out, where=counts > 0)
    return out


def finite_or_none(value: float | None) -> float | None:
    """``value`` as a float, or None when it is None/NaN/inf (JSON has no NaN)."""
    if value is None:
        return None
    value = float(value)
    return value if np.isfinite(value) else None


def summary(waste: Wasteful, destroy: Destructive, exit_fraction: np.ndarray, *, split: str) -> dict[str, object]:
    """The ``summary.json`` document of ``sdn overthinking`` (keys listed in docs/internals.md)."""
    return {
        "split": split,
        "num_samples": waste.num_samples,
        "num_exits": int(waste.correct_share.shape[0]),
        "exit_names": exit_names(int(waste.correct_share.shape[0])),
        "exit_fraction": [float(c) for c in exit_fraction],
        "correct_share_by_exit": [float(s) for s in waste.correct_share],
        "wasteful_share_by_exit": [float(s) for s in waste.first_correct_share],
        "cumulative_correct_share_by_exit": [float(s) for s in waste.cumulative_correct_share],
        "never_correct_share": waste.never_correct_share,
        "early_correct_share": waste.early_correct_share,
        "oracle_cost_fraction": waste.oracle_cost_fraction,
        "oracle_cost_fraction_nominal": waste.oracle_cost_fraction_nominal,
        "final_accuracy": float(waste.correct_share[-1]),
        "final_errors": destroy.final_errors,
        "destructive_count": destroy.destructive_count,
        "destructive_share_of_errors": destroy.destructive_share_of_errors,
        "destructive_count_by_ic": [int(c) for c in destroy.count_by_ic],
        "mean_confidence_destructive_by_ic": [finite_or_none(v) for v in destroy.mean_confidence_destructive_by_ic],
        "mean_confidence_correct_by_ic": [finite_or_none(v) for v in destroy.mean_confidence_correct_by_ic],
    }
