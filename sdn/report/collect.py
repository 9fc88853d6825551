"""Gather every result file under a results folder into plain records; nothing missing is an error.

Layout read (docs/internals.md): ``{results}/{dataset}/{arch}/s{seed}/{variant}/`` with ``meta.json``,
``metrics.json`` and ``analysis/{early_exit,overthinking,confusion,calibration}/summary.json``, and the backdoor
experiment's summary from ``bd_ic_only/analysis/backdoor/summary.json`` (the backdoored SDN's folder, where the
workflow writes it). Figures are picked up from every folder under ``analysis/`` (gradcam and backdoor included).
A missing file is recorded as absent ("not run"); an unreadable one is absent too, with a line in
``Collection.problems``.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

VARIANTS: tuple[str, ...] = ("cnn", "ic_only", "sdn", "bd_cnn", "bd_ic_only")
ANALYSES: tuple[str, ...] = ("early_exit", "overthinking", "confusion", "calibration")
BACKDOOR_SUMMARY = ("bd_ic_only", "analysis", "backdoor", "summary.json")  # under a run's s{seed} folder
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
    problems: list[str] = field(default_factory=list)

    @property
    def keys(self) -> list[RunKey]:
        return sorted(set(self.variants) | set(self.backdoor))

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
        for name in ANALYSES:
            result.analyses[name] = _read(found, variant_dir / "analysis" / name / "summary.json")
        if (variant_dir / "analysis").is_dir():
            result.figures = {d.name: _figures(d) for d in _subdirs(variant_dir / "analysis")}
        found.variants.setdefault(key, {})[variant] = result
    backdoor = seed_dir.joinpath(*BACKDOOR_SUMMARY)
    if backdoor.is_file():
        found.backdoor[key] = _read(found, backdoor)


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
