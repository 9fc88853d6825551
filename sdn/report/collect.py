"""Gather every result file under a results folder into plain records; nothing missing is an error.

Layout read (docs/internals.md): ``{results}/{dataset}/{arch}/s{seed}/{variant}/`` with ``meta.json``,
``metrics.json`` and ``analysis/{early_exit,overthinking,confusion,calibration}/summary.json``, and the backdoor
experiment's summary from ``bd_ic_only/analysis/backdoor/summary.json`` (the backdoored SDN's folder, where the
workflow writes it), the training-set-size comparison from ``cnn_full/analysis/train_size/summary.json``. Figures
are picked up from every folder under ``analysis/`` (gradcam and backdoor included).
A missing file is recorded as absent ("not run"); an unreadable one is absent too, with a line in
``Collection.problems``. A ``metrics.json`` holding an impossible value (an accuracy outside 0..100, NaN or infinity
anywhere) is an error naming the file and the key: such numbers must never reach the report's tables.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

VARIANTS: tuple[str, ...] = ("cnn", "ic_only", "sdn", "bd_cnn", "bd_ic_only")
ANALYSES: tuple[str, ...] = ("early_exit", "overthinking", "confusion", "calibration")
BACKDOOR_SUMMARY = ("bd_ic_only", "analysis", "backdoor", "summary.json")  # under a run's s{seed} folder
TRAIN_SIZE_SUMMARY = ("cnn_full", "analysis", "train_size", "summary.json")  # likewise (sdn train-size)
SKIPPED_TOP_LEVEL = frozenset({"data", "report", "logs", "mlruns"})
FIGURE_SUFFIXES = (".png", ".pdf")
_SEED_DIR = re.compile(r"^s(\d+)$")


@dataclass(frozen=True, order=True)
class RunKey:
    """One network trained on one data set with one seed."""

    dataset: str
    arch: str
    seed: int

    @property
    def slug(self) -> str:
        return f"{self.dataset}_{self.arch}_s{self.seed}"


@dataclass
class VariantResult:
    """What exists on disk for one variant of one run; ``None`` marks a missing piece."""

    key: RunKey
    variant: str
    path: Path
    meta: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None
    analyses: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    figures: dict[str, list[Path]] = field(default_factory=dict)  # analysis folder -> figure files (png/pdf)

    def top1(self, split: str = "test") -> list[float] | None:
        """Per-exit top-1 (percent) on ``split`` from metrics.json, or None."""
        try:
            values = self.metrics["splits"][split]["top1"]  # type: ignore[index]
        except (TypeError, KeyError):
            return None
        return [float(v) for v in values] if isinstance(values, list) and values else None


@dataclass
class Collection:
    """Everything found under ``root``: variants by run and backdoor summaries by run."""

    root: Path
    variants: dict[RunKey, dict[str, VariantResult]] = field(default_factory=dict)
    backdoor: dict[RunKey, dict[str, Any] | None] = field(default_factory=dict)
    train_size: dict[RunKey, dict[str, Any] | None] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def keys(self) -> list[RunKey]:
        return sorted(set(self.variants) | set(self.backdoor) | set(self.train_size))

    def get(self, key: RunKey, variant: str) -> VariantResult | None:
        return self.variants.get(key, {}).get(variant)

    def analysis(self, key: RunKey, variant: str, name: str) -> dict[str, Any] | None:
        found = self.get(key, variant)
        return None if found is None else found.analyses.get(name)


def collect(results_dir: str | os.PathLike[str]) -> Collection:
    """Walk ``results_dir`` and read every summary it holds (tolerant of missing or broken files)."""
    root = Path(results_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"results folder not found: {root}")
    found = Collection(root=root)
    for dataset_dir in _subdirs(root):
        if dataset_dir.name in SKIPPED_TOP_LEVEL:
            continue
        for arch_dir in _subdirs(dataset_dir):
            for seed_dir in _subdirs(arch_dir):
                match = _SEED_DIR.match(seed_dir.name)
                if match is None:
                    continue
                key = RunKey(dataset_dir.name, arch_dir.name, int(match.group(1)))
                _collect_run(found, key, seed_dir)
    return found


def _collect_run(found: Collection, key: RunKey, seed_dir: Path) -> None:
    for variant in VARIANTS:
        variant_dir = seed_dir / variant
        if not variant_dir.is_dir():
            continue
        result = VariantResult(key=key, variant=variant, path=variant_dir)
        result.meta = _read(found, variant_dir / "meta.json")
        result.metrics = _read(found, variant_dir / "metrics.json")
        if result.metrics is not None:
            check_metrics(result.metrics, variant_dir / "metrics.json")
        for name in ANALYSES:
            result.analyses[name] = _read(found, variant_dir / "analysis" / name / "summary.json")
        if (variant_dir / "analysis").is_dir():
            result.figures = {d.name: _figures(d) for d in _subdirs(variant_dir / "analysis")}
        found.variants.setdefault(key, {})[variant] = result
    backdoor = seed_dir.joinpath(*BACKDOOR_SUMMARY)
    if backdoor.is_file():
        found.backdoor[key] = _read(found, backdoor)
    train_size = seed_dir.joinpath(*TRAIN_SIZE_SUMMARY)
    if train_size.is_file():
        found.train_size[key] = _read(found, train_size)


def _subdirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def _figures(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in FIGURE_SUFFIXES)


def _read(found: Collection, path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        found.problems.append(f"{path}: unreadable ({err})")
        return None
    if not isinstance(doc, dict):
        found.problems.append(f"{path}: expected a JSON object, found {type(doc).__name__}")
        return None
    return doc


class ImpossibleMetricError(ValueError):
    """A metrics file holds a value no evaluation can produce (damaged or hand-edited)."""


ACCURACY_MAX = 100.0


def _is_accuracy_key(key: str) -> bool:
    return key in {"top1", "top5"} or "accuracy" in key


def check_metrics(doc: Any, path: Path) -> None:
    """Raise ImpossibleMetricError naming ``path`` and the key of the first impossible value in ``doc``.

    Every number must be finite; accuracies (``top1``, ``top5``, keys containing ``accuracy``) are percentages in
    0..100. ``null`` is allowed (top-5 of a data set with fewer than 5 classes).
    """
    for key, value, is_accuracy in _leaves(doc, ""):
        if value is None or isinstance(value, str):
            continue
        problem = None
        if isinstance(value, bool) or not isinstance(value, int | float):
            problem = f"is a {type(value).__name__}, expected a number" if is_accuracy else None
        elif not math.isfinite(value):
            problem = "is not a finite number"
        elif is_accuracy and not 0.0 <= value <= ACCURACY_MAX:
            problem = f"is outside 0..{ACCURACY_MAX:g} (accuracies are percentages)"
        if problem is not None:
            raise ImpossibleMetricError(
                f"{path}: {key} = {value!r} {problem}; the file is damaged or was not written by `sdn evaluate`: "
                "delete it and rerun the evaluation (snakemake reruns the job that writes it)"
            )


def _leaves(tree: Any, prefix: str, is_accuracy: bool = False) -> list[tuple[str, Any, bool]]:
    """``(dotted key, value, under an accuracy key)`` for every leaf; list items as ``key[i]``."""
    if isinstance(tree, dict):
        found: list[tuple[str, Any, bool]] = []
        for key, value in tree.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            found.extend(_leaves(value, name, is_accuracy or _is_accuracy_key(str(key))))
        return found
    if isinstance(tree, list):
        return [leaf for i, item in enumerate(tree) for leaf in _leaves(item, f"{prefix}[{i}]", is_accuracy)]
    return [(prefix, tree, is_accuracy)]
