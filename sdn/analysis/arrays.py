"""Shared checks and transforms for per-exit arrays: logits/probabilities [E, N, K] and labels [N]."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np


def validate_logits(logits: np.ndarray, labels: np.ndarray, *, name: str = "logits") -> None:
    """Raise ValueError unless ``logits`` is a finite [E, N, K] array and ``labels`` an integer [N] array in [0, K).

    The message names the problem: the shapes that disagree, the exit holding NaN/inf values (and how many), an
    empty axis, or a label out of range.
    """
    logits = np.asarray(logits)
    labels = np.asarray(labels)
    if logits.ndim != 3:
        raise ValueError(f"{name} must have shape [E, N, K] (exits, samples, classes), got shape {logits.shape}")
    num_exits, num_samples, num_classes = logits.shape
    if num_exits == 0 or num_samples == 0 or num_classes == 0:
        raise ValueError(f"{name} is empty: shape {logits.shape} (exits, samples, classes must all be >= 1)")
    if labels.ndim != 1:
        raise ValueError(f"labels must have shape [N], got shape {labels.shape}")
    if labels.shape[0] != num_samples:
        raise ValueError(
            f"{name} and labels disagree: {name} has {num_samples} samples (shape {logits.shape}), "
            f"labels has {labels.shape[0]}"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(
            f"labels must lie in [0, {num_classes}) for {num_classes} classes, "
            f"got range [{labels.min()}, {labels.max()}]"
        )
    finite = np.isfinite(logits)
    if not finite.all():
        bad_per_exit = (~finite).reshape(num_exits, -1).sum(axis=1)
        parts = [f"exit {e}: {int(n)} values" for e, n in enumerate(bad_per_exit) if n]
        raise ValueError(f"{name} contain NaN or inf ({'; '.join(parts)})")


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis (numerically stable; float64 out). Works for [E, N, K] or [N, K]."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def validate_probs(probs: np.ndarray, labels: np.ndarray) -> None:
    """Like :func:`validate_logits` for probabilities: finite [E, N, K], values in [0, 1], rows summing to 1."""
    validate_logits(probs, labels, name="probs")
    probs = np.asarray(probs)
    if probs.min() < 0 or probs.max() > 1 + 1e-6:
        raise ValueError(f"probs must lie in [0, 1], got range [{probs.min()}, {probs.max()}]")
    sums = probs.sum(axis=-1)
    if not np.allclose(sums, 1.0, atol=1e-4):
        worst = float(np.abs(sums - 1.0).max())
        raise ValueError(f"probs must sum to 1 over classes (last axis); worst row is off by {worst:.3g}")


def load_split(outputs: Mapping[str, np.ndarray], split: str) -> tuple[np.ndarray, np.ndarray]:
    """``(logits [E, N, K], labels [N])`` of one split of an ``outputs.npz`` mapping, validated.

    A missing split raises ValueError naming the splits the file holds.
    """
    logits_key, labels_key = f"{split}_logits", f"{split}_labels"
    if logits_key not in outputs or labels_key not in outputs:
        available = sorted(k[: -len("_logits")] for k in outputs if k.endswith("_logits"))
        raise ValueError(f"outputs have no split {split!r} (keys {logits_key}/{labels_key}); available: {available}")
    logits = np.asarray(outputs[logits_key])
    labels = np.asarray(outputs[labels_key])
    validate_logits(logits, labels, name=logits_key)
    return logits, labels


def load_outputs(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Every array of an ``outputs.npz`` file, loaded into memory (FileNotFoundError names a missing file).

    The published, compact form of the logits (float16, possibly top-k; :mod:`sdn.reproduce.compact`) is expanded
    to dense float32 logits.
    """
    from sdn.reproduce.compact import expand_outputs

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"outputs file not found: {path} (written by `sdn evaluate`)")
    with np.load(path, allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    try:
        return expand_outputs(arrays)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


def exit_costs(outputs: Mapping[str, np.ndarray], num_exits: int) -> np.ndarray:
    """The cumulative cost fraction ``exit_fraction`` [E] of an outputs mapping, checked against ``num_exits``."""
    if "exit_fraction" not in outputs:
        raise ValueError("outputs have no 'exit_fraction' array (cumulative cost of reaching each exit)")
    cost = np.asarray(outputs["exit_fraction"], dtype=np.float64)
    validate_costs(cost, num_exits)
    return cost


def validate_costs(cost: np.ndarray, num_exits: int) -> None:
    """Raise ValueError unless ``cost`` is a finite, non-negative, non-decreasing [E] array with E = num_exits."""
    cost = np.asarray(cost)
    if cost.shape != (num_exits,):
        raise ValueError(f"exit cost must have shape [{num_exits}] (one per exit), got shape {cost.shape}")
    if not np.isfinite(cost).all() or (cost < 0).any():
        raise ValueError(f"exit cost must be finite and non-negative, got {cost.tolist()}")
    if (np.diff(cost) < 0).any():
        raise ValueError(f"exit cost must be cumulative (non-decreasing), got {cost.tolist()}")
