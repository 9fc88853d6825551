"""The one owner of ``outputs.npz`` (every exit's cached logits) and of ``metrics.json`` beside it.

``outputs.npz`` holds, per evaluated split, ``{split}_logits`` float32 [E, N, K] and ``{split}_labels`` int64 [N];
and ``exit_fraction``/``exit_macs``/``exit_ops`` float64 [E] (cumulative cost of reaching each exit) and
``exit_positions`` int64 [E-1]. ``metrics.json`` has per-split, per-exit top-1/top-5 in percent. Every analysis reads
the arrays through :func:`load` and :func:`load_split`; only :func:`save` writes them. numpy only: no torch here.

Published runs (``reproduction/``) store the logits compactly (:func:`compact_outputs`); :func:`load` expands them
back to dense float32, so every reader sees one form.

Compact, dense (default): every ``{split}_logits`` [E, N, K] is shifted so that each row's largest logit is 0,
clipped at ``-LOGIT_FLOOR`` and stored as float16. Softmax and argmax do not change under the shift; float16
rounding is finest near 0, i.e. at the logits that carry the probability mass.

Top-k (``top_k=k`` with k < K, for many classes): per row only the k largest shifted logits (float16) and their class
indices are kept, plus the log-sum-exp of the others (float32). Expanded, every other class gets the same logit
``lse_rest - log(K - k)``: the normaliser, the top-k probabilities, the argmax and the confidence are unchanged (up
to float16); only how the remaining mass is spread over the other classes is lost, which moves an entropy or an L1
distance between softmaxes by at most twice the rows' remaining mass. Keys: ``{split}_logits_topk_values``,
``{split}_logits_topk_indices``, ``{split}_logits_rest_lse`` and ``{split}_logits_num_classes``.
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
    io.sha256_sidecar(out).unlink(missing_ok=True)  # an old record must not vouch for the new file
    io.save_npz(out, **arrays)
    io.write_sha256_sidecar(out)
    io.write_json(out.parent / METRICS, metrics)


def load(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Every array of an ``outputs.npz`` file, loaded into memory (FileNotFoundError names a missing file)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"outputs file not found: {path} (written by `sdn evaluate`)")
    remedy = f"rerun `sdn evaluate` for it (delete {path} first)"
    io.verify_sha256(path, io.recorded_sha256(path), remedy)  # no sidecar (published runs): not verified
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except Exception as error:  # noqa: BLE001 - any unreadable file is reported the same way
        raise io.CorruptFileError(f"{path} cannot be read as outputs.npz ({error}); {remedy}") from error
    try:
        return expand_outputs(arrays)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


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


# ---------------------------------------------------------------- the compact, published form


LOGIT_FLOOR = 60000.0  # below float16's largest finite value (65504)
TOPK_SUFFIXES = ("_topk_values", "_topk_indices", "_rest_lse", "_num_classes")


def _shifted(value: np.ndarray, key: str, source: str) -> np.ndarray:
    value = np.asarray(value, dtype=np.float64)
    if value.size and not np.isfinite(value).all():
        raise ValueError(f"{source}: {key} holds NaN or inf; re-evaluate the checkpoint")
    if value.size:
        value = np.clip(value - value.max(axis=-1, keepdims=True), -LOGIT_FLOOR, 0.0)
    return value


def compact_outputs(
    arrays: Mapping[str, np.ndarray], *, top_k: int | None = None, source: str = "outputs"
) -> dict[str, np.ndarray]:
    """The compact form of an outputs mapping; arrays other than ``*_logits`` are kept as they are."""
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be a positive number of classes, got {top_k}")
    compact: dict[str, np.ndarray] = {}
    for key, value in arrays.items():
        if not key.endswith("_logits"):
            compact[key] = value
            continue
        shifted = _shifted(value, key, source)
        num_classes = shifted.shape[-1] if shifted.ndim == 3 else 0
        if top_k is None or top_k >= num_classes or shifted.shape[1] == 0:
            compact[key] = shifted.astype(np.float16)
            continue
        order = np.argsort(-shifted, axis=-1, kind="stable")
        top, rest = order[..., :top_k], order[..., top_k:]
        rest_values = np.take_along_axis(shifted, rest, axis=-1)
        index_type = np.uint8 if num_classes <= 256 else np.uint16
        compact[f"{key}_topk_values"] = np.take_along_axis(shifted, top, axis=-1).astype(np.float16)
        compact[f"{key}_topk_indices"] = top.astype(index_type)
        compact[f"{key}_rest_lse"] = np.logaddexp.reduce(rest_values, axis=-1).astype(np.float32)
        compact[f"{key}_num_classes"] = np.array(num_classes, dtype=np.int64)
    return compact


def expand_outputs(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Dense float32 ``{split}_logits`` from either compact form; other arrays unchanged (float16 widened)."""
    dense: dict[str, np.ndarray] = {}
    for key, value in arrays.items():
        if key.endswith(TOPK_SUFFIXES):
            continue
        dense[key] = value.astype(np.float32) if value.dtype == np.float16 else value
    for key in arrays:
        if not key.endswith("_logits_topk_values"):
            continue
        base = key[: -len("_topk_values")]
        missing = [base + s for s in TOPK_SUFFIXES if base + s not in arrays]
        if missing:
            raise ValueError(f"outputs hold {key} but not {', '.join(missing)}: the top-k logits are incomplete")
        values = arrays[key].astype(np.float32)
        indices = arrays[f"{base}_topk_indices"].astype(np.int64)
        num_classes = int(arrays[f"{base}_num_classes"])
        k = values.shape[-1]
        fill = arrays[f"{base}_rest_lse"].astype(np.float64) - np.log(num_classes - k)
        fill = np.maximum(fill, -LOGIT_FLOOR).astype(np.float32)
        logits = np.repeat(fill[..., None], num_classes, axis=-1)
        np.put_along_axis(logits, indices, values, axis=-1)
        dense[base] = logits
    return dense
