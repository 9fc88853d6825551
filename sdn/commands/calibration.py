"""``sdn calibration``: expected calibration error and reliability diagrams per exit and for early exits."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

NAME = "calibration"
HELP = "Calibration (our addition): ECE per exit and for confidence early exits, reliability diagrams."

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--outputs", type=Path, required=True, help="outputs.npz written by `sdn evaluate`")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--split", default="test", help="split to measure calibration on")
    parser.add_argument("--n-bins", type=int, default=15, help="number of equal-width confidence bins")
    parser.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="confidence threshold for the early-exit predictions (default: the tolerance rule on --split-choose)",
    )
    parser.add_argument("--tolerance", type=float, default=0.5, help="accuracy tolerance (points) of that rule")
    parser.add_argument("--split-choose", default="holdout", help="split the early-exit threshold is chosen on")
    parser.add_argument("--fallback", choices=("final", "most-confident"), default="final", help="no-exit answer")


def run(args: argparse.Namespace) -> int:
    write_calibration(
        args.outputs,
        args.out,
        split=args.split,
        n_bins=args.n_bins,
        threshold=args.threshold,
        tolerance=args.tolerance,
        fallback=args.fallback,
        split_choose=args.split_choose,
    )
    return 0


def write_calibration(outputs: Path, out_dir: Path, **options: Any) -> dict[str, Any]:
    """Write ece.csv, reliability.csv, summary.json and reliability.{png,pdf} into ``out_dir``; return the summary."""
    import pandas as pd

    from sdn.analysis import calibration as cal
    from sdn.io import atomic_path, write_json
    from sdn.outputs import load as load_outputs

    result = cal.analyze(load_outputs(outputs), **options)
    out_dir = Path(out_dir)
    with atomic_path(out_dir / "ece.csv") as tmp:
        result["table"].to_csv(tmp, index=False)
    bins = pd.concat([t.assign(output=name) for name, t in result["reliability"].items()], ignore_index=True)
    with atomic_path(out_dir / "reliability.csv") as tmp:
        bins.to_csv(tmp, index=False)
    summary = {"outputs": str(outputs), **result["summary"]}
    write_json(out_dir / "summary.json", summary)
    from sdn.report.labels import label_of_outputs

    cal.plot_reliability(result, str(out_dir / "reliability"), label=label_of_outputs(outputs))
    log.info("calibration analysis of %s written to %s", outputs, out_dir)
    return summary
