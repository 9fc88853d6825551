"""One evaluation pass: every exit's logits on the held-out and test splits, cached for all later analyses.

``outputs.npz`` holds ``{split}_logits`` float32 [E, N, K] and ``{split}_labels`` int64 [N] per split, plus
``exit_fraction``/``exit_macs``/``exit_ops`` float64 [E] (cumulative cost of reaching each exit) and
``exit_positions`` int64 [E-1]. ``metrics.json`` next to it has per-split, per-exit top-1/top-5 in percent.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from sdn import io

log = logging.getLogger(__name__)

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


@torch.no_grad()
def collect_logits(
    model: nn.Module, batches: Batches, *, channels_last: bool = False, desc: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Run ``model`` in eval mode over ``batches``; return logits float32 [E, N, K] and labels int64 [N].

    The model's train/eval mode is restored afterwards.
    """
    was_training = model.training
    model.eval()
    per_batch: list[list[torch.Tensor]] = []
    labels: list[torch.Tensor] = []
    try:
        for images, targets in tqdm(batches, desc=desc, leave=False, disable=not sys.stderr.isatty()):
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            outputs = model(images)
            per_batch.append([o.float().cpu() for o in outputs])
            labels.append(targets.cpu())
    finally:
        model.train(was_training)
    if not per_batch:
        return np.zeros((0, 0, 0), dtype=np.float32), np.zeros((0,), dtype=np.int64)
    num_exits = len(per_batch[0])
    logits = torch.stack([torch.cat([b[e] for b in per_batch]) for e in range(num_exits)])
    return logits.numpy().astype(np.float32, copy=False), torch.cat(labels).numpy().astype(np.int64, copy=False)


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


def available_splits(data_dir: str | os.PathLike[str]) -> list[str]:
    """Split names present in a prepared data folder (one ``{split}.pt`` file each)."""
    return sorted(p.stem for p in Path(data_dir).glob("*.pt"))


def check_splits(data_dir: str | os.PathLike[str], splits: Sequence[str]) -> None:
    present = available_splits(data_dir)
    missing = [s for s in splits if s not in present]
    if missing:
        raise ValueError(
            f"split(s) {missing} not found in {data_dir}; available splits: {', '.join(present) or 'none'}"
        )


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


def evaluate(
    checkpoint: str | os.PathLike[str],
    data_dir: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    splits: Sequence[str] = ("holdout", "test"),
    device: str = "auto",
    batch_size: int = 512,
    allow_cpu_fallback: bool = False,
) -> dict[str, Any]:
    """Evaluate ``checkpoint`` on ``splits`` of ``data_dir``; write ``out_path`` (.npz) and metrics.json beside it.

    Returns the metrics dict written to ``metrics.json``.
    """
    from sdn.data import DeviceLoader, load_prepared
    from sdn.device import resolve_device
    from sdn.train import cost_record, load_checkpoint

    if not splits:
        raise ValueError("splits must name at least one split")
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
    check_splits(data_dir, splits)
    target = resolve_device(device, allow_cpu_fallback)
    model, meta = load_checkpoint(checkpoint, target)
    data = load_prepared(data_dir)
    if data.info.num_classes != meta["num_classes"] or data.info.input_size != meta["input_size"]:
        raise ValueError(
            f"{data_dir} has {data.info.num_classes} classes at {data.info.input_size}px but the checkpoint "
            f"expects {meta['num_classes']} classes at {meta['input_size']}px"
        )
    cost = meta.get("cost") or cost_record(model, meta["input_size"])
    arrays: dict[str, np.ndarray] = exit_cost_arrays(cost, model.num_exits)
    arrays["exit_positions"] = np.array(model.exit_positions, dtype=np.int64)
    metrics: dict[str, Any] = {"checkpoint": str(checkpoint), "data": str(data_dir), "splits": {}}
    for split in splits:
        loader = DeviceLoader(
            data.split(split), data.info, batch_size=batch_size, shuffle=False, augment=False, device=target, seed=0
        )
        logits, labels = collect_logits(model, loader, desc=f"evaluate {split}")
        if logits.shape[1] == 0:
            logits = np.zeros((model.num_exits, 0, model.num_classes), dtype=np.float32)
        arrays[f"{split}_logits"] = logits
        arrays[f"{split}_labels"] = labels
        metrics["splits"][split] = {
            "n": int(labels.shape[0]),
            "top1": topk_accuracy(logits, labels, 1),
            "top5": topk_accuracy(logits, labels, 5),
        }
        log.info("%s: top-1 per exit %s", split, _fmt(metrics["splits"][split]["top1"]))
    out = Path(out_path)
    io.save_npz(out, **arrays)
    io.write_json(out.parent / "metrics.json", metrics)
    return metrics


def _fmt(values: Sequence[float | None]) -> str:
    return " ".join("-" if v is None else f"{v:.2f}" for v in values)
