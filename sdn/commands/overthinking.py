"""``sdn overthinking``: wasteful and destructive effects (paper §4) from a cached ``outputs.npz``."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import pandas as pd

NAME = "overthinking"
HELP = "Overthinking analysis: wasteful (earliest correct exit, oracle cost) and destructive (final-head errors)."

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--outputs", type=Path, required=True, help="outputs.npz written by `sdn evaluate`")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--split", default="test", help="split of outputs.npz to analyze")


def run(args: argparse.Namespace) -> int:
    write_overthinking(args.outputs, args.out, split=args.split)
    return 0


def write_overthinking(outputs: Path, out_dir: Path, *, split: str = "test") -> dict[str, object]:
    """Compute the analysis and write wasteful.csv, destructive.csv, summary.json, overthinking.{png,pdf}."""
    from sdn.analysis import overthinking as ot
    from sdn.io import write_json, write_text
    from sdn.outputs import exit_costs, exit_names, load_split
    from sdn.outputs import load as load_outputs
    from sdn.report.labels import label_of_outputs

    arrays = load_outputs(outputs)
    logits, labels = load_split(arrays, split)
    num_exits = logits.shape[0]
    exit_fraction = exit_costs(arrays, num_exits)
    waste = ot.wasteful(logits, labels, exit_fraction)
    destroy = ot.destructive(logits, labels)
    doc = ot.summary(waste, destroy, exit_fraction, split=split)
    doc["outputs"] = str(outputs)

    names = exit_names(num_exits)
    nominal = ot.nominal_exit_costs(num_exits)
    wasteful_table = pd.DataFrame(
        {
            "exit": names,
            "cost_fraction": exit_fraction,
            "nominal_cost": nominal if nominal is not None else np.full(num_exits, np.nan),
            "correct_share": waste.correct_share,
            "first_correct_share": waste.first_correct_share,
            "cumulative_correct_share": waste.cumulative_correct_share,
        }
    )
    errors = destroy.final_errors
    destructive_table = pd.DataFrame(
        {
            "exit": names[:-1],
            "correct_count": destroy.correct_count_by_ic,
            "destructive_count": destroy.count_by_ic,
            "share_of_final_errors": destroy.count_by_ic / errors if errors else np.full(num_exits - 1, np.nan),
            "mean_confidence_destructive": destroy.mean_confidence_destructive_by_ic,
            "mean_confidence_correct": destroy.mean_confidence_correct_by_ic,
        }
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text(out_dir / "wasteful.csv", wasteful_table.to_csv(index=False))
    write_text(out_dir / "destructive.csv", destructive_table.to_csv(index=False))
    write_json(out_dir / "summary.json", doc)
    _plot(doc, out_dir / "overthinking", label_of_outputs(outputs))
    log.info(
        "%s: early-correct share %.3f, oracle cost %.3f, destructive share of errors %s",
        split,
        waste.early_correct_share,
        waste.oracle_cost_fraction,
        doc["destructive_share_of_errors"],
    )
    return doc


def _plot(doc: dict, path: Path, label: str | None) -> None:
    from sdn.report.plots import new_figure, savefig

    names = doc["exit_names"]
    fig, (left, right) = new_figure(1, 2, figsize=(10, 4.2), layout="constrained")
    wasteful_pct = [100 * s for s in doc["wasteful_share_by_exit"]]
    left.bar(names, wasteful_pct, color="tab:blue", label="first correct here")
    left.plot(names, [100 * s for s in doc["cumulative_correct_share_by_exit"]], "k.-", label="correct by here")
    left.set_ylabel("% of samples")
    left.set_title(
        f"Wasteful: {100 * doc['early_correct_share']:.1f}% right before the final\n"
        f"oracle cost {100 * doc['oracle_cost_fraction']:.0f}%",
        fontsize=9,
    )
    left.legend(fontsize=8)
    errors = doc["final_errors"]
    counts = doc["destructive_count_by_ic"]
    shares = [100 * c / errors if errors else 0.0 for c in counts]
    right.bar(names[:-1], shares, color="tab:red")
    right.set_ylabel("% of final-head errors")
    share = doc["destructive_share_of_errors"]
    union = "undefined (no final errors)" if share is None else f"{100 * share:.1f}% of {errors} errors"
    right.set_title(f"Destructive: an IC right, the final wrong\nany IC: {union}", fontsize=9)
    fig.suptitle(f"Overthinking on the {doc['split']} split ({doc['num_samples']} samples)", fontsize=10)
    savefig(fig, path, label=label)
