"""``sdn batch``: several ``sdn`` commands in one process, in order.

Each command pays Python's start-up and the import of numpy, pandas and matplotlib once instead of once per
command (about a second each on a small CPU), which is most of the time of an analysis of cached logits. The
published-mode workflow (``make paper-report``) runs the four analyses of a run this way. Each command runs exactly
as ``sdn <command line>`` would: its own output-folder lock, MLflow run and error message.

    sdn batch 'overthinking --outputs run/outputs.npz --out run/analysis/overthinking' \\
              'SDN_MLFLOW_TAGS="rule=confusion,workflow_id=${SDN_WORKFLOW_ID}" confusion --outputs ...'
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

NAME = "batch"
HELP = "run several sdn commands in one process, in order, stopping at the first that fails"
_ASSIGNMENT = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=(.*)", re.S)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "command_lines",
        nargs="+",
        metavar="COMMAND_LINE",
        help="one sdn command line per argument, as typed after `sdn` (shell-quoted as one word), optionally "
        "preceded by NAME=value environment settings for that command only ($NAME and ${NAME} in their values "
        "are expanded from the environment)",
    )


def parse_command_line(line: str) -> tuple[dict[str, str], list[str]]:
    """(environment settings, argv after ``sdn``) of one command line; ValueError when it names no command."""
    try:
        words = shlex.split(line)
    except ValueError as err:
        raise ValueError(f"cannot parse the command line {line!r}: {err}") from None
    env: dict[str, str] = {}
    while words and (match := _ASSIGNMENT.fullmatch(words[0])):
        env[match.group(1)] = os.path.expandvars(match.group(2))
        words.pop(0)
    if not words:
        raise ValueError(f"the command line {line!r} names no sdn command")
    if words[0] == NAME:
        raise ValueError(f"the command line {line!r} is itself a batch: give its command lines directly")
    return env, words


@contextmanager
def environment(settings: Mapping[str, str]) -> Iterator[None]:
    """``os.environ`` updated with ``settings`` inside the block, restored afterwards."""
    saved = {name: os.environ.get(name) for name in settings}
    os.environ.update(settings)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def run(args: argparse.Namespace) -> int:
    from sdn.cli import main

    commands = [parse_command_line(line) for line in args.command_lines]  # all checked before any runs
    for env, argv in commands:
        with environment(env):
            code = main(argv)
        if code:
            return code
    return 0
