"""The ``sdn`` command line: one subcommand per pipeline step.

Each subcommand lives in ``sdn/commands/<name>.py`` and exposes ``NAME``, ``HELP``, ``add_arguments(parser)``
and ``run(args) -> int``. This module only collects them.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import json
import logging
import math
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

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
    "train_size",
    "gradcam",
    "predict",
    "report",
    "bench",
    "export",
    "sync_mlflow",
    "tracking_init",
    "batch",
)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows ``(default: X)`` only where there is a default worth stating and the help does not state one."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if (
            action.default in (None, False, argparse.SUPPRESS)
            or action.required
            or not action.option_strings
            or "default" in text
            or isinstance(action, argparse._VersionAction | argparse._HelpAction)
        ):
            return action.help
        return f"{text} (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """No silent abbreviations (``--epoch`` is not ``--epochs``); misspelt options and commands get suggestions."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def option_names(self) -> list[str]:
        return [name for action in self._actions for name in action.option_strings]

    def error(self, message: str) -> NoReturn:
        choice = re.search(r"invalid choice: '([^']*)'", message)
        if choice:
            action = next((a for a in self._actions if a.choices and choice.group(1) not in a.choices), None)
            if action is not None:
                message += did_you_mean(choice.group(1), [str(c) for c in action.choices])
        super().error(message)


def did_you_mean(word: str, candidates: Sequence[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest candidate (difflib), or ''."""
    close = difflib.get_close_matches(word, candidates, n=2, cutoff=0.6)
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""


def build_parser(only: str | None = None) -> Parser:
    """The ``sdn`` parser. With ``only`` (a command name), only that command's options are built: the others are
    listed by name and help, so a job does not import what other commands' options need (torch, for instance)."""
    from sdn import __version__

    parser = Parser(
        prog="sdn",
        description="Shallow-Deep Networks: train, evaluate and analyze networks with internal classifiers.",
    )
    parser.add_argument("--version", action="version", version=f"sdn {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug-level log lines")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=Parser)
    parser.commands = {}
    for module_name in COMMAND_MODULES:
        module = importlib.import_module(f"sdn.commands.{module_name}")  # a missing module is an error
        command = sub.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        if only is None or only == module.NAME:
            module.add_arguments(command)
        command.set_defaults(_run=module.run, _module=module)
        parser.commands[module.NAME] = command
    return parser


def parse(parser: Parser, argv: Sequence[str] | None) -> argparse.Namespace:
    """``parser.parse_args``, except that unknown options are reported by their command with a suggestion."""
    args, extras = parser.parse_known_args(argv)
    if extras:
        command = parser.commands.get(args.command, parser)
        nested = getattr(args, "backdoor_command", None)  # `sdn backdoor poison|analyze`
        for action in command._actions:
            if nested and isinstance(action, argparse._SubParsersAction) and nested in action.choices:
                command = action.choices[nested]
        hints = [
            f"{extra}{did_you_mean(extra.split('=', 1)[0], command.option_names())}"
            for extra in extras
            if extra.startswith("-")
        ]
        command.error(f"unrecognized arguments: {' '.join(hints or extras)}")
    return args


def requested_command(argv: Sequence[str]) -> str | None:
    """The command named on the command line (its first word that is not an option), or None."""
    return next((word for word in argv if not word.startswith("-")), None)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser(only=requested_command(sys.argv[1:] if argv is None else argv))
    args = parse(parser, argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        folder = run_folder(args)
        if folder is None:
            return run_tracked(args)
        from sdn.runlock import folder_lock
        from sdn.tracking import JOURNAL_PREFIX

        command_line = ["sdn", *(argv if argv is not None else sys.argv[1:])]
        with folder_lock(folder, command_line, scratch=[JOURNAL_PREFIX]):
            return run_tracked(args)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"sdn {args.command}: error: {err}", file=sys.stderr)
        return int(getattr(err, "exit_status", 2))  # sdn.train.TrainingDiverged: EXIT_DIVERGED


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
        model = getattr(args, "_mlflow_model", None)  # a command's MLflow model: logged and registered
        for path in sorted(out_dir.rglob("*")):
            if model is not None and Path(model["path"]) in path.parents:
                continue  # uploaded as one folder
            if path.is_file() and not path.name.startswith(".") and path.stat().st_mtime >= started - 1:
                if path.suffix in ARTIFACT_SUFFIXES:
                    run.log_artifact(path)
        if model is not None:
            run.set_tags({k: v for k, v in model["tags"].items() if k not in run.tags})
            run.log_model(model["path"])
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
        names = exit_labels(prefix.rstrip("."), len(tree))
        if names is not None:  # per-exit lists: charted together under the list's name (MLflow groups by "/")
            base = prefix.rstrip(".")
            found.update({f"{base}/{n}": float(v) for n, v in zip(names, tree, strict=True) if _number(v)})
            return found
        for index, value in enumerate(tree):
            found.update(numeric_leaves(value, f"{prefix}{index}."))
    elif _number(tree):
        found[prefix.rstrip(".")] = float(tree)
    return found


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def exit_labels(path: str, length: int) -> list[str] | None:
    """Exit names for a per-exit list in a summary (``path`` = its dotted key): ``ic1 .. final`` (key naming exits,
    or under ``per_exit``), ``ic1 .. icN`` (key ending ``_by_ic``: ICs only), else None; the same names as
    training's ``holdout/top1/ic1 .. final``."""
    parts = path.split(".")
    key = parts[-1]
    if key.endswith("_by_ic"):
        return [f"ic{i + 1}" for i in range(length)]
    if length >= 1 and key != "budgets" and ("exit" in key or "per_exit" in parts[:-1]):
        return [f"ic{i + 1}" for i in range(length - 1)] + ["final"]
    return None


if __name__ == "__main__":
    raise SystemExit(main())
