"""Checks of the workflow configuration that JSON Schema cannot express; the Snakefile runs them after validation.

* every number is finite: YAML ``.nan`` passes JSON-Schema bounds (NaN compares false to everything);
* each recipe's milestones lie in ``2..epochs`` of that recipe (the paper's epochs when ``epochs`` is null) and
  increase;
* the backdoor target is a class of the backdoor data set and the trigger lies inside its images, where the data
  set's shape is fixed (imagefolder sets are only known once prepared: ``sdn backdoor poison`` checks those).

All problems are reported at once, each naming the config key, the value and the allowed range.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

from sdn.config import PAPER_EPOCHS

# (num_classes, input_size) of the sources whose shape is fixed; kept equal to sdn.data.datasets (tested).
SOURCE_SHAPES: dict[str, tuple[int, int]] = {
    "cifar10": (10, 32),
    "cifar100": (100, 32),
    "tinyimagenet": (200, 64),
    "digits": (10, 32),
    "synthetic": (4, 32),
}


class ConfigError(ValueError):
    """The workflow configuration is invalid; the message lists every problem found."""


def check_config(config: Mapping[str, Any]) -> None:
    """Raise ConfigError listing every problem of an already schema-validated ``config``."""
    problems = [*_non_finite(config), *_milestones(config), *_backdoor(config)]
    if problems:
        raise ConfigError(
            "invalid configuration (fix these keys in the config file or --config):\n"
            + "\n".join(f"  - {p}" for p in problems)
        )


def _walk(node: Any, key: str) -> Iterator[tuple[str, Any]]:
    if isinstance(node, Mapping):
        for name, value in node.items():
            yield from _walk(value, f"{key}.{name}" if key else str(name))
    elif isinstance(node, list | tuple):
        for index, value in enumerate(node):
            yield from _walk(value, f"{key}[{index}]")
    else:
        yield key, node


def _non_finite(config: Mapping[str, Any]) -> list[str]:
    return [
        f"config key {key} = {value!r}: not a finite number (NaN and infinity are not allowed)"
        for key, value in _walk(config, "")
        if isinstance(value, float) and not math.isfinite(value)
    ]


def _milestones(config: Mapping[str, Any]) -> list[str]:
    problems = []
    for kind, recipe in (config.get("recipes") or {}).items():
        if not isinstance(recipe, Mapping) or not recipe.get("milestones"):
            continue
        milestones = recipe["milestones"]
        epochs = recipe.get("epochs") or PAPER_EPOCHS.get(kind)
        if epochs is None:
            continue
        where = f"recipes.{kind}.epochs = {epochs}" if recipe.get("epochs") else f"the paper's {epochs} epochs"
        outside = [m for m in milestones if not 2 <= m <= epochs]
        if outside:
            problems.append(
                f"config key recipes.{kind}.milestones = {milestones}: {outside} outside the schedule; "
                f"milestones must lie in 2..{epochs} ({where})"
            )
        elif list(milestones) != sorted(milestones):
            problems.append(f"config key recipes.{kind}.milestones = {milestones}: must be increasing")
    return problems


def _backdoor(config: Mapping[str, Any]) -> list[str]:
    backdoor = config.get("backdoor") or {}
    dataset = (config.get("datasets") or {}).get(backdoor.get("dataset"))
    if not backdoor.get("enabled") or not isinstance(dataset, Mapping):
        return []  # a missing backdoor data set is reported by the workflow itself
    shape = SOURCE_SHAPES.get(str(dataset.get("source")))
    if shape is None:
        return []  # imagefolder: shape known once prepared; `sdn backdoor poison` checks it then
    num_classes, input_size = shape
    name, source = backdoor["dataset"], dataset["source"]
    problems = []
    target = backdoor.get("target")
    if isinstance(target, int) and not 0 <= target < num_classes:
        problems.append(
            f"config key backdoor.target = {target}: data set {name!r} ({source}) has {num_classes} classes; "
            f"the target must lie in 0..{num_classes - 1}"
        )
    size = backdoor.get("trigger_size")
    for axis in ("x", "y"):
        position = backdoor.get(f"trigger_{axis}")
        if isinstance(size, int) and isinstance(position, int) and position + size > input_size:
            problems.append(
                f"config key backdoor.trigger_{axis} = {position} with backdoor.trigger_size = {size}: the trigger "
                f"ends at pixel {position + size} outside the {input_size}x{input_size} images of {name!r} "
                f"({source}); need trigger_{axis} + trigger_size <= {input_size}, i.e. trigger_{axis} in "
                f"0..{max(input_size - size, 0)}"
            )
    return problems


def schema_problems(config: Mapping[str, Any], schema_path: str, limit: int = 5) -> list[str]:
    """Short descriptions of ``config``'s JSON-Schema violations: the key, what is wrong, the allowed keys near it.

    For the Snakefile: Snakemake's own message prints the whole schema after the one useful line. A misspelt key
    names the keys allowed where it stands and the closest of them.
    """
    import difflib

    import jsonschema
    import yaml

    with open(schema_path) as handle:
        schema = yaml.safe_load(handle)
    validator = jsonschema.Draft202012Validator(schema)
    problems: list[str] = []
    for error in sorted(validator.iter_errors(config), key=lambda e: [str(p) for p in e.absolute_path]):
        where = ".".join(str(p) for p in error.absolute_path)
        if error.validator == "additionalProperties" and isinstance(error.instance, Mapping):
            allowed = sorted(error.schema.get("properties", {}))
            for key in sorted(set(error.instance) - set(allowed), key=str):
                name = f"{where}.{key}" if where else str(key)
                close = difflib.get_close_matches(str(key), allowed, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                problems.append(f"unknown config key {name!r}{hint}; allowed here: {', '.join(allowed)}")
        else:
            message = error.message if len(error.message) <= 200 else error.message[:197] + "..."
            problems.append(f"config key {where or '(top level)'!r}: {message}")
    if len(problems) > limit:
        problems = [*problems[:limit], f"... and {len(problems) - limit} more"]
    return problems
