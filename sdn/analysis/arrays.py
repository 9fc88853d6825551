"""Transforms and checks of per-exit probabilities [E, N, K]; the logits' own checks are in :mod:`sdn.outputs`."""

from __future__ import annotations

import numpy as np

from sdn.outputs import validate_logits


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis (numerically stable; float64 out). Works for [E, N, K] or [N, K]."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def validate_probs(probs: np.ndarray, labels: np.ndarray) -> None:
    """Like :func:`sdn.outputs.validate_logits` for probabilities: finite [E, N, K], values in [0, 1], rows
    summing to 1."""
    validate_logits(probs, labels, name="probs")
    probs = np.asarray(probs)
    if probs.min() < 0 or probs.max() > 1 + 1e-6:
        raise ValueError(f"probs must lie in [0, 1], got range [{probs.min()}, {probs.max()}]")
    sums = probs.sum(axis=-1)
    if not np.allclose(sums, 1.0, atol=1e-4):
        worst = float(np.abs(sums - 1.0).max())
        raise ValueError(f"probs must sum to 1 over classes (last axis); worst row is off by {worst:.3g}")
