"""The ``sdn`` command line: one subcommand per pipeline step.

Each subcommand lives in ``sdn/commands/<name>.py`` and exposes ``NAME``, ``HELP``, ``add_arguments(parser)``
and ``run(args) -> int``. This module only collects them.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

COMMAND_MODULES = (
    "archs",
    "profile",
    "prepare_data",
    "train",
    "evaluate",
    "early_exit",
    "overthinking",
    "confusion",
    "calibration",
    "backdoor",
    "gradcam",
    "report",
    "bench",
    "sync_mlflow",
    "tracking_init",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sdn",
        description="Shallow-Deep Networks: train, evaluate and analyze networks with internal classifiers.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug-level log lines")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in COMMAND_MODULES:
        module = importlib.import_module(f"sdn.commands.{module_name}")  # a missing module is an error
        command = sub.add_parser(
            module.NAME,
            help=module.HELP,
            description=module.HELP,
            formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        )
        module.add_arguments(command)
        command.set_defaults(_run=module.run, _module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        folder = run_folder(args)
        if folder is None:
            return run_tracked(args)
        from sdn.runlock import folder_lock

        with folder_lock(folder, ["sdn", *(argv if argv is not None else sys.argv[1:])]):
            return run_tracked(args)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"sdn {args.command}: error: {err}", file=sys.stderr)
        return 2


def run_tracked(args: argparse.Namespace) -> int:
    """Run the command as one tracked job (an MLflow run when tracking is configured).

    Commands that track themselves in finer detail (per-epoch metrics: ``TRACKS_ITSELF = True``) and commands
    without an output folder are run as they are. For the others the run records the parsed options as params,
    the numbers of the ``summary.json`` written as metrics, and the files written into the output folder as
    artifacts.
    """
    module = args._module
    out_dir = tracked_out_dir(args)
    if getattr(module, "TRACKS_ITSELF", False) or out_dir is None:
        return int(args._run(args) or 0)
    from sdn.tracking import track

    params = {k: v for k, v in vars(args).items() if not k.startswith("_") and k != "verbose"}
    name = "-".join(str(p) for p in (args.command, getattr(args, "backdoor_command", None)) if p)
    started = time.time()
    with track(name, params=params, out_dir=out_dir) as run:
        code = int(args._run(args) or 0)
        summary = out_dir / "summary.json"
        if summary.is_file() and summary.stat().st_mtime >= started - 1:
            run.log_metrics(numeric_leaves(json.loads(summary.read_text())))
        for path in sorted(out_dir.rglob("*")):
            if path.is_file() and not path.name.startswith(".") and path.stat().st_mtime >= started - 1:
                if path.suffix in ARTIFACT_SUFFIXES:
                    run.log_artifact(path)
        run.set_tags({"exit_code": code})
    return code


ARTIFACT_SUFFIXES = {".png", ".pdf", ".csv", ".md", ".json"}


def tracked_out_dir(args: argparse.Namespace) -> Path | None:
    """The folder a command writes into: its ``--out`` (``report``: RESULTS/report by default)."""
    out = getattr(args, "out", None)
    if out is None and args.command == "report" and getattr(args, "results", None) is not None:
        if not Path(args.results).is_dir():
            return None  # nothing to report on: let the command say so, without creating folders first
        out = Path(args.results) / "report"
    return Path(out) if out is not None else None


FILE_OUT_COMMANDS = frozenset({"evaluate"})  # their --out is a file: the folder is its parent


def run_folder(args: argparse.Namespace) -> Path | None:
    """The folder whose run lock the command holds while it runs (its output folder), or None."""
    out = tracked_out_dir(args)
    if out is None:
        return None
    return out.parent if args.command in FILE_OUT_COMMANDS else out


def numeric_leaves(tree: object, prefix: str = "") -> dict[str, float]:
    """Flatten the numbers of a JSON document into ``{"a.b.c": value}`` (booleans, strings and nulls skipped)."""
    found: dict[str, float] = {}
    if isinstance(tree, dict):
        for key, value in tree.items():
            found.update(numeric_leaves(value, f"{prefix}{key}."))
    elif isinstance(tree, list):
        for index, value in enumerate(tree):
            found.update(numeric_leaves(value, f"{prefix}{index}."))
    elif isinstance(tree, int | float) and not isinstance(tree, bool) and math.isfinite(tree):
        found[prefix.rstrip(".")] = float(tree)
    return found


if __name__ == "__main__":
    raise SystemExit(main())
