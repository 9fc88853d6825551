"""Human-readable names of runs and variants, for figure titles and report text (one definition)."""

from __future__ import annotations

import json
import os
from pathlib import Path

VARIANT_NAMES: dict[str, str] = {
    "cnn": "CNN",
    "ic_only": "SDN (IC-only)",
    "sdn": "SDN (SDN training)",
    "bd_cnn": "backdoored CNN",
    "bd_ic_only": "backdoored SDN (IC-only)",
}
META = "meta.json"  # written beside every trained network's outputs (sdn.checkpoint)


def run_label(dataset: str, arch: str, variant: str | None = None, seed: int | str | None = None) -> str:
    """``"digits · resnet56 · SDN (IC-only) · seed 0"``; the parts that are not known are left out."""
    parts = [dataset, arch]
    if variant is not None:
        parts.append(VARIANT_NAMES.get(variant, variant))
    if seed is not None:
        parts.append(f"seed {seed}")
    return " · ".join(parts)


def label_of_outputs(outputs: str | os.PathLike[str]) -> str | None:
    """The run label of an ``outputs.npz`` from the ``meta.json`` beside it; None when there is none to read."""
    meta_file = Path(outputs).parent / META
    try:
        meta = json.loads(meta_file.read_text())
        return run_label(str(meta["dataset"]), str(meta["arch"]), meta.get("variant"), meta.get("seed"))
    except (OSError, ValueError, KeyError, TypeError):
        return None
