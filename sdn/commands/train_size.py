"""``sdn train-size``: what the default held-out split costs a CNN, from a run trained on every training image."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

NAME = "train-size"
HELP = "Compare a CNN trained on the default training set with one trained on all training images (cnn_full)."

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cnn", type=Path, required=True, help="run folder of the default CNN (outputs.npz, meta.json)"
    )
    parser.add_argument(
        "--full", type=Path, required=True, help="run folder of the CNN trained on all training images (cnn_full)"
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder (summary.json)")
    parser.add_argument("--split", default="test", help="split both runs were tested on")


def run(args: argparse.Namespace) -> int:
    doc = write_train_size(args.cnn, args.full, args.out, split=args.split)
    log.info(
        "%d shared %s images: top-1 %.2f%% (%s training images) vs %.2f%% (%s): %+.2f points, McNemar p %.3g",
        doc["images"], doc["split"], doc["default"]["top1"], doc["default"]["train_images"], doc["full"]["top1"],
        doc["full"]["train_images"], doc["gain_points"], doc["mcnemar_p"],
    )  # fmt: skip
    return 0


def write_train_size(cnn: Path, full: Path, out_dir: Path, *, split: str = "test") -> dict[str, Any]:
    """Compare the two runs (:func:`sdn.analysis.train_size.compare`) and write ``out_dir/summary.json``."""
    from sdn.analysis.train_size import compare
    from sdn.io import read_json, write_json
    from sdn.outputs import load as load_outputs

    sizes, setups = [], []
    for run in (cnn, full):
        meta_file = run / "meta.json"
        if not meta_file.is_file():
            raise FileNotFoundError(
                f"{meta_file} not found: --cnn and --full take run folders (meta.json, outputs.npz)"
            )
        meta = read_json(meta_file)
        size = meta.get("train_size")
        sizes.append(int(size) if isinstance(size, int | float) else None)
        setups.append(training_setup(meta))
    doc = compare(
        load_outputs(cnn / "outputs.npz"),
        load_outputs(full / "outputs.npz"),
        train_images=(sizes[0], sizes[1]),
        split=split,
    )
    doc["default"]["training"], doc["full"]["training"] = setups
    doc["runs"] = {"default": str(cnn), "full": str(full)}
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "summary.json", doc)
    return doc


def training_setup(meta: dict[str, Any]) -> str | None:
    """Where and in what precision a run trained, from its meta.json ("cuda, bf16", "cpu, fp32"; None if unrecorded):
    two CNNs that differ in it differ in more than their training sets."""
    device = meta.get("device")
    if not isinstance(device, str) or "amp" not in meta:
        return None
    return f"{device}, {'bf16' if meta['amp'] else 'fp32'}"
