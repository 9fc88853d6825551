"""The confusion metric (paper §5.2): how much the internal classifiers disagree with the final head.

confusion(x) = sum over ICs i of ||p_i(x) - p_F(x)||_1, the final head excluded (the original also summed the
final's zero distance to itself, adding only pairwise_distance's eps). Scores are z-normalised with the mean and
standard deviation from a split other than the one evaluated.

The AUROC of each score for detecting the final head's misclassifications is OUR ADDITION (the original code only
draws histograms and counts); it is labelled so wherever it is written.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sdn.analysis.arrays import softmax
from sdn.outputs import validate_logits


def confusion_scores(logits: np.ndarray) -> np.ndarray:
    """Raw confusion [N] from per-exit logits [E, N, K]; needs at least one IC (E >= 2)."""
    logits = np.asarray(logits)
    if logits.ndim != 3:
        raise ValueError(f"logits must have shape [E, N, K], got shape {logits.shape}")
    if logits.shape[0] < 2:
        raise ValueError(
            "confusion needs at least one internal classifier besides the final head; "
            f"logits have {logits.shape[0]} exit"
        )
    probs = softmax(logits)
    return np.abs(probs[:-1] - probs[-1][None]).sum(axis=-1).sum(axis=0)


def max_confidence(logits: np.ndarray) -> np.ndarray:
    """The final head's max-softmax confidence [N] from per-exit logits [E, N, K]."""
    return softmax(np.asarray(logits)[-1]).max(axis=-1)


@dataclass(frozen=True)
class NormStats:
    """Mean and standard deviation of raw confusion on ``split``."""

    mean: float
    std: float
    split: str


def norm_stats(scores: np.ndarray, split: str) -> NormStats:
    """Statistics for z-normalisation; a constant score (std 0) cannot normalise and raises naming ``split``."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.size == 0:
        raise ValueError(f"cannot normalise confusion with the {split!r} split: it has no samples")
    std = float(scores.std())
    if not std > 0:
        raise ValueError(
            f"cannot normalise confusion with the {split!r} split: its confusion has standard deviation 0 "
            f"(every sample scores {float(scores.mean()):.6g}); choose another --norm-split"
        )
    return NormStats(mean=float(scores.mean()), std=std, split=split)


def zscore(scores: np.ndarray, stats: NormStats) -> np.ndarray:
    return (np.asarray(scores, dtype=np.float64) - stats.mean) / stats.std


def auroc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """ROC AUC of ``scores`` for the boolean ``positive`` (here: misclassified); None when one class is absent."""
    from sklearn.metrics import roc_auc_score

    positive = np.asarray(positive, dtype=bool)
    if positive.all() or not positive.any():
        return None
    return float(roc_auc_score(positive, np.asarray(scores, dtype=np.float64)))


def _mean(values: np.ndarray) -> float | None:
    return float(values.mean()) if values.size else None


def _std(values: np.ndarray) -> float | None:
    return float(values.std()) if values.size else None


def _count(mask_values: np.ndarray, threshold: float | None, *, above: bool) -> int | None:
    if threshold is None:
        return None
    return int((mask_values > threshold).sum() if above else (mask_values < threshold).sum())


def group_stats(values: np.ndarray, correct: np.ndarray, name: str) -> dict[str, float | None]:
    """Means and standard deviations of ``values`` for correct, wrong and all samples; None for an empty group."""
    values = np.asarray(values, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    return {
        f"{name}_mean_correct": _mean(values[correct]),
        f"{name}_std_correct": _std(values[correct]),
        f"{name}_mean_wrong": _mean(values[~correct]),
        f"{name}_std_wrong": _std(values[~correct]),
        f"{name}_mean_all": _mean(values),
        f"{name}_std_all": _std(values),
    }


def confusion_counts(confusion: np.ndarray, correct: np.ndarray) -> dict[str, int | None]:
    """The original's confusion counts: correct samples above mean(wrong), wrong ones below mean(correct)."""
    confusion = np.asarray(confusion, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    mean_correct, mean_wrong = _mean(confusion[correct]), _mean(confusion[~correct])
    return {
        "correct_with_confusion_above_mean_wrong": _count(confusion[correct], mean_wrong, above=True),
        "wrong_with_confusion_below_mean_correct": _count(confusion[~correct], mean_correct, above=False),
    }


def confidence_counts(confidence: np.ndarray, correct: np.ndarray) -> dict[str, int | None]:
    """The original's confidence counts: correct samples below mean(wrong), wrong ones above mean(correct)."""
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    mean_correct, mean_wrong = _mean(confidence[correct]), _mean(confidence[~correct])
    return {
        "correct_with_confidence_below_mean_wrong": _count(confidence[correct], mean_wrong, above=False),
        "wrong_with_confidence_above_mean_correct": _count(confidence[~correct], mean_correct, above=True),
    }


@dataclass(frozen=True)
class ConfusionResult:
    """Per-sample arrays [N] of the evaluated split and the summary document."""

    raw: np.ndarray
    normalised: np.ndarray
    confidence: np.ndarray
    predictions: np.ndarray
    correct: np.ndarray
    summary: dict[str, object]


def analyze(
    logits: np.ndarray,
    labels: np.ndarray,
    norm_logits: np.ndarray,
    *,
    split: str = "test",
    norm_split: str = "holdout",
) -> ConfusionResult:
    """Confusion, confidence, the four counts and (ours) AUROCs on ``split``, normalised with ``norm_split``."""
    if split == norm_split:
        raise ValueError(f"normalise confusion with a split other than the evaluated one ({split!r})")
    validate_logits(logits, labels, name=f"{split}_logits")
    norm_logits = np.asarray(norm_logits)
    num_exits = np.asarray(logits).shape[0]
    if norm_logits.ndim != 3 or norm_logits.shape[0] != num_exits:
        raise ValueError(
            f"{norm_split}_logits shape {norm_logits.shape} does not match the {num_exits} exits of {split}_logits"
        )
    if not np.isfinite(norm_logits).all():
        raise ValueError(f"{norm_split}_logits contain NaN or inf")
    norm_scores = confusion_scores(norm_logits)
    norm_note = None
    try:
        stats = norm_stats(norm_scores, norm_split)
    except ValueError as error:
        if norm_scores.size == 0:
            raise
        # a degenerate model (e.g. a diverged run: every sample the same confusion) still gets its report
        stats = NormStats(mean=float(norm_scores.mean()), std=1.0, split=norm_split)
        norm_note = f"{error}: scores are centred, not scaled (std taken as 1)"
    raw = confusion_scores(logits)
    normalised = zscore(raw, stats)
    confidence = max_confidence(logits)
    predictions = np.asarray(logits)[-1].argmax(axis=-1)
    correct = predictions == np.asarray(labels)
    doc: dict[str, object] = {
        "split": split,
        "norm_split": norm_split,
        "norm_mean": stats.mean,
        "norm_std": stats.std,
        "norm_note": norm_note,
        "num_samples": int(correct.size),
        "num_correct": int(correct.sum()),
        "num_wrong": int((~correct).sum()),
        "final_accuracy": float(correct.mean()),
        **group_stats(normalised, correct, "confusion"),
        **group_stats(confidence, correct, "confidence"),
        **confusion_counts(normalised, correct),
        **confidence_counts(confidence, correct),
        "auroc_confusion": auroc(normalised, ~correct),
        "auroc_confidence": auroc(1.0 - confidence, ~correct),
        "auroc_note": "OUR ADDITION (not in the paper): AUROC for detecting final-head misclassifications; "
        "scores: normalised confusion, and 1 - max-softmax confidence. "
        "None when all samples are correct or all wrong.",
    }
    return ConfusionResult(
        raw=raw, normalised=normalised, confidence=confidence, predictions=predictions, correct=correct, summary=doc
    )


def cnn_baseline(cnn_logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[str, object]]:
    """The original's baseline: the CNN's own max-softmax confidence, split by the CNN's own correctness.

    ``cnn_logits`` is [E, N, K] (a CNN has E = 1; the last exit is used). Returns confidence [N], correct [N] and
    the ``cnn_*`` summary entries (means, the two confidence counts, and our AUROC of 1 - confidence).
    """
    validate_logits(cnn_logits, labels, name="cnn logits")
    confidence = max_confidence(cnn_logits)
    correct = np.asarray(cnn_logits)[-1].argmax(axis=-1) == np.asarray(labels)
    entries: dict[str, object] = {
        "cnn_accuracy": float(correct.mean()),
        "cnn_num_wrong": int((~correct).sum()),
        **group_stats(confidence, correct, "cnn_confidence"),
        **{f"cnn_{k}": v for k, v in confidence_counts(confidence, correct).items()},
        "auroc_cnn_confidence": auroc(1.0 - confidence, ~correct),
    }
    return confidence, correct, entries
