"""The one owner of ``outputs.npz`` (every exit's cached logits) and of ``metrics.json`` beside it.

``outputs.npz`` holds, per evaluated split, ``{split}_logits`` float32 [E, N, K] and ``{split}_labels`` int64 [N];
and ``exit_fraction``/``exit_macs``/``exit_ops`` float64 [E] (cumulative cost of reaching each exit) and
``exit_positions`` int64 [E-1]. ``metrics.json`` has per-split, per-exit top-1/top-5 in percent. Every analysis reads
the arrays through :func:`load` and :func:`load_split`; only :func:`save` writes them. numpy only: no torch here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from sdn import io

METRICS = "metrics.json"
COST_KEYS = ("exit_fraction", "exit_macs", "exit_ops")


# ---------------------------------------------------------------- the file


def save(path: str | os.PathLike[str], arrays: Mapping[str, np.ndarray], metrics: Mapping[str, Any]) -> None:
    """Write ``outputs.npz`` at ``path`` and ``metrics.json`` beside it (each atomically)."""
    out = Path(path)
    io.save_npz(out, **arrays)
    io.write_json(out.parent / METRICS, metrics)


def load(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Every array of an ``outputs.npz`` file, loaded into memory (FileNotFoundError names a missing file)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"outputs file not found: {path} (written by `sdn evaluate`)")
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def splits(outputs: Mapping[str, np.ndarray]) -> list[str]:
    """The split names an outputs mapping holds logits for, sorted."""
    return sorted(k[: -len("_logits")] for k in outputs if k.endswith("_logits"))


def load_split(outputs: Mapping[str, np.ndarray], split: str) -> tuple[np.ndarray, np.ndarray]:
    """``(logits [E, N, K], labels [N])`` of one split of an ``outputs.npz`` mapping, validated.

    A missing split raises ValueError naming the splits the file holds.
    """
    logits_key, labels_key = f"{split}_logits", f"{split}_labels"
    if logits_key not in outputs or labels_key not in outputs:
        raise ValueError(
            f"outputs have no split {split!r} (keys {logits_key}/{labels_key}); available: {splits(outputs)}"
        )
    logits = np.asarray(outputs[logits_key])
    labels = np.asarray(outputs[labels_key])
    validate_logits(logits, labels, name=logits_key)
    return logits, labels


def exit_costs(outputs: Mapping[str, np.ndarray], num_exits: int) -> np.ndarray:
    """The cumulative cost fraction ``exit_fraction`` [E] of an outputs mapping, checked against ``num_exits``."""
    if "exit_fraction" not in outputs:
        raise ValueError("outputs have no 'exit_fraction' array (cumulative cost of reaching each exit)")
    cost = np.asarray(outputs["exit_fraction"], dtype=np.float64)
    validate_costs(cost, num_exits)
    return cost


def exit_cost_arrays(cost: Mapping[str, Any], num_exits: int) -> dict[str, np.ndarray]:
    """``exit_fraction``/``exit_macs``/``exit_ops`` [E] from a checkpoint's ``meta["cost"]``.

    ``cost["exits"]`` lists one record per exit; when it omits the final classifier (E-1 records), the final exit
    is the whole CNN (``cost["cnn"]``, fraction 1).
    """
    records = list(cost["exits"])
    if len(records) == num_exits - 1:
        cnn = cost["cnn"]
        records.append({"macs": cnn["macs"], "ops": cnn["ops"], "fraction": 1.0})
    if len(records) != num_exits:
        raise ValueError(f"checkpoint cost lists {len(records)} exits but the model has {num_exits}")
    return {
        "exit_fraction": np.array([r["fraction"] for r in records], dtype=np.float64),
        "exit_macs": np.array([r["macs"] for r in records], dtype=np.float64),
        "exit_ops": np.array([r["ops"] for r in records], dtype=np.float64),
    }


def exit_names(num_exits: int) -> list[str]:
    """Display names of the exits: ``IC1 .. IC{E-1}`` then ``final``."""
    return [f"IC{i + 1}" for i in range(num_exits - 1)] + ["final"]


# ---------------------------------------------------------------- the arrays


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, k: int = 1) -> list[float | None]:
    """Per-exit top-``k`` accuracy in percent for logits [E, N, K]; None for an exit when N is 0.

    ``k`` larger than the number of classes counts every sample as correct.
    """
    if logits.ndim != 3:
        raise ValueError(f"logits must have shape [exits, samples, classes], got {logits.shape}")
    num_exits, n, num_classes = logits.shape
    if n == 0:
        return [None] * num_exits
    k = min(k, num_classes)
    top = np.argsort(-logits, axis=2, kind="stable")[:, :, :k]
    hits = (top == labels[None, :, None]).any(axis=2)
    return [float(100.0 * hits[e].mean()) for e in range(num_exits)]


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


def validate_costs(cost: np.ndarray, num_exits: int) -> None:
    """Raise ValueError unless ``cost`` is a finite, non-negative, non-decreasing [E] array with E = num_exits."""
    cost = np.asarray(cost)
    if cost.shape != (num_exits,):
        raise ValueError(f"exit cost must have shape [{num_exits}] (one per exit), got shape {cost.shape}")
    if not np.isfinite(cost).all() or (cost < 0).any():
        raise ValueError(f"exit cost must be finite and non-negative, got {cost.tolist()}")
    if (np.diff(cost) < 0).any():
        raise ValueError(f"exit cost must be cumulative (non-decreasing), got {cost.tolist()}")
