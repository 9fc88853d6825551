"""``sdn confusion``: the confusion metric (paper §5.2) and, as our addition, its misclassification AUROC."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import pandas as pd

NAME = "confusion"
HELP = "Confusion metric: IC-vs-final disagreement, z-normalised, correct vs wrong histograms, AUROC (ours)."

BINS = 25
log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--outputs", type=Path, required=True, help="outputs.npz of the SDN (`sdn evaluate`)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--cnn-outputs", type=Path, default=None, help="outputs.npz of the CNN (confidence baseline)")
    parser.add_argument("--norm-split", default="holdout", help="split giving the normalisation mean/std")
    parser.add_argument("--split", default="test", help="split to analyze")


def run(args: argparse.Namespace) -> int:
    write_confusion(
        args.outputs, args.out, cnn_outputs=args.cnn_outputs, norm_split=args.norm_split, split=args.split
    )
    return 0


def write_confusion(
    outputs: Path,
    out_dir: Path,
    *,
    cnn_outputs: Path | None = None,
    norm_split: str = "holdout",
    split: str = "test",
) -> dict[str, object]:
    """Compute the analysis and write confusion.csv, summary.json and confusion_hist.{png,pdf} into ``out_dir``."""
    from sdn.analysis import confusion as cf
    from sdn.io import write_json, write_text
    from sdn.outputs import load as load_outputs
    from sdn.outputs import load_split
    from sdn.report.labels import label_of_outputs

    arrays = load_outputs(outputs)
    logits, labels = load_split(arrays, split)
    norm_logits, _ = load_split(arrays, norm_split)
    result = cf.analyze(logits, labels, norm_logits, split=split, norm_split=norm_split)
    doc = dict(result.summary)
    doc["outputs"] = str(outputs)
    table = pd.DataFrame(
        {
            "index": np.arange(result.raw.size),
            "label": labels,
            "final_prediction": result.predictions,
            "final_correct": result.correct,
            "confusion_raw": result.raw,
            "confusion_normalised": result.normalised,
            "final_confidence": result.confidence,
        }
    )
    cnn: tuple[np.ndarray, np.ndarray] | None = None
    if cnn_outputs is not None:
        cnn_logits, cnn_labels = load_split(load_outputs(cnn_outputs), split)
        if not np.array_equal(cnn_labels, labels):
            raise ValueError(f"{cnn_outputs} and {outputs} hold different {split} labels: not the same samples")
        confidence, correct, entries = cf.cnn_baseline(cnn_logits, cnn_labels)
        doc.update(entries)
        doc["cnn_outputs"] = str(cnn_outputs)
        table["cnn_prediction"] = cnn_logits[-1].argmax(axis=-1)
        table["cnn_correct"] = correct
        table["cnn_confidence"] = confidence
        cnn = (confidence, correct)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text(out_dir / "confusion.csv", table.to_csv(index=False))
    write_json(out_dir / "summary.json", doc)
    _plot(result, doc, cnn, out_dir / "confusion_hist", label_of_outputs(outputs))
    log.info("%s: AUROC (ours) confusion %s, confidence %s", split, doc["auroc_confusion"], doc["auroc_confidence"])
    return doc


def _fmt_auroc(value: object) -> str:
    return "undefined" if value is None else f"{value:.3f}"


def _plot(result, doc: dict, cnn: tuple[np.ndarray, np.ndarray] | None, path: Path, label: str | None) -> None:
    from sdn.report.plots import new_figure, savefig

    panels = [
        (result.normalised, result.correct, "normalised confusion", doc["auroc_confusion"]),
        (result.confidence, result.correct, "final-head confidence (max softmax)", doc["auroc_confidence"]),
    ]
    if cnn is not None:
        panels.append((cnn[0], cnn[1], "CNN confidence (max softmax)", doc["auroc_cnn_confidence"]))
    fig, axes = new_figure(1, len(panels), figsize=(4.2 * len(panels), 3.6), layout="constrained")
    for ax, (values, correct, quantity, score) in zip(axes, panels, strict=True):
        edges = np.histogram_bin_edges(values, bins=BINS)
        ax.hist(values[correct], bins=edges, alpha=0.45, color="tab:green", label=f"correct ({int(correct.sum())})")
        ax.hist(
            values[~correct],
            bins=edges,
            histtype="step",
            linewidth=1.8,
            color="tab:red",
            label=f"wrong ({int((~correct).sum())})",
        )
        ax.set_xlabel(quantity)
        ax.set_ylabel("samples")
        ax.set_title(f"AUROC of errors (ours): {_fmt_auroc(score)}", fontsize=9)
        ax.legend(fontsize=8)
    fig.suptitle(
        f"Confusion on the {doc['split']} split, normalised with {doc['norm_split']} statistics", fontsize=10
    )
    savefig(fig, path, label=label)
