"""One evaluation pass: every exit's logits on the held-out and test splits, cached for all later analyses.

Reads a ``model.pt`` (:mod:`sdn.checkpoint`) and a prepared data folder (:mod:`sdn.data`); writes ``outputs.npz``
and ``metrics.json`` (:mod:`sdn.outputs`, which describes both).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from sdn import outputs
from sdn.checkpoint import cost_record, load_checkpoint
from sdn.inference import collect_logits

log = logging.getLogger(__name__)


def evaluate(
    checkpoint: str | os.PathLike[str],
    data_dir: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    splits: Sequence[str] = ("holdout", "test"),
    device: str = "auto",
    batch_size: int = 512,
    allow_cpu_fallback: bool = False,
    force_data_mismatch: bool = False,
) -> dict[str, Any]:
    """Evaluate ``checkpoint`` on ``splits`` of ``data_dir``; write ``out_path`` (.npz) and metrics.json beside it.

    Returns the metrics dict written to ``metrics.json``. A checkpoint trained with other held-out/test splits
    than ``data_dir``'s is refused (ValueError naming both) unless ``force_data_mismatch``.
    """
    from sdn.data import DeviceLoader, load_prepared
    from sdn.data.prepare import data_mismatch
    from sdn.device import resolve_device

    if not splits:
        raise ValueError("splits must name at least one split")
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
    data = load_prepared(data_dir)
    data.require_splits(splits)
    target = resolve_device(device, allow_cpu_fallback)
    model, meta = load_checkpoint(checkpoint, target)
    if data.info.num_classes != meta["num_classes"] or data.info.input_size != meta["input_size"]:
        raise ValueError(
            f"{data_dir} has {data.info.num_classes} classes at {data.info.input_size}px but the checkpoint "
            f"expects {meta['num_classes']} classes at {meta['input_size']}px"
        )
    mismatch = data_mismatch(meta.get("data"), data.identity())
    if mismatch and not force_data_mismatch:
        raise ValueError(
            f"checkpoint {checkpoint} was trained on other data than {data_dir} ({mismatch}; checkpoint first, "
            "data second): evaluate it on the data it was trained with, retrain it, or pass --force-data-mismatch"
        )
    if mismatch:
        log.warning("evaluating %s on other data than it was trained on: %s (forced)", checkpoint, mismatch)
    cost = meta.get("cost") or cost_record(model, meta["input_size"])
    arrays: dict[str, np.ndarray] = outputs.exit_cost_arrays(cost, model.num_exits)
    arrays["exit_positions"] = np.array(model.exit_positions, dtype=np.int64)
    metrics: dict[str, Any] = {"checkpoint": str(checkpoint), "data": str(data_dir), "splits": {}}
    for split in splits:
        part = data.split(split)
        loader = DeviceLoader(
            part, data.info, batch_size=batch_size, shuffle=False, augment=False, device=target, seed=0
        )
        logits, labels = collect_logits(model, loader, desc=f"evaluate {split}")
        if logits.shape[1] == 0:
            logits = np.zeros((model.num_exits, 0, model.num_classes), dtype=np.float32)
        arrays[f"{split}_logits"] = logits
        arrays[f"{split}_labels"] = labels
        if part.indices is not None:  # which images: runs on other splits of the data set compare image by image
            arrays[f"{split}_indices"] = part.indices.numpy().astype(np.int64)
        metrics["splits"][split] = {
            "n": int(labels.shape[0]),
            "top1": outputs.topk_accuracy(logits, labels, 1),
            "top5": outputs.topk_accuracy(logits, labels, 5),
        }
        log.info("%s: top-1 per exit %s", split, _fmt(metrics["splits"][split]["top1"]))
    outputs.save(out_path, arrays, metrics)
    return metrics


def _fmt(values: Sequence[float | None]) -> str:
    return " ".join("-" if v is None else f"{v:.2f}" for v in values)
