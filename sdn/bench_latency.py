"""Wall-clock latency of online early exit against the full network, side by side with the saving the ops predict.

For each engine (PyTorch eager, ONNX Runtime, CUDA graphs where they apply) and batch size, the test images are
run through the plain CNN (no internal classifier evaluated) and through online early exit at the threshold chosen
on the held-out split. The two are timed in alternation, pass after pass over the same images, so a change of load
on a shared machine hits both alike; each figure is the median over ``repeats`` passes.

- ``measured_saving`` = 1 - (early-exit pass time / CNN pass time): a whole pass, i.e. the mean cost per image,
  which is what the ops-predicted saving (1 - the mean cost fraction of the exits taken) is comparable with;
- ``saving_ratio`` = measured / predicted saving (1.0: the clock realises all the ops promise);
- ``median_batch_ms``: the median latency of one batch (at batch 1: of one request).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

Runner = Callable[[torch.Tensor], Any]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _pass(run: Runner, batches: list[torch.Tensor], device: torch.device) -> tuple[float, list[float]]:
    """Seconds of one pass over ``batches`` and the seconds of each batch (the answer is read on the host)."""
    per_batch = []
    _sync(device)
    start = time.perf_counter()
    for batch in batches:
        t0 = time.perf_counter()
        run(batch)
        _sync(device)
        per_batch.append(time.perf_counter() - t0)
    return time.perf_counter() - start, per_batch


def compare(
    variants: dict[str, Runner],
    images: torch.Tensor,
    batch_size: int,
    device: torch.device,
    *,
    repeats: int = 5,
    warmup_batches: int = 3,
) -> dict[str, dict[str, float]]:
    """Median pass time and median batch latency of every variant, the variants timed in alternation."""
    if batch_size < 1 or repeats < 1:
        raise ValueError(f"batch_size and repeats must be >= 1, got {batch_size} and {repeats}")
    batches = list(images.split(batch_size))
    for run in variants.values():
        _pass(run, [batches[i % len(batches)] for i in range(warmup_batches)], device)
    passes: dict[str, list[float]] = {name: [] for name in variants}
    per_batch: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, run in variants.items():
            total, each = _pass(run, batches, device)
            passes[name].append(total)
            per_batch[name].extend(each)
    return {
        name: {
            "pass_ms": 1000.0 * statistics.median(passes[name]),
            "median_batch_ms": 1000.0 * statistics.median(per_batch[name]),
            "images_per_s": len(images) / statistics.median(passes[name]),
        }
        for name in variants
    }


def saving_row(
    engine: str,
    device: torch.device,
    batch_size: int,
    timing: dict[str, dict[str, float]],
    predicted_saving: float,
    num_images: int,
) -> dict[str, Any]:
    """One row of the report: the CNN's and early exit's times, the measured and predicted savings, their ratio."""
    cnn, early = timing["cnn"], timing["early_exit"]
    measured = 1.0 - early["pass_ms"] / cnn["pass_ms"]
    return {
        "engine": engine,
        "device": str(device),
        "batch_size": batch_size,
        "num_images": num_images,
        "cnn_pass_ms": cnn["pass_ms"],
        "early_exit_pass_ms": early["pass_ms"],
        "cnn_median_batch_ms": cnn["median_batch_ms"],
        "early_exit_median_batch_ms": early["median_batch_ms"],
        "cnn_images_per_s": cnn["images_per_s"],
        "early_exit_images_per_s": early["images_per_s"],
        "throughput_gain": early["images_per_s"] / cnn["images_per_s"],
        "measured_saving": measured,
        "predicted_saving": predicted_saving,
        "saving_ratio": measured / predicted_saving if predicted_saving > 0 else None,
        **({"sdn_full_pass_ms": timing["sdn_full"]["pass_ms"]} if "sdn_full" in timing else {}),
    }


def predicted_saving(exit_cost_fraction: np.ndarray, exit_index: np.ndarray) -> float:
    """1 - the mean cost fraction of the exits the images take."""
    return float(1.0 - exit_cost_fraction[exit_index].mean()) if len(exit_index) else 0.0


def table(rows: list[dict[str, Any]]) -> str:
    """The rows as a fixed-width text table."""
    lines = [
        f"{'engine':22s} {'device':6s} {'batch':>5s} {'images':>6s} {'CNN ms':>9s} {'exit ms':>9s} "
        f"{'predicted':>9s} {'measured':>9s} {'ratio':>6s} {'img/s x':>7s}"
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['engine']:22s} batch {r['batch_size']}: {r['error']}")
            continue
        ratio = "-" if r["saving_ratio"] is None else f"{r['saving_ratio']:.2f}"
        lines.append(
            f"{r['engine']:22s} {r['device']:6s} {r['batch_size']:5d} {r['num_images']:6d} {r['cnn_pass_ms']:9.1f} "
            f"{r['early_exit_pass_ms']:9.1f} {r['predicted_saving']:9.1%} {r['measured_saving']:9.1%} "
            f"{ratio:>6s} {r['throughput_gain']:7.2f}"
        )
    return "\n".join(lines)
