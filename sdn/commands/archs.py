"""``sdn archs``: list the registered architectures."""

from __future__ import annotations

import argparse

NAME = "archs"
HELP = "List the registered architectures with their paper exit positions."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    del parser


def run(args: argparse.Namespace) -> int:
    del args
    from sdn.models import get_spec, list_archs

    for name in list_archs():
        spec = get_spec(name)
        print(f"{name:12s} exits after blocks {list(spec.paper_exits)}  {spec.description}")
    return 0
