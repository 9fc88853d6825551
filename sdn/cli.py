"""The ``sdn`` command line: one subcommand per pipeline step.

Each subcommand lives in ``sdn/commands/<name>.py`` and exposes ``NAME``, ``HELP``, ``add_arguments(parser)``
and ``run(args) -> int``. This module only collects them.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

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
        description="Shallow-Deep Networks: train, evaluate and analyse networks with internal classifiers.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug-level log lines")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"sdn.commands.{module_name}")
        except ModuleNotFoundError as err:
            if err.name == f"sdn.commands.{module_name}":
                continue  # command not written yet
            raise
        command = sub.add_parser(
            module.NAME,
            help=module.HELP,
            description=module.HELP,
            formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        )
        module.add_arguments(command)
        command.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args._run(args) or 0)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"sdn {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
