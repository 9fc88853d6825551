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
    run = Path(outputs).parent
    try:
        meta = json.loads((run / META).read_text())
        dataset, variant = _names_in_layout(run, meta)
        return run_label(dataset, str(meta["arch"]), variant, meta.get("seed"))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _names_in_layout(run: Path, meta: dict) -> tuple[str, str | None]:
    """The data set's and the variant's names as the workflow's layout ``<dataset>/<arch>/s<seed>/<variant>/`` gives
    them, where ``run`` sits in that layout; otherwise those in ``meta.json``. The layout's are the user's: the data
    set in ``meta.json`` is the loader's (``imagefolder`` for a JPEG copy of CIFAR-10) and the variant the training's
    (``ic_only`` for the backdoor experiment's ``bd_ic_only``)."""
    seed_dir = run.parent
    variant = meta.get("variant")
    in_layout = (
        run.name in (variant, f"bd_{variant}")  # the backdoor runs: bd_cnn, bd_ic_only
        and seed_dir.name == f"s{meta.get('seed')}"
        and seed_dir.parent.name == meta.get("arch")
        and seed_dir.parent.parent.name not in ("", ".")
    )
    if in_layout:
        return seed_dir.parent.parent.name, run.name
    return str(meta["dataset"]), variant
