"""``sdn profile``: parameters, MACs and paper-convention ops of an architecture's CNN and of every exit."""

from __future__ import annotations

import argparse
import json
from typing import Any

NAME = "profile"
HELP = "Print the parameters, MACs and ops (paper convention) of the CNN and of reaching every exit."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--arch",
        required=True,
        help="registered architecture, torchvision/<builder> or timm/<name> (see `sdn archs`)",
    )
    parser.add_argument("--dataset", help="cifar10, cifar100, tinyimagenet or digits (sets the input shape)")
    parser.add_argument("--input-size", type=int, help="image side in pixels (instead of --dataset)")
    parser.add_argument("--num-classes", type=int, help="number of classes (instead of --dataset)")
    parser.add_argument(
        "--exits", default="paper", help="paper | paper-original | none | cost:0.15,0.3,... | 1,3,5 (block indices)"
    )
    parser.add_argument(
        "--convention",
        default="paper",
        choices=("paper", "exact"),
        help="ops convention: 'paper' counts grouped convs like the original profiler (x groups)",
    )
    parser.add_argument("--json", action="store_true", help="print the JSON document instead of a table")


def parse_exits(text: str) -> str | list[int]:
    """A comma-separated list of integers becomes block indices; anything else is passed on as a name."""
    tokens = [t.strip() for t in text.split(",")]
    if tokens and all(t.lstrip("-").isdigit() for t in tokens):
        return [int(t) for t in tokens]
    return text


def format_table(doc: dict) -> str:
    cnn = doc["cnn"]
    lines = [
        f"{doc['arch']} on {doc['dataset'] or 'the given input size and classes'}",
        f"CNN: {cnn['params'] / 1e6:.4f} M params, {cnn['macs'] / 1e9:.4f} G MACs, {cnn['ops'] / 1e9:.4f} G ops",
        f"{'exit':>5} {'params (M)':>10}  {'MACs (G)':>9}  {'ops (G)':>9}  {'of CNN':>7}",
    ]
    last = len(doc["exits"]) - 1
    for e in doc["exits"]:
        name = "final" if e["index"] == last else str(e["index"])
        costs = f"{e['params'] / 1e6:10.4f}  {e['macs'] / 1e9:9.4f}  {e['ops'] / 1e9:9.4f}"
        lines.append(f"{name:>5} {costs}  {e['fraction']:7.1%}")
    return "\n".join(lines)


def profile_arch(
    arch: str,
    dataset: str | None,
    exits: str | list[int] | tuple[int, ...] | None = "paper",
    *,
    convention: str = "paper",
    input_size: int | None = None,
    num_classes: int | None = None,
) -> dict[str, Any]:
    """The ``sdn profile --json`` document of an architecture on a data set's input shape, or on ``input_size``
    and ``num_classes`` where given (they win over the data set's)."""
    import torch

    from sdn.data.datasets import dataset_shape
    from sdn.models import create
    from sdn.models.cost import profile_model

    if dataset is not None:
        classes, size = dataset_shape(dataset)
        num_classes = num_classes if num_classes is not None else classes
        input_size = input_size if input_size is not None else size
    if num_classes is None or input_size is None:
        raise ValueError("profile needs --dataset, or both --input-size and --num-classes")
    with torch.random.fork_rng(devices=[]):
        model = create(arch, num_classes=num_classes, input_size=input_size, exits=exits)
    cost = profile_model(model, input_size, convention=convention)  # type: ignore[arg-type]
    return {
        "arch": arch,
        "dataset": dataset,
        "cnn": cost.cnn.as_dict(),
        "exits": [e.as_dict() for e in cost.exits],
    }


def run(args: argparse.Namespace) -> int:
    doc = profile_arch(
        args.arch,
        args.dataset,
        parse_exits(args.exits),
        convention=args.convention,
        input_size=args.input_size,
        num_classes=args.num_classes,
    )
    print(json.dumps(doc, indent=2) if args.json else format_table(doc))
    return 0
