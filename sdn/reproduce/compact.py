"""The compact, published form of ``outputs.npz`` logits, and its expansion back to dense float32 logits.

Dense (default): every ``{split}_logits`` [E, N, K] is shifted so that each row's largest logit is 0, clipped at
``-LOGIT_FLOOR`` and stored as float16. Softmax and argmax do not change under the shift; float16 rounding is finest
near 0, i.e. at the logits that carry the probability mass.

Top-k (``top_k=k`` with k < K, for many classes): per row only the k largest shifted logits (float16) and their class
indices are kept, plus the log-sum-exp of the others (float32). Expanded, every other class gets the same logit
``lse_rest - log(K - k)``: the normaliser, the top-k probabilities, the argmax and the confidence are unchanged (up
to float16); only how the remaining mass is spread over the other classes is lost, which moves an entropy or an L1
distance between softmaxes by at most twice the rows' remaining mass. Keys: ``{split}_logits_topk_values``,
``{split}_logits_topk_indices``, ``{split}_logits_rest_lse`` and ``{split}_logits_num_classes``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

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
