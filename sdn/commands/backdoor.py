"""``sdn backdoor poison|analyze``: BadNets-poisoned data, then the backdoored CNN vs its IC-only SDN."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import pandas as pd

log = logging.getLogger(__name__)

NAME = "backdoor"
HELP = "Backdoor experiment: 'poison' writes BadNets-poisoned prepared data, 'analyze' measures the SDN's defence."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from sdn.analysis.early_exit import DEFAULT_TOLERANCE, FALLBACKS, POLICIES

    sub = parser.add_subparsers(dest="backdoor_command", metavar="STEP", required=True)
    formatter = argparse.ArgumentDefaultsHelpFormatter

    poison = sub.add_parser(
        "poison", help="write a poisoned copy of a prepared data folder", formatter_class=formatter
    )
    poison.add_argument("--data", required=True, help="clean prepared data folder (sdn prepare-data)")
    poison.add_argument("--out", required=True, help="folder for the poisoned prepared data")
    poison.add_argument("--target", type=int, default=5, help="class the trigger flips to")
    poison.add_argument("--rate", type=float, default=0.1, help="fraction of the training split poisoned")
    poison.add_argument(
        "--trigger-size", type=int, default=None, help="side in pixels (default 5, scaled from 32x32 images)"
    )
    poison.add_argument("--trigger-x", type=int, default=None, help="left column (default 26, scaled from 32x32)")
    poison.add_argument("--trigger-y", type=int, default=None, help="top row (default 26, scaled from 32x32)")
    poison.add_argument("--trigger-value", type=int, default=255, help="uint8 value of the square on every channel")
    poison.add_argument("--seed", type=int, default=0, help="seed choosing the poisoned samples")
    poison.set_defaults(_backdoor=run_poison)

    analyze = sub.add_parser(
        "analyze", help="clean accuracy, attack success, per-exit and early-exit accuracy", formatter_class=formatter
    )
    analyze.add_argument("--cnn-outputs", required=True, help="outputs.npz of the backdoored CNN (sdn evaluate)")
    analyze.add_argument("--sdn-outputs", required=True, help="outputs.npz of its IC-only SDN (sdn evaluate)")
    analyze.add_argument("--out", required=True, help="folder for summary.json, per_exit.csv, backdoor.{png,pdf}")
    analyze.add_argument("--target", type=int, default=5, help="the backdoor's target class")
    analyze.add_argument("--policy", choices=POLICIES, default="confidence", help="early-exit policy")
    analyze.add_argument("--fallback", choices=FALLBACKS, default="final", help="answer when no IC exits")
    analyze.add_argument(
        "--tolerance",
        type=float,
        default=DEFAULT_TOLERANCE,
        help="threshold rule: clean holdout accuracy >= final head's minus this many points",
    )
    analyze.set_defaults(_backdoor=run_analyze)


def run(args: argparse.Namespace) -> int:
    return int(args._backdoor(args))


def run_poison(args: argparse.Namespace) -> int:
    from sdn.data import load_prepared
    from sdn.data.backdoor import resolve_trigger, write_poisoned

    info = load_prepared(args.data).info
    trigger = resolve_trigger(
        int(info.input_size), args.trigger_size, args.trigger_x, args.trigger_y, args.trigger_value
    )
    write_poisoned(args.data, args.out, trigger=trigger, target=args.target, rate=args.rate, seed=args.seed)
    return 0


def write_analysis(result: Any, out_dir: str | Path, label: str | None = None) -> list[Path]:
    """summary.json, per_exit.csv and backdoor.{png,pdf} of a :class:`BackdoorResult` under ``out_dir``."""
    from sdn.analysis.backdoor import backdoor_figure
    from sdn.io import write_json, write_text
    from sdn.report.plots import savefig

    out = Path(out_dir)
    write_json(out / "summary.json", result.summary())
    write_text(out / "per_exit.csv", pd.DataFrame(result.per_exit_rows()).to_csv(index=False))
    figures = savefig(backdoor_figure(result), out / "backdoor", label=label)
    return [out / "summary.json", out / "per_exit.csv", *figures]


def run_analyze(args: argparse.Namespace) -> int:
    from sdn.analysis.backdoor import analyze
    from sdn.outputs import load as load_outputs

    result = analyze(
        load_outputs(args.cnn_outputs),
        load_outputs(args.sdn_outputs),
        target=args.target,
        policy=args.policy,
        tolerance=args.tolerance,
        fallback=args.fallback,
    )
    from sdn.report.labels import label_of_outputs

    write_analysis(result, args.out, label_of_outputs(args.sdn_outputs))
    log.info(
        "CNN: clean %.2f%%, triggered %.2f%%, attack success %.2f%%; early exit on triggered: %.2f%% (q=%g)",
        result.cnn_clean_accuracy,
        result.cnn_triggered_accuracy,
        result.cnn_attack_success,
        result.early_exit_triggered.accuracy,
        result.threshold,
    )
    return 0
