"""The jobs of a reproduction grid and their persistent state (``state.json`` in the work folder).

A job is one (arch, seed, variant) training followed by its evaluation. ``ic_only`` depends on the ``cnn`` of the
same arch and seed (its ``--parent``). Paths inside the work folder are relative, so a resumed run (possibly on
another machine, in another folder) passes ``sdn train`` the same ``--parent`` and its resume check agrees.

The backdoor experiment's variants, as in the workflow (``workflow/rules/common.smk``): ``bd_cnn`` is the CNN recipe
on the poisoned training set (``sdn backdoor poison``, in :data:`BACKDOOR_DATA`), ``bd_ic_only`` the IC-only recipe
on the clean one with ``bd_cnn`` as its parent; both are evaluated on the poisoned folder's held-out and test splits
and its triggered test splits (:data:`BACKDOOR_SPLITS`).

``cnn_full`` is the CNN recipe on every training image, as the paper trained its CNNs: its data (:data:`FULL_DATA`)
are prepared with ``--holdout-from test`` (the held-out split is carved from the test set, the rest is its test
split), so that beside the ``cnn`` of the same arch and seed it measures what the default 45,000-image training set
(5,000 held out) costs, on the test images both were tested on (``sdn train-size``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdn import io

VARIANTS = ("cnn", "ic_only", "sdn", "bd_cnn", "bd_ic_only", "cnn_full")
DEFAULT_VARIANTS = ("cnn", "ic_only", "sdn")
BACKDOOR_VARIANTS = ("bd_cnn", "bd_ic_only")
FULL_VARIANTS = ("cnn_full",)
RECIPE = {
    "cnn": "cnn",
    "ic_only": "ic_only",
    "sdn": "sdn",
    "bd_cnn": "cnn",
    "bd_ic_only": "ic_only",
    "cnn_full": "cnn",
}
PARENT = {"ic_only": "cnn", "bd_ic_only": "bd_cnn"}  # an IC-only variant trains the ICs of this variant's CNN
CHILD = {parent: child for child, parent in PARENT.items()}
# the CNNs first: they unlock their IC-only children
START_ORDER = {"cnn": 0, "bd_cnn": 0, "cnn_full": 0, "sdn": 1, "ic_only": 2, "bd_ic_only": 2}
DATA = "data"  # the prepared data folder, relative to the work folder
BACKDOOR_DATA = "data-backdoor"  # its poisoned copy (sdn backdoor poison), for the backdoor variants
FULL_DATA = "data-full"  # every training image, held-out split from the test set
FULL_PREPARE_ARGS = ("--holdout-from", "test")  # added to the grid's prepare-data options for FULL_DATA
SPLITS = ("holdout", "test")
BACKDOOR_SPLITS = ("holdout", "test", "test_triggered", "test_triggered_all")
STATE_FILE = "state.json"


@dataclass(frozen=True)
class Job:
    arch: str
    seed: int
    variant: str

    @property
    def key(self) -> str:
        return f"{self.arch}/s{self.seed}/{self.variant}"

    @property
    def run_dir(self) -> Path:
        """Relative to the work folder."""
        return Path("runs") / self.arch / f"s{self.seed}" / self.variant

    @property
    def recipe(self) -> str:
        """The ``sdn train --recipe`` of this job (its epochs are the recipe's)."""
        return RECIPE[self.variant]

    @property
    def parent(self) -> Job | None:
        return Job(self.arch, self.seed, PARENT[self.variant]) if self.variant in PARENT else None

    @property
    def child(self) -> Job | None:
        """The IC-only job whose parent this CNN is (whether or not it is in the grid)."""
        return Job(self.arch, self.seed, CHILD[self.variant]) if self.variant in CHILD else None

    @property
    def train_data(self) -> str:
        if self.variant in FULL_VARIANTS:
            return FULL_DATA
        return BACKDOOR_DATA if self.variant == "bd_cnn" else DATA

    @property
    def evaluated_on(self) -> tuple[str, tuple[str, ...]]:
        """(data folder, splits) of this job's evaluation."""
        if self.variant in FULL_VARIANTS:
            return FULL_DATA, SPLITS
        return (BACKDOOR_DATA, BACKDOOR_SPLITS) if self.variant in BACKDOOR_VARIANTS else (DATA, SPLITS)


def grid_jobs(archs: list[str], seeds: list[int], variants: tuple[str, ...] = DEFAULT_VARIANTS) -> list[Job]:
    """Every job of the grid in start order (CNNs, then SDNs, then IC-only; arch and seed order kept)."""
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; allowed: {', '.join(VARIANTS)}")
    for child, parent in PARENT.items():
        if child in variants and parent not in variants:
            raise ValueError(f"variant {child} needs {parent} in the grid (the CNN is its parent)")
    jobs = [Job(a, s, v) for a in archs for s in seeds for v in variants]
    return sorted(jobs, key=lambda j: (START_ORDER[j.variant], archs.index(j.arch), seeds.index(j.seed)))


def job_status(work: Path, job: Job, state: GridState) -> str:
    """``evaluated`` (done), ``trained`` (model.pt, no outputs yet), ``partial`` (last.pt) or ``pending``."""
    if state.job(job).get("evaluated"):
        return "evaluated"
    run = work / job.run_dir
    if (run / "model.pt").is_file():
        return "trained"
    if (run / "last.pt").is_file():
        return "partial"
    return "pending"


class GridState:
    """``state.json``: per job its time segments and whether it was evaluated (and published), its diverged attempts
    (``diverged``) and the options it was retried with (``retry_train_args``); the calls made."""

    def __init__(self, path: Path, data: dict[str, Any]) -> None:
        self.path = path
        self.data = data

    @classmethod
    def load(cls, work: str | os.PathLike[str], dataset: str) -> GridState:
        path = Path(work) / STATE_FILE
        if not path.is_file():
            return cls(path, {"dataset": dataset, "jobs": {}, "calls": []})
        try:
            data = json.loads(path.read_text())
        except ValueError as error:
            raise ValueError(f"{path} is not valid JSON ({error}); delete it to start the grid over") from None
        if data.get("dataset") != dataset:
            raise ValueError(
                f"{path} belongs to a {data.get('dataset')!r} grid, not {dataset!r}; use another work folder (WORK)"
            )
        return cls(path, data)

    def job(self, job: Job) -> dict[str, Any]:
        return self.data["jobs"].setdefault(job.key, {"segments": [], "evaluated": False})

    def add_segment(self, job: Job, segment: dict[str, Any]) -> None:
        self.job(job)["segments"].append(segment)
        self.save()

    def wall_seconds(self, job: Job, phase: str | None = None) -> float:
        """Seconds spent on ``job`` (in ``phase``) by its current attempt (diverged attempts: diverged_seconds)."""
        return sum(s["seconds"] for s in self.job(job)["segments"] if phase is None or s["phase"] == phase)

    def diverged_seconds(self, job: Job) -> float:
        """Seconds spent training the attempts of ``job`` that diverged and were started over."""
        return sum(s["seconds"] for attempt in self.job(job).get("diverged", []) for s in attempt.get("segments", []))

    def save(self) -> None:
        io.write_json(self.path, self.data)
