"""Seeded, stratified index selection: subsampling and the held-out split carved from the training data."""

from __future__ import annotations

import numpy as np
import torch

# Default held-out size: this many images for large training sets, this fraction for small ones.
HOLDOUT_LARGE = 5000
HOLDOUT_SMALL_FRACTION = 0.1
SMALL_TRAIN_LIMIT = 20000


def holdout_size(num_train: int, holdout: int | float | None) -> int:
    """How many of ``num_train`` images to hold out.

    ``None``: 5,000 for training sets of 20,000 images or more, else 10%. An ``int`` is a count; a ``float`` in
    (0, 1) is a fraction. At least one image must remain for training.
    """
    if holdout is None:
        size = HOLDOUT_LARGE if num_train >= SMALL_TRAIN_LIMIT else round(num_train * HOLDOUT_SMALL_FRACTION)
    elif isinstance(holdout, float) and not holdout.is_integer():
        if not 0.0 < holdout < 1.0:
            raise ValueError(f"holdout fraction {holdout} must lie in (0, 1)")
        size = round(num_train * holdout)
    else:
        size = int(holdout)
    if not 0 <= size < num_train:
        raise ValueError(f"holdout of {size} images leaves no training data out of {num_train}")
    return size


def stratified_choice(labels: torch.Tensor, size: int, rng: np.random.Generator) -> np.ndarray:
    """``size`` sorted indices into ``labels``, each class taking its proportional share (largest remainder)."""
    values = labels.numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    total = len(values)
    if not 0 <= size <= total:
        raise ValueError(f"cannot choose {size} of {total} images")
    classes, counts = np.unique(values, return_counts=True)
    exact = counts * (size / total) if total else counts * 0.0
    quota = np.floor(exact).astype(np.int64)
    remainder = size - int(quota.sum())
    if remainder:
        order = np.lexsort((classes, -(exact - quota)))  # largest fractional part first, ties by class
        quota[order[:remainder]] += 1
    chosen = [
        rng.choice(np.flatnonzero(values == cls), size=int(q), replace=False)
        for cls, q in zip(classes, quota, strict=True)
        if q
    ]
    return np.sort(np.concatenate(chosen)) if chosen else np.empty(0, dtype=np.int64)


def subsample(labels: torch.Tensor, max_size: int | None, seed: int, stream: int) -> torch.Tensor:
    """All indices when ``max_size`` is None or not smaller than the set; else a seeded stratified subset."""
    total = len(labels)
    if max_size is None or max_size >= total:
        return torch.arange(total)
    if max_size < 1:
        raise ValueError(f"subsample size must be >= 1, got {max_size}")
    rng = np.random.default_rng([seed, stream])
    return torch.as_tensor(stratified_choice(labels, max_size, rng), dtype=torch.int64)


def holdout_split(labels: torch.Tensor, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train_positions, holdout_positions)``: disjoint sorted positions into ``labels``; holdout stratified."""
    rng = np.random.default_rng([seed, 0])
    held = stratified_choice(labels, size, rng)
    mask = np.ones(len(labels), dtype=bool)
    mask[held] = False
    return torch.as_tensor(np.flatnonzero(mask), dtype=torch.int64), torch.as_tensor(held, dtype=torch.int64)
