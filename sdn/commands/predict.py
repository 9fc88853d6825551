"""``sdn predict``: early-exit predictions of a trained SDN on image files (class, exit, confidence, cost)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

NAME = "predict"
HELP = (
    "Classify image files with a trained SDN's online early exit: per image the class, the exit it stopped at, "
    "its confidence and the cost paid (fraction of the CNN). Default threshold: the one the early-exit analysis "
    "chose on the held-out split."
)


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, type=Path, help="model.pt of an SDN (IC-only or SDN)")
    parser.add_argument(
        "--images", required=True, nargs="+", type=Path, help="image files and/or folders of them (recursive)"
    )
    choice = parser.add_mutually_exclusive_group()
    choice.add_argument(
        "--threshold", type=_number, help="exit threshold (confidence/entropy: in [0, 1]; patience: integer)"
    )
    choice.add_argument(
        "--rule",
        help="use the threshold this rule of the early-exit analysis chose: tolerance (default), budget_0.5, ...",
    )
    parser.add_argument("--policy", choices=("confidence", "entropy", "patience"), help="default: confidence")
    parser.add_argument(
        "--early-exit-summary",
        type=Path,
        help="the early-exit analysis' summary.json (default: analysis/early_exit/summary.json beside the model)",
    )
    parser.add_argument("--data", type=Path, help="prepared data folder (only for checkpoints without normalisation)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of a table")


def run(args: argparse.Namespace) -> int:
    from sdn.predict import Predictor

    predictor = Predictor.load(
        args.checkpoint,
        policy=args.policy,
        threshold=args.threshold,
        rule=args.rule,
        summary=args.early_exit_summary,
        data_dir=args.data,
        device=args.device,
        batch_size=args.batch_size,
    )
    missing = [str(p) for p in args.images if not p.exists()]
    if missing:
        raise FileNotFoundError(f"--images: {', '.join(missing)} does not exist")
    predictions = predictor.predict_files(args.images)
    if not predictions:
        raise ValueError(f"--images: no files found in {', '.join(map(str, args.images))}")
    failed = [p for p in predictions if p.error is not None]
    if args.json:
        document = {
            "checkpoint": str(args.checkpoint),
            "policy": predictor.policy.record(),
            "predictions": [p.record() for p in predictions],
        }
        print(json.dumps(document, indent=2))
    else:
        policy = predictor.policy
        origin = f"{policy.rule}, {policy.source}" if policy.source else policy.rule
        print(f"# {policy.policy} threshold {policy.threshold:g} ({origin})")
        print("image\tclass\texit\tconfidence\tcost_fraction")
        for p in predictions:
            if p.error is None:
                print(f"{p.source}\t{p.class_name}\t{p.exit_name}\t{p.confidence:.4f}\t{p.cost_fraction:.4f}")
            else:
                print(f"{p.source}\terror\t-\t-\t-")
    for p in failed:
        print(f"sdn predict: error: {p.error}", file=sys.stderr)
    return 1 if failed else 0
