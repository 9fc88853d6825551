"""``progress.json`` in a training run's folder: how far ``sdn train`` is and how long its epochs take.

``sdn train`` rewrites it after every epoch (next to ``last.pt``) and leaves it when it finishes. Nothing reads it
to train or to analyse; it is for whoever watches or schedules runs: ``sdn.reproduce`` estimates from it whether a
job still fits in a device call. Keys: ``epoch`` (finished epochs), ``epochs`` (the schedule's total),
``epoch_wall_s`` (wall seconds of this process's most recent epochs, training and held-out evaluation, oldest first).
"""

from __future__ import annotations

import os
import statistics
from pathlib import Path
from typing import Any

from sdn import io

PROGRESS = "progress.json"
KEEP_EPOCHS = 20  # how many recent epoch times the file keeps


def write_progress(out_dir: str | os.PathLike[str], epoch: int, epochs: int, epoch_wall_s: list[float]) -> None:
    doc = {"epoch": epoch, "epochs": epochs, "epoch_wall_s": [round(s, 3) for s in epoch_wall_s[-KEEP_EPOCHS:]]}
    io.write_json(Path(out_dir) / PROGRESS, doc)


def read_progress(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The run's progress, or None where there is none yet or it cannot be read (it is advisory only)."""
    try:
        doc = io.read_json(Path(run_dir) / PROGRESS)
        epoch, epochs, times = int(doc["epoch"]), int(doc["epochs"]), [float(s) for s in doc["epoch_wall_s"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return {"epoch": epoch, "epochs": epochs, "epoch_wall_s": times}


def typical_epoch_seconds(epoch_wall_s: list[float]) -> float | None:
    """The median of the recent epochs, leaving out the first where there are others (it holds the warm-up:
    cuDNN's kernel search, CUDA-graph capture)."""
    times = epoch_wall_s[1:] if len(epoch_wall_s) > 1 else epoch_wall_s
    return statistics.median(times) if times else None
