"""``sdn early-exit``: simulate early exits over a cached ``outputs.npz`` and choose thresholds (paper §5.1)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np

NAME = "early-exit"
HELP = (
    "Early exits: sweep confidence/entropy/patience thresholds, choose them on the held-out split "
    "(accuracy tolerance, cost budgets) and report them on the test split."
)

log = logging.getLogger(__name__)
MODEL_FOLDER = "mlflow_model"  # sdn.tracking.MODEL_FOLDER (not imported here: the parser must stay light)


def _csv_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _float_list(text: str) -> list[float]:
    try:
        return [float(part) for part in _csv_list(text)]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from err


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--outputs", type=Path, required=True, help="outputs.npz written by `sdn evaluate`")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--cnn-outputs", type=Path, help="outputs.npz of the CNN the SDN came from: its accuracy is marked at cost 1"
    )
    parser.add_argument(
        "--policies", type=_csv_list, default="confidence,entropy,patience", help="comma-separated exit policies"
    )
    parser.add_argument(
        "--fallback",
        choices=("final", "most-confident"),
        default="final",
        help="answer when no IC fires: the final classifier, or the most confident output (the original code)",
    )
    parser.add_argument(
        "--tolerance", type=float, default=0.5, help="accuracy points below the final exit the tolerance rule allows"
    )
    parser.add_argument(
        "--budgets", type=_float_list, default="0.25,0.5,0.75", help="cost budgets as fractions of the CNN's cost"
    )
    parser.add_argument("--split-choose", default="holdout", help="split the thresholds are chosen on")
    parser.add_argument("--split-report", default="test", help="split the chosen thresholds are reported on")
    parser.add_argument(
        "--checkpoint",
        type=Path,
        help="the SDN's model.pt: also write it as an MLflow model at the tolerance-rule confidence threshold "
        f"(OUT/{MODEL_FOLDER}; logged with the run and registered as sdn-<dataset>-<arch>-<variant>)",
    )
    parser.add_argument("--data", type=Path, help="prepared data folder (for checkpoints without normalisation)")


def run(args: argparse.Namespace) -> int:
    write_early_exit(
        args.outputs,
        args.out,
        cnn_outputs=args.cnn_outputs,
        policies=args.policies,
        fallback=args.fallback,
        tolerance=args.tolerance,
        budgets=args.budgets,
        split_choose=args.split_choose,
        split_report=args.split_report,
    )
    if args.checkpoint is not None:
        args._mlflow_model = write_mlflow_model(args.checkpoint, args.out, data_dir=args.data)
    return 0


def write_mlflow_model(checkpoint: Path, out_dir: Path, *, data_dir: Path | None = None) -> dict[str, Any] | None:
    """Write ``out_dir/mlflow_model``: the pyfunc model of ``checkpoint`` at the confidence threshold the tolerance
    rule chose (summary.json in ``out_dir``). Returns what the tracked run logs and registers (None: no mlflow)."""
    import io

    from PIL import Image

    from sdn import exit_policy
    from sdn.checkpoint import read_meta
    from sdn.io import read_json
    from sdn.predict import Predictor
    from sdn.tracking import save_pyfunc_model

    summary = Path(out_dir) / "summary.json"
    policies = list(read_json(summary)["policies"])
    name = exit_policy.DEFAULT_POLICY if exit_policy.DEFAULT_POLICY in policies else policies[0]
    try:
        policy = exit_policy.from_summary(summary, name)
    except ValueError as err:
        log.warning("no MLflow model written: %s", err)
        return None
    predictor = Predictor.load(checkpoint, exit_policy=policy, data_dir=data_dir)
    size = predictor.preprocess.size
    example = io.BytesIO()
    Image.new("RGB", (size, size), (128, 128, 128)).save(example, format="PNG")
    try:
        folder = save_pyfunc_model(
            Path(out_dir) / MODEL_FOLDER,
            checkpoint,
            exit_policy=policy.record(),
            preprocess=dataclasses.asdict(predictor.preprocess),
            example_image=example.getvalue(),
            metadata={"checkpoint": str(checkpoint), "sdn_exit_policy": policy.record()},
        )
    except ImportError as err:
        log.warning("no MLflow model written (%s); install mlflow to package the model", err)
        return None
    meta = read_meta(Path(checkpoint).parent) if (Path(checkpoint).parent / "meta.json").is_file() else {}
    tags = {key: meta.get(key) for key in ("dataset", "arch", "seed", "variant") if meta.get(key) is not None}
    log.info("MLflow model of %s written to %s", checkpoint, folder)
    return {"path": folder, "tags": tags}


def write_early_exit(
    outputs: Path, out_dir: Path, *, cnn_outputs: Path | None = None, **options: Any
) -> dict[str, Any]:
    """Run :func:`sdn.analysis.early_exit.analyze` and write sweep_{policy}.csv, chosen.csv, chosen.md,
    summary.json, accuracy_vs_cost.{png,pdf} and exit_histogram.{png,pdf} into ``out_dir``; return the summary.

    With ``cnn_outputs`` the CNN's final-head accuracy on the report split goes into the summary
    (``cnn_test_accuracy``) and the figure."""
    from sdn.analysis import early_exit as ee
    from sdn.io import atomic_path, write_json, write_text
    from sdn.outputs import load as load_outputs
    from sdn.outputs import load_split
    from sdn.report.labels import label_of_outputs

    arrays = load_outputs(outputs)
    result = ee.analyze(arrays, **options)
    cnn_accuracy = None
    if cnn_outputs is not None:
        split = result["summary"]["split_report"]
        cnn_logits, cnn_labels = load_split(load_outputs(cnn_outputs), split)
        if not np.array_equal(cnn_labels, load_split(arrays, split)[1]):
            raise ValueError(f"{cnn_outputs} and {outputs} hold different {split} labels: not the same samples")
        cnn_accuracy = float(100.0 * (cnn_logits[-1].argmax(axis=-1) == cnn_labels).mean())
    out_dir = Path(out_dir)
    for policy, table in result["sweeps"].items():
        with atomic_path(out_dir / f"sweep_{policy}.csv") as tmp:
            table.to_csv(tmp, index=False)
    with atomic_path(out_dir / "chosen.csv") as tmp:
        result["chosen"].to_csv(tmp, index=False)
    write_text(out_dir / "chosen.md", ee.chosen_markdown(result["chosen"], result["summary"]["split_report"]))
    summary = {"outputs": str(outputs), **result["summary"]}
    if cnn_outputs is not None:
        summary |= {"cnn_outputs": str(cnn_outputs), "cnn_test_accuracy": cnn_accuracy}
    write_json(out_dir / "summary.json", summary)
    label = label_of_outputs(outputs)
    ee.plot_accuracy_vs_cost(result, str(out_dir / "accuracy_vs_cost"), label=label, cnn_accuracy=cnn_accuracy)
    ee.plot_exit_histogram(result, str(out_dir / "exit_histogram"), label=label)
    log.info("early-exit analysis of %s written to %s", outputs, out_dir)
    return summary
