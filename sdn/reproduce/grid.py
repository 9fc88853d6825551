"""The jobs of a reproduction grid and their persistent state (``state.json`` in the work folder).

A job is one (arch, seed, variant) training followed by its evaluation. ``ic_only`` depends on the ``cnn`` of the
same arch and seed (its ``--parent``). Paths inside the work folder are relative, so a resumed run (possibly on
another machine, in another folder) passes ``sdn train`` the same ``--parent`` and its resume check agrees.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdn import io

VARIANTS = ("cnn", "ic_only", "sdn")
START_ORDER = {"cnn": 0, "sdn": 1, "ic_only": 2}  # the CNN first: it unlocks its IC-only child
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
    def parent(self) -> Job | None:
        return Job(self.arch, self.seed, "cnn") if self.variant == "ic_only" else None


def grid_jobs(archs: list[str], seeds: list[int], variants: tuple[str, ...] = VARIANTS) -> list[Job]:
    """Every job of the grid in start order (CNNs, then SDNs, then IC-only; arch and seed order kept)."""
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; allowed: {', '.join(VARIANTS)}")
    if "ic_only" in variants and "cnn" not in variants:
        raise ValueError("variant ic_only needs cnn in the grid (the CNN is its parent)")
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
