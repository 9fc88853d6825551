"""Run a reproduction grid on one machine within a time budget (command line: :mod:`sdn.reproduce.cli`, used by
``scripts/gpu-reproduce.sh``).

Steps: extract the JPEG archive and ``sdn prepare-data`` it into ``WORK/data``; run every job of the grid
(``sdn train`` then ``sdn evaluate``, ``ic_only`` after its ``cnn``; with ``--jobs 1`` each CNN's evaluation and
IC-only training right after it), ``--jobs`` at once; at ``--budget-s`` minus
``--reserve-s`` stop the running ones (SIGTERM: a trainer keeps its ``last.pt`` of the last finished epoch and
resumes from it on the next call) and start nothing new; publish every evaluated run
(:mod:`sdn.reproduce.publish`) and pack, in ``OUT``:

- ``published.tar.NN``: ``reproduction/<dataset>/<arch>/s<seed>/<variant>/`` of the runs finished so far, plus
  ``reproduction/<dataset>/grid-<cpu|cuda>[-<name>].json`` (the grid's summary, named by the kind of device of its
  first call, so that a CPU grid and a GPU grid of one data set are both kept);
- ``resume.tar.NN``: ``state.json``, the ``last.pt`` of unfinished jobs (whole, or where that does not fit, its
  weights only under ``carry/``: the optimizer's state restarts on resume, recorded as ``optimizer_state_reset``)
  and the ``model.pt`` of trained but not yet evaluated jobs and of CNNs whose IC-only child is unfinished
  (``--resume-from`` unpacks it on the next call);
- ``models.tar.NN``, in the files left: ``checkpoints/<dataset>/<arch>/s<seed>/<variant>/model.pt`` of finished
  runs (SDN training first, then IC-only, then CNN; those not sent by an earlier call first), so that a trained SDN
  comes back to be deployed and timed (checkpoints stay out of git: ingest checks each against its run's
  provenance and puts it in the ignored ``checkpoints/``);
- ``grid.json`` (every job's status and wall times, the grid's wall time) and ``runner.log``.

At most ``--max-files`` files of at most ``--part-mib`` MiB each (the device tool returns 8 of 16 MiB), the resume
pack at most ``--resume-max-mib`` (default: what a call can carry in beside the archive, :mod:`sdn.reproduce.plan`);
checkpoints that do not fit are left out, least training time per byte first, and listed in ``grid.json`` (those
jobs start over).

Jobs whose checkpoint could never be carried, not even its weights (VGG-16-BN's), start first in a call, and
one is not started when its epoch times, measured in this grid (``progress.json`` of ``sdn train``), say it cannot
finish (with its evaluation, and a CNN's IC-only child) before the call ends; the slot goes to a job that can resume.

A training that diverges (``sdn train`` exits with :data:`sdn.train.EXIT_DIVERGED`) starts over once from scratch with
``--diverged-retry-args`` added (default ``--clip-grad-norm 1``: WRN-32-4's SDN training at the paper's lr 0.1 can
diverge); the diverged attempt is kept in ``state.json`` and in the run's provenance, and the report lists the
recipe's deviation from the paper's. A second divergence fails the job.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import IO, Any

from sdn import checkpoint, io
from sdn.config import PAPER_EPOCHS
from sdn.progress import read_progress, typical_epoch_seconds
from sdn.reproduce import pack, plan, publish
from sdn.reproduce.grid import (
    BACKDOOR_DATA,
    BACKDOOR_VARIANTS,
    DATA,
    DEFAULT_VARIANTS,
    FULL_DATA,
    FULL_PREPARE_ARGS,
    FULL_VARIANTS,
    STATE_FILE,
    GridState,
    Job,
    grid_jobs,
    job_status,
)
from sdn.train import EXIT_DIVERGED

log = logging.getLogger("sdn.reproduce")
REPO = Path(__file__).resolve().parents[2]
STOP_GRACE_S = 15.0
MEASURE_EVERY_S = 5.0  # how often the running jobs' progress.json is read
FALLBACK_JOBS = 3  # JOBS=auto when the measurement fails
# CIFAR-100's dense float16 logits take about 21 MB a run: too much for the return limits and the published folder
DEFAULT_TOP_K = {"cifar100": 10}
# Added to a diverged training's options when it starts over (not in the paper; recorded in the recipe and provenance)
DIVERGED_RETRY_ARGS = ("--clip-grad-norm", "1")
_DIVERGED_AT = re.compile(r"at epoch (\d+) step (\d+) \(of (\d+)\)")
# where the resume pack holds the weights-only last.pt of jobs whose whole one did not fit (relative to WORK)
WEIGHTS_ONLY_DIR = "carry"
# where models.tar's members are staged (relative to WORK)
MODELS_STAGING_DIR = "models-out"
# which finished checkpoints come back first when not all fit: the trained SDNs are the ones deployed
MODEL_PRIORITY = {"sdn": 0, "ic_only": 1, "cnn": 2}  # then the others (backdoor runs, cnn_full)


@dataclass
class Settings:
    out: Path
    dataset: str
    archs: list[str]
    seeds: list[int]
    work: Path
    archive: Path | None
    device: str = "cuda"
    jobs: int = 3
    budget_s: float = 3600.0
    reserve_s: float = 30.0
    epochs: dict[str, int] = field(default_factory=lambda: dict(PAPER_EPOCHS))  # by recipe
    batch_size: int = 128
    variants: tuple[str, ...] = DEFAULT_VARIANTS
    prepare_args: list[str] = field(default_factory=list)
    poison_args: list[str] = field(default_factory=list)  # extra `sdn backdoor poison` options (backdoor variants)
    train_args: list[str] = field(default_factory=list)
    part_mib: float = 16.0
    max_files: int = 8
    resume_max_mib: float | None = None  # None: plan.resume_budget_mib(archive), what a call carries in beside it
    resume_from: Path | None = None
    restart: list[str] = field(default_factory=list)  # job keys to start over (files and state removed)
    diverged_retry_args: list[str] = field(default_factory=lambda: list(DIVERGED_RETRY_ARGS))  # []: no retry
    python: str = sys.executable
    top_k: int | None = None  # publish only each row's k largest logits (None: all, float16)
    auto_candidates: tuple[int, ...] = (1, 2, 3, 4)  # job counts measured when jobs == 0 (JOBS=auto)
    auto_seconds: float = 6.0
    grid_name: str | None = None  # grid-<device>-<name>.json: several grids of a data set on one kind of device


@dataclass
class Running:
    job: Job
    phase: str  # train | evaluate
    process: subprocess.Popen[bytes]
    started: float
    started_at: str
    log_file: IO[bytes]
    epochs_before: int  # the epochs its run had finished when it started (progress.json; 0 where there is none)


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class Runner:
    def __init__(self, settings: Settings) -> None:
        self.s = settings
        self.work = settings.work
        self.start = time.monotonic()
        self.stop_at = self.start + settings.budget_s - settings.reserve_s
        self.failed: dict[str, str] = {}
        self.stop_requested = False  # set by SIGTERM/SIGINT: stop like at the end of the budget
        self.running: dict[str, Running] = {}
        self.slots = max(settings.jobs, 1)  # jobs at once (resolved in run() when settings.jobs is 0: auto)
        self.jobs = grid_jobs(settings.archs, settings.seeds, settings.variants)
        given = settings.resume_max_mib
        self.resume_mib = given if given is not None else plan.resume_budget_mib(settings.archive)
        self.carryable: dict[str, bool] = {}  # per arch (plan_carry(), once the data are prepared); absent: True
        self.not_started: set[str] = set()  # jobs held back in this call because they would not finish
        self.measured_at = 0.0
        self.work.mkdir(parents=True, exist_ok=True)
        if settings.resume_from is not None and (self.work / STATE_FILE).is_file():
            log.warning("%s already holds a grid state: --resume-from %s ignored", self.work, settings.resume_from)
        elif settings.resume_from is not None:
            names = pack.unpack(settings.resume_from, "resume", self.work)
            log.info("unpacked %d files from %s/resume.tar.*", len(names), settings.resume_from)
        self.state = GridState.load(self.work, settings.dataset)
        self.adopt_weights_only()
        self.restart(settings.restart)
        self.call: dict[str, Any] = {
            "started": now_iso(),
            "settings": _plain_settings(settings),
            "resume_max_mib": round(self.resume_mib, 1),
        }
        self.state.data["calls"].append(self.call)
        self.state.save()

    @cached_property
    def code(self) -> dict[str, Any]:
        """This call's code version, read once: in its record in state.json, its summary and what it publishes."""
        return publish.code_version(REPO)

    def restart(self, keys: list[str]) -> None:
        """Remove the run folders and state of the jobs ``keys`` (e.g. a diverged run to retry with other options)."""
        by_key = {job.key: job for job in self.jobs}
        unknown = [key for key in keys if key not in by_key]
        if unknown:
            raise ValueError(f"--restart: {unknown} are not jobs of this grid (e.g. {self.jobs[0].key})")
        for key in keys:
            shutil.rmtree(self.work / by_key[key].run_dir, ignore_errors=True)
            self.state.data["jobs"].pop(key, None)
            log.info("restart %s: its files and state removed", key)
        if keys:
            self.state.save()

    def adopt_weights_only(self) -> None:
        """Put each weights-only ``last.pt`` that came in the resume pack into its run, where there is no whole one
        (a warm work folder keeps its own), and record that the job's optimizer state restarts at that epoch."""
        for job in self.jobs:
            entry = self.state.data["jobs"].get(job.key)
            carried = entry.pop("carried_weights_only", None) if entry else None
            copy = self.work / WEIGHTS_ONLY_DIR / job.run_dir / checkpoint.LAST
            target = self.work / job.run_dir / checkpoint.LAST
            if carried is not None and copy.is_file() and not target.is_file():
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(copy, target)
                entry.setdefault("optimizer_state_reset", []).append(carried)  # type: ignore[union-attr]
                log.info("%s resumes from the weights of epoch %s (its optimizer state was too large to carry)",
                         job.key, carried.get("epoch", "?"))  # fmt: skip
        shutil.rmtree(self.work / WEIGHTS_ONLY_DIR, ignore_errors=True)
        self.state.save()

    # ------------------------------------------------------------------ data
    def data_folders(self) -> list[tuple[str, str, list[str]]]:
        """``(folder, state key, prepare-data options)`` of every prepared data folder the grid's jobs need:
        :data:`DATA` always (its meta.json sizes the resume pack), :data:`FULL_DATA` for the ``cnn_full`` jobs."""
        folders = [(DATA, "prepared", self.folder_prepare_args(full=False))]
        if any(job.variant in FULL_VARIANTS for job in self.jobs):
            folders.append((FULL_DATA, "prepared_full", self.folder_prepare_args(full=True)))
        return folders

    def folder_prepare_args(self, *, full: bool) -> list[str]:
        """The ``sdn prepare-data`` options of :data:`DATA`, or with ``full`` of :data:`FULL_DATA`."""
        return [*self.s.prepare_args, *(FULL_PREPARE_ARGS if full else ())]

    def prepare_args_of(self, job: Job) -> list[str]:
        """The ``sdn prepare-data`` options of the data ``job`` trained on (in its provenance)."""
        return self.folder_prepare_args(full=job.variant in FULL_VARIANTS)

    def prepare_data(self) -> None:
        """Extract the archive once and ``sdn prepare-data`` each folder of :meth:`data_folders` not prepared yet
        with the same archive and options (the state records each folder's request)."""
        started = time.monotonic()
        if self.s.archive is None or not self.s.archive.is_file():
            raise FileNotFoundError(
                f"CIFAR JPEG archive {self.s.archive} not found (ARCHIVE=path/to/<dataset>-jpeg.tar.gz)"
            )
        digest = publish.sha256_file(self.s.archive)
        todo = []
        for folder, key, args in self.data_folders():
            request = {"archive": self.s.archive.name, "sha256": digest, "prepare_args": args}
            if (self.work / folder / "meta.json").is_file() and self.state.data.get(key) == request:
                log.info("data already prepared in %s (same archive and options)", self.work / folder)
            else:
                todo.append((folder, key, args, request))
        if not todo:
            return
        raw = self.work / "raw"
        shutil.rmtree(raw, ignore_errors=True)
        raw.mkdir()
        try:
            with tarfile.open(self.s.archive) as tar:
                tar.extractall(raw, filter="data")
            roots = sorted(p.parent for p in raw.glob("**/train") if (p.parent / "test").is_dir())
            if not roots:
                raise FileNotFoundError(
                    f"{self.s.archive} holds no <root>/train and <root>/test folders (ImageFolder layout)"
                )
            for folder, key, args, request in todo:
                command = [self.s.python, "-m", "sdn", "prepare-data", "--dataset", "imagefolder"]
                command += ["--data-root", str(roots[0]), "--out", folder, *args]
                with open(self.work / "logs" / "prepare.log", "ab") as handle:
                    rc = subprocess.run(
                        command, cwd=self.work, env=_env(), stdout=handle, stderr=subprocess.STDOUT
                    ).returncode
                if rc != 0 or not (self.work / folder / "meta.json").is_file():
                    log_file = self.work / "logs" / "prepare.log"
                    raise RuntimeError(f"sdn prepare-data --out {folder} failed (rc {rc}); see {log_file}")
                self.state.data[key] = request
                if folder == DATA:
                    self.state.data.pop("poisoned", None)  # made from the data just replaced
                self.state.save()
        finally:
            shutil.rmtree(raw, ignore_errors=True)
        self.call["prepare_s"] = round(time.monotonic() - started, 1)
        self.state.save()
        log.info("data prepared in %.0f s", self.call["prepare_s"])

    def poison_data(self) -> None:
        """The backdoor variants' poisoned copy of the prepared data, once per prepared data: ``sdn backdoor poison``
        with its defaults (those of ``config/reproduction.yaml``: target class 5, 10% of the training set, a white
        5x5 square at (26, 26)) and ``poison_args``."""
        if not any(job.variant in BACKDOOR_VARIANTS for job in self.jobs):
            return
        poisoned = self.work / BACKDOOR_DATA
        request = {"from": self.state.data.get("prepared"), "poison_args": self.s.poison_args}
        if (poisoned / "meta.json").is_file() and self.state.data.get("poisoned") == request:
            log.info("poisoned data already in %s", poisoned)
            return
        started = time.monotonic()
        shutil.rmtree(poisoned, ignore_errors=True)
        command = [self.s.python, "-m", "sdn", "backdoor", "poison", "--data", DATA, "--out", BACKDOOR_DATA,
                   *self.s.poison_args]  # fmt: skip
        with open(self.work / "logs" / "poison.log", "ab") as handle:
            rc = subprocess.run(
                command, cwd=self.work, env=_env(), stdout=handle, stderr=subprocess.STDOUT
            ).returncode
        if rc != 0 or not (poisoned / "meta.json").is_file():
            raise RuntimeError(f"sdn backdoor poison failed (rc {rc}); see {self.work / 'logs' / 'poison.log'}")
        self.state.data["poisoned"] = request
        self.call["poison_s"] = round(time.monotonic() - started, 1)
        self.state.save()
        log.info("backdoor data poisoned in %.0f s", self.call["poison_s"])

    # ------------------------------------------------------------------ concurrency
    def resolve_jobs(self) -> int:
        """``jobs`` as given, or (0: auto) the count measured once per grid and kept in state.json."""
        if self.s.jobs > 0:
            return self.s.jobs
        known = self.state.data.get("jobs_auto")
        if known:
            log.info("jobs at once: %d (measured earlier: %s)", known["chosen"], known["rates"])
            return int(known["chosen"])
        out = self.work / "logs" / "concurrency.json"
        command = [self.s.python, "-m", "sdn.reproduce.concurrency", "--arch", self.s.archs[0],
                   "--device", self.s.device, "--candidates", ",".join(map(str, self.s.auto_candidates)),
                   "--seconds", str(self.s.auto_seconds), "--batch-size", str(self.s.batch_size),
                   "--json-out", str(out)]  # fmt: skip
        started = time.monotonic()
        try:
            with open(self.work / "logs" / "concurrency.log", "ab") as handle:
                subprocess.run(command, env=_env(), stdout=handle, stderr=subprocess.STDOUT, check=True,
                               timeout=max(self.stop_at - time.monotonic(), 1.0))  # fmt: skip
            doc = json.loads(out.read_text())
        except (OSError, ValueError, subprocess.SubprocessError) as error:
            log.warning("measuring the jobs at once failed (%s); using %d", error, FALLBACK_JOBS)
            return FALLBACK_JOBS
        doc["seconds"] = round(time.monotonic() - started, 1)
        self.state.data["jobs_auto"] = doc
        self.state.save()
        log.info("jobs at once: %d (aggregate images/s by jobs: %s; measured in %.0f s)", doc["chosen"],
                 doc["rates"], doc["seconds"])  # fmt: skip
        return int(doc["chosen"])

    # ------------------------------------------------------------------ what fits
    def plan_carry(self) -> None:
        """Which archs' stopped jobs can resume in the next call (their last.pt fits in the resume pack)."""
        meta = io.read_json(self.work / "data" / "meta.json")
        self.carryable = plan.carryable_archs(
            self.s.archs, int(meta["num_classes"]), int(meta["input_size"]), self.resume_mib
        )
        self.call["carryable"] = self.carryable
        held = [arch for arch, ok in self.carryable.items() if not ok]
        if held:
            log.info("resume pack at most %.0f MiB: the jobs of %s cannot resume in another call; they start first, "
                     "and only when they can finish", self.resume_mib, ", ".join(held))  # fmt: skip

    def start_order(self) -> list[Job]:
        """The jobs in the order they are offered a slot: those that cannot be carried first; with one slot, then the
        evaluations of finished trainings and the IC-only trainings (each ready once its CNN is), so that a finished
        CNN's short work is published before the next long training starts and its ``model.pt`` need not be carried
        to the next call (the order cannot change one slot's total time); stable otherwise. With several slots the
        long trainings start first (the grid's order), which keeps the makespan short."""
        serial = self.slots == 1

        def key(job: Job) -> tuple[bool, int]:
            if not serial:
                return self.carryable.get(job.arch, True), 0
            if job_status(self.work, job, self.state) == "trained":
                rank = 0
            else:
                rank = 1 if job.parent is not None else 2
            return self.carryable.get(job.arch, True), rank

        return sorted(self.jobs, key=key)

    def measure(self, force: bool = False) -> None:
        """Record in state.json each running training's typical epoch wall time (from its progress.json)."""
        if not force and time.monotonic() - self.measured_at < MEASURE_EVERY_S:
            return
        self.measured_at = time.monotonic()
        changed = False
        for item in self.running.values():
            progress = read_progress(self.work / item.job.run_dir) if item.phase == "train" else None
            seconds = typical_epoch_seconds(progress["epoch_wall_s"]) if progress else None
            if seconds is not None and self.state.job(item.job).get("epoch_wall_s") != round(seconds, 3):
                self.state.job(item.job)["epoch_wall_s"] = round(seconds, 3)
                changed = True
        if changed:
            self.state.save()

    def measured_epoch_seconds(self) -> dict[tuple[str, str], float]:
        """{(arch, recipe): seconds per epoch} measured in this grid (the slowest seed and variant)."""
        measured: dict[tuple[str, str], float] = {}
        for job in self.jobs:
            seconds = self.state.job(job).get("epoch_wall_s")
            if seconds:
                key = (job.arch, job.recipe)
                measured[key] = max(measured.get(key, 0.0), float(seconds))
        return measured

    def seconds_needed(self, job: Job) -> float | None:
        """About how long ``job`` needs to train from where it is and be evaluated, plus, for a CNN, its IC-only
        child (its model.pt cannot be carried either); None where nothing of its arch is measured yet."""
        measured = self.measured_epoch_seconds()
        per_epoch = plan.epoch_seconds(measured, job.arch, job.recipe)
        if per_epoch is None:
            return None
        progress = read_progress(self.work / job.run_dir)
        done = progress["epoch"] if progress and (self.work / job.run_dir / "last.pt").is_file() else 0
        needed = (max(self.s.epochs[job.recipe] - done, 0) + 1) * per_epoch  # + about an epoch to evaluate
        child = job.child
        if child in self.jobs and job_status(self.work, child, self.state) != "evaluated":
            child_epoch = plan.epoch_seconds(measured, job.arch, child.recipe)
            needed += (self.s.epochs[child.recipe] + 1) * (child_epoch or 0.0)
        return needed

    def fits(self, job: Job) -> bool:
        """False for a job that cannot be carried to the next call and would not finish in this one."""
        if self.carryable.get(job.arch, True):
            return True
        needed = self.seconds_needed(job)
        left = self.stop_at - time.monotonic()
        if needed is None or needed <= left:
            return True
        if job.key not in self.not_started:
            self.not_started.add(job.key)
            log.info("not starting %s: it needs about %.0f s at the epoch times measured so far, %.0f s are left, "
                     "and it cannot resume in another call", job.key, needed, left)  # fmt: skip
        return False

    # ------------------------------------------------------------------ jobs
    def command(self, job: Job, phase: str) -> list[str]:
        run = job.run_dir.as_posix()
        if phase == "evaluate":
            data, splits = job.evaluated_on
            return [self.s.python, "-m", "sdn", "evaluate", "--checkpoint", f"{run}/model.pt", "--data", data,
                    "--splits", ",".join(splits), "--out", f"{run}/outputs.npz",
                    "--device", self.s.device]  # fmt: skip
        command = [self.s.python, "-m", "sdn", "train", "--recipe", job.recipe, "--arch", job.arch,
                   "--data", job.train_data, "--out", run, "--seed", str(job.seed), "--device", self.s.device,
                   "--epochs", str(self.s.epochs[job.recipe]), "--batch-size", str(self.s.batch_size)]  # fmt: skip
        if job.parent is not None:
            command += ["--parent", f"{job.parent.run_dir.as_posix()}/model.pt"]
        return command + self.train_args(job)

    def train_args(self, job: Job) -> list[str]:
        """The extra ``sdn train`` options of ``job``: the grid's, then those of a retry after a divergence."""
        return [*self.s.train_args, *self.state.job(job).get("retry_train_args", [])]

    def log_path(self, job: Job) -> Path:
        return self.work / "logs" / f"{job.arch}_s{job.seed}_{job.variant}.log"

    def retry_diverged(self, job: Job) -> bool:
        """After ``job``'s training diverged: record the attempt and, the first time, start the job over with
        ``diverged_retry_args`` (True). False when it is not retried (no retry args, or it diverged on a retry)."""
        entry = self.state.job(job)
        attempt: dict[str, Any] = {"train_args": self.train_args(job)}
        log_file = self.log_path(job)
        found = _DIVERGED_AT.findall(log_file.read_text(errors="replace")) if log_file.is_file() else []
        if found:
            attempt.update(zip(("epoch", "step", "steps"), map(int, found[-1]), strict=True))
        entry.setdefault("diverged", []).append(attempt)
        retry = bool(self.s.diverged_retry_args) and "retry_train_args" not in entry
        if retry:  # the attempt's time moves out of the job's own wall time (GridState.diverged_seconds)
            attempt["segments"], entry["segments"] = entry["segments"], []
            entry["retry_train_args"] = list(self.s.diverged_retry_args)
            entry.pop("epochs_done", None)
            shutil.rmtree(self.work / job.run_dir, ignore_errors=True)
            log.warning("DIVERGED %s (epoch %s step %s): starting it over with %s", job.key,
                        attempt.get("epoch", "?"), attempt.get("step", "?"),
                        shlex.join(self.s.diverged_retry_args))  # fmt: skip
        self.state.save()
        return retry

    def ready(self, job: Job) -> str | None:
        """The phase ``job`` can start now, or None."""
        if job.key in self.running or job.key in self.failed:
            return None
        status = job_status(self.work, job, self.state)
        if status == "evaluated" and not self.parent_lost(job):
            return None
        if status == "trained":
            return "evaluate"
        parent = job.parent
        if parent is not None and (
            parent.key in self.running or not (self.work / parent.run_dir / "model.pt").is_file()
        ):
            return None
        return "train" if self.fits(job) else None

    def parent_lost(self, job: Job) -> bool:
        """A finished CNN whose model.pt did not come with the resume pack while its IC-only child still needs it:
        it is trained again (and published again: ingest the calls in order). Resets its state when so."""
        child = job.child
        if child not in self.jobs or job_status(self.work, child, self.state) == "evaluated":
            return False
        if (self.work / job.run_dir / "model.pt").is_file():
            return False
        log.warning("%s is finished but its model.pt was not carried to this call (too large for the resume pack), "
                    "and %s needs it: training it again", job.key, child.key)  # fmt: skip
        entry = self.state.job(job)
        entry["evaluated"] = False
        entry["published"] = False
        entry.pop("epochs_done", None)
        self.state.save()
        return True

    def launch(self, job: Job, phase: str) -> None:
        before = self.epochs_finished(job)
        (self.work / job.run_dir).mkdir(parents=True, exist_ok=True)
        handle = open(self.log_path(job), "ab")  # noqa: SIM115 (closed when the process is reaped)
        command = self.command(job, phase)
        handle.write(f"\n# {now_iso()} {shlex.join(command)}\n".encode())
        handle.flush()
        process = subprocess.Popen(
            command, cwd=self.work, env=_env(), stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.running[job.key] = Running(job, phase, process, time.monotonic(), now_iso(), handle, before)
        log.info("start %-8s %s", phase, job.key)

    def epochs_finished(self, job: Job) -> int:
        """The epochs ``job``'s run has finished: its progress.json, or where a resume pack did not carry one, all of
        them once its model.pt is written (a call that resumed after the last epoch trains none and writes no
        progress), else what the grid state kept of it (the call that packed it recorded its epochs), else 0."""
        progress = read_progress(self.work / job.run_dir)
        if progress is not None:
            return int(progress["epoch"])
        if (self.work / job.run_dir / "model.pt").is_file():
            return int(self.s.epochs[job.recipe])
        resumable = (self.work / job.run_dir / "last.pt").is_file()
        return int(self.state.job(job).get("epochs_done", 0)) if resumable else 0

    def reap(self, item: Running, rc: int, stopped: str | None = None) -> None:
        """Record a finished process; ``stopped``: why this call stopped it (budget reached, stop requested)."""
        self.measure(force=True)
        seconds = time.monotonic() - item.started
        item.log_file.close()
        del self.running[item.job.key]
        segment = {"phase": item.phase, "started": item.started_at, "seconds": round(seconds, 2), "rc": rc}
        if item.phase == "train":  # which epochs it trained, and how (a run may change precision between calls)
            segment["epochs"] = [item.epochs_before, self.epochs_finished(item.job)]
            segment["train_args"] = self.train_args(item.job)
        if stopped:
            segment["stopped"] = True
        self.state.add_segment(item.job, segment)
        if stopped:
            log.info("stopped %-6s %s after %.0f s (%s)", item.phase, item.job.key, seconds, stopped)
            return
        if rc == EXIT_DIVERGED and item.phase == "train" and self.retry_diverged(item.job):
            return
        if rc != 0:
            diverged = " (diverged)" if rc == EXIT_DIVERGED and item.phase == "train" else ""
            self.failed[item.job.key] = f"{item.phase} exited with {rc}{diverged}"
            log.warning("FAILED %s %s (rc %d); see logs/%s_s%d_%s.log", item.phase, item.job.key, rc,
                        item.job.arch, item.job.seed, item.job.variant)  # fmt: skip
            return
        log.info("done  %-8s %s in %.0f s", item.phase, item.job.key, seconds)
        if item.phase == "evaluate":
            self.state.job(item.job)["evaluated"] = True
            self.state.save()
            try:
                self.publish(item.job)
            except (OSError, ValueError) as error:
                self.failed[item.job.key] = f"publish failed: {error}"
                log.warning("FAILED publish %s: %s", item.job.key, error)

    def stop_all(self, reason: str) -> None:
        for item in list(self.running.values()):
            _signal_group(item.process, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for item in list(self.running.values()):
            try:
                rc = item.process.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                _signal_group(item.process, signal.SIGKILL)
                rc = item.process.wait()
            self.reap(item, rc, stopped=reason)
        if self.running:  # reap() removes each; anything left would be a bug
            raise RuntimeError(f"jobs still running after stop: {sorted(self.running)}")

    def schedule(self) -> None:
        """Run jobs until all are done or failed, or the budget is spent."""
        while True:
            for item in list(self.running.values()):
                rc = item.process.poll()
                if rc is not None:
                    self.reap(item, rc)
            if time.monotonic() >= self.stop_at or self.stop_requested:
                reason = "stop requested" if self.stop_requested else "budget reached"
                if self.running:
                    log.info("%s: stopping %d running job(s)", reason, len(self.running))
                self.stop_all(reason)
                self.call["stopped"] = reason
                return
            self.measure()
            for job in self.start_order():
                if len(self.running) >= self.slots:
                    break
                phase = self.ready(job)
                if phase is not None:
                    self.launch(job, phase)
            if not self.running:
                return
            time.sleep(0.5)

    # ------------------------------------------------------------------ publishing and packing
    def published_root(self) -> Path:
        return self.work / "published"

    def publish(self, job: Job) -> None:
        entry = self.state.job(job)
        provenance = {
            "dataset": self.s.dataset,
            "arch": job.arch,
            "seed": job.seed,
            "variant": job.variant,
            "code": self.code,
            "environment": self.environment,
            "device": self.s.device,
            "epochs": self.s.epochs[job.recipe],
            "batch_size": self.s.batch_size,
            "train_args": self.train_args(job),
            "prepare_args": self.prepare_args_of(job),
            "wall_s": {
                "train": round(self.state.wall_seconds(job, "train"), 1),
                "evaluate": round(self.state.wall_seconds(job, "evaluate"), 1),
                "diverged_attempts": round(self.state.diverged_seconds(job), 1),
            },
            "segments": entry["segments"],
            "calls": self.contributing_calls(entry["segments"]),
            "diverged_attempts": entry.get("diverged", []),
            # resumed from weights only (the optimizer state did not fit in the resume pack): SGD momentum restarted
            "optimizer_state_reset": entry.get("optimizer_state_reset", []),
            "concurrent_jobs": self.slots,
        }
        if job.variant in BACKDOOR_VARIANTS:  # the poisoning: target class, rate, trigger, the poisoned samples' seed
            poisoned = json.loads((self.work / BACKDOOR_DATA / "meta.json").read_text())
            provenance["backdoor"] = poisoned.get("backdoor")
        dest = self.published_root() / "reproduction" / self.s.dataset / job.arch / f"s{job.seed}" / job.variant
        publish.publish_run(self.work / job.run_dir, dest, provenance, top_k=self.s.top_k)
        entry["published"] = True
        self.state.save()

    def contributing_calls(self, segments: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The calls that ran ``segments`` (each segment belongs to the last call started before it): when each
        started, its device, code, machine and extra ``sdn train`` options. A run trained over several calls (or
        sessions) may span code versions, machines and precisions (bf16 on a GPU, fp32 or ``--amp`` on a CPU);
        this says which (each train segment says which epochs, ``[finished before, after]``)."""
        calls = self.state.data["calls"]
        used: list[dict[str, Any]] = []
        for segment in segments:
            before = [c for c in calls if c["started"] <= segment["started"]]
            if before and before[-1] not in used:
                used.append(before[-1])
        keys = ("started", "code", "environment")
        return [
            {
                **{k: c[k] for k in keys if k in c},
                "device": c["settings"].get("device"),
                "train_args": c["settings"].get("train_args", []),
            }
            for c in used
        ]

    def summary(self) -> dict[str, Any]:
        wall = time.monotonic() - self.start
        self.call["wall_s"] = round(wall, 1)
        if self.not_started:
            self.call["not_started"] = sorted(self.not_started)  # would not have finished in this call
        jobs = {}
        for job in self.jobs:
            status = job_status(self.work, job, self.state)
            entry, progress = self.state.job(job), read_progress(self.work / job.run_dir)
            if progress is not None:  # kept in the state: progress.json itself is not carried to the next call
                entry["epochs_done"] = progress["epoch"]
            jobs[job.key] = {
                "status": "failed" if job.key in self.failed else status,
                "epochs_done": entry.get("epochs_done", 0),
                "epochs": self.s.epochs[job.recipe],
                "error": self.failed.get(job.key),
                "train_wall_s": round(self.state.wall_seconds(job, "train"), 1),
                "evaluate_wall_s": round(self.state.wall_seconds(job, "evaluate"), 1),
                "segments": len(entry["segments"]),
                "diverged": len(entry.get("diverged", [])),
                "train_args": self.train_args(job),
            }
        done = sum(1 for j in jobs.values() if j["status"] == "evaluated")
        return {
            "dataset": self.s.dataset,
            "archs": self.s.archs,
            "seeds": self.s.seeds,
            "complete": done == len(jobs),
            "jobs_done": done,
            "jobs_total": len(jobs),
            "call_wall_s": round(wall, 1),
            "grid_wall_s": round(sum(c.get("wall_s", 0.0) for c in self.state.data["calls"]), 1),
            "calls": self.state.data["calls"],
            "jobs": jobs,
            "environment": self.environment,
            "code": self.code,
            "data": self.state.data.get("prepared"),  # archive name and sha256, prepare-data options
            **({"data_full": self.state.data["prepared_full"]} if "prepared_full" in self.state.data else {}),
        }

    def resume_members(self) -> list[str]:
        members = [STATE_FILE]
        for job in self.jobs:
            run = job.run_dir
            status = job_status(self.work, job, self.state)
            keep_parent = any(
                j.parent == job and job_status(self.work, j, self.state) != "evaluated" for j in self.jobs
            )
            if status == "partial":
                members.append((run / "last.pt").as_posix())
            elif status == "trained" or (status == "evaluated" and keep_parent):
                members += [(run / n).as_posix() for n in ("model.pt", "meta.json", "history.csv")]
        return [m for m in members if (self.work / m).is_file()]

    def training_seconds(self, member: str) -> float:
        """GPU seconds lost if ``member`` of the resume pack is left out: its job's training time so far."""
        path = member.removeprefix(WEIGHTS_ONLY_DIR + "/")
        job = next((j for j in self.jobs if path.startswith(j.run_dir.as_posix() + "/")), None)
        return self.state.wall_seconds(job, "train") if job is not None else 0.0

    def weights_only_copies(self, members: list[str]) -> dict[str, tuple[str, int]]:
        """{weights-only copy: (original, its epoch)} for each ``last.pt`` in ``members``, written under
        :data:`WEIGHTS_ONLY_DIR` (the optimizer's state left out: about half the size with SGD's momentum)."""
        shutil.rmtree(self.work / WEIGHTS_ONLY_DIR, ignore_errors=True)
        copies = {}
        for job in self.jobs:
            member = f"{job.run_dir.as_posix()}/{checkpoint.LAST}"
            if member not in members:
                continue
            try:
                state = checkpoint.load_resume_state(self.work / job.run_dir, "cpu")
            except (OSError, ValueError) as error:  # a broken last.pt is not carried at all
                log.warning("%s: %s", member, error)
                continue
            if state is None or not isinstance(state.get("optimizer"), dict):
                continue
            state["optimizer"] = {**state["optimizer"], "state": {}}
            checkpoint.save_resume_state(self.work / WEIGHTS_ONLY_DIR / job.run_dir, state)
            copies[f"{WEIGHTS_ONLY_DIR}/{member}"] = (member, int(state["epoch"]))
        return copies

    def fit_resume(self, members: list[str], limit: float) -> tuple[list[str], list[str]]:
        """(kept, left out): ``members`` (state.json first, always kept) within ``limit`` bytes, leaving out first
        the files holding the least training per byte, then taking back any left out that fit after all."""
        size = {m: (self.work / m).stat().st_size for m in members}
        kept, dropped = list(members), []
        for member in sorted(members[1:], key=lambda m: self.training_seconds(m) / max(size[m], 1)):
            if pack.archive_size(self.work, kept) <= limit:
                break
            kept.remove(member)
            dropped.append(member)
        for member in sorted(dropped, key=lambda m: size[m]):
            if pack.archive_size(self.work, [*kept, member]) <= limit:
                kept.append(member)
                dropped.remove(member)
        return kept, dropped

    def pack(self, summary: dict[str, Any]) -> None:
        out = self.s.out
        out.mkdir(parents=True, exist_ok=True)
        part = int(self.s.part_mib * pack.MIB)
        root = self.published_root()
        # named by the grid's first call: a grid continued on another kind of device keeps one published summary
        first = self.state.data["calls"][0].get("settings", {})
        name = self.s.grid_name or first.get("grid_name")
        grid_file = (
            root / "reproduction" / self.s.dataset / published_grid_name(first.get("device", self.s.device), name)
        )
        io.write_json(grid_file, summary)
        published = [p.relative_to(root).as_posix() for p in sorted(root.rglob("*")) if p.is_file()]
        published_parts = math.ceil(pack.archive_size(root, published) / part)
        files_left = self.s.max_files - 2 - published_parts  # grid.json and runner.log take two
        limit = min(self.resume_mib * pack.MIB, files_left * part)
        members, dropped = self.fit_resume(self.resume_members(), limit)
        copies = self.weights_only_copies(dropped)
        if copies:  # a second pass: the weights-only copies compete with what was kept, by training time per byte
            members, left = self.fit_resume([*members, *copies], limit)
            carried = dict(copies[m] for m in members if m in copies)  # {last.pt sent as its weights: epoch}
            dropped = [m for m in dropped if m not in carried] + [m for m in left if m not in copies]
        else:
            carried = {}
        for job in self.jobs:  # read by adopt_weights_only() of the next call (state.json is packed below)
            entry = self.state.job(job)
            entry.pop("carried_weights_only", None)
            epoch = carried.get(f"{job.run_dir.as_posix()}/{checkpoint.LAST}")
            if epoch is not None:
                entry["carried_weights_only"] = {"epoch": epoch}
        summary["resume_weights_only"] = sorted(carried)
        if dropped:
            log.warning("left out of resume.tar (too large for %d files of %.0f MiB): %s",
                        self.s.max_files, self.s.part_mib, ", ".join(dropped))  # fmt: skip
        summary["resume_left_out"] = dropped
        summary["published_parts"] = published_parts
        if published_parts > self.s.max_files - 3:
            log.warning("published.tar needs %d parts: more than %d files in OUT", published_parts, self.s.max_files)
        models = self.choose_models(members, files_left, part)
        summary["models_packed"] = sorted(models)
        io.write_json(grid_file, summary)
        pack.pack(root, published, out, "published", part)
        pack.pack(self.work, members, out, "resume", part)
        for stale in out.glob("models.tar.[0-9][0-9]"):
            stale.unlink()
        if models:
            pack.pack(self.work / MODELS_STAGING_DIR, models, out, "models", part)
        io.write_json(out / "grid.json", summary)

    def choose_models(self, resume: list[str], files_left: int, part: int) -> list[str]:
        """The checkpoints for ``models.tar`` (:meth:`stage_models`) in the files that ``resume`` leaves, each
        marked ``model_packed`` in state.json (which ``resume`` holds: the next call sends the others first)."""
        before = {job: self.state.job(job).get("model_packed") for job in self.jobs}
        parts = max(1, math.ceil(pack.archive_size(self.work, resume) / part))
        sent = {job for job, packed in before.items() if packed is not None}  # by earlier calls, not this one's marks
        while True:
            models = self.stage_models((files_left - parts) * part, sent)
            for job, packed in before.items():
                entry = self.state.job(job)
                entry.pop("model_packed", None)
                if self.model_member(job) in models:
                    entry["model_packed"] = self.call["started"]
                elif packed is not None:
                    entry["model_packed"] = packed
            self.state.save()
            grown = max(1, math.ceil(pack.archive_size(self.work, resume) / part))
            if grown <= parts:  # the marks did not push state.json into another part
                return models
            parts = grown

    def model_member(self, job: Job) -> str:
        """A finished run's ``model.pt`` as named in ``models.tar`` (and in the repository once ingested)."""
        return f"{publish.CHECKPOINTS_DIR}/{self.s.dataset}/{job.arch}/s{job.seed}/{job.variant}/{checkpoint.MODEL}"

    def stage_models(self, limit: int, sent: set[Job]) -> list[str]:
        """Link the ``model.pt`` of the finished runs that fit in ``limit`` bytes into :data:`MODELS_STAGING_DIR`
        under their :meth:`model_member` names; return those names. Those not in ``sent`` (by an earlier call)
        first, then SDN training, IC-only, CNN (:data:`MODEL_PRIORITY`), smaller first."""
        staging = self.work / MODELS_STAGING_DIR
        shutil.rmtree(staging, ignore_errors=True)
        evaluated = [j for j in self.jobs if job_status(self.work, j, self.state) == "evaluated"]
        finished = [j for j in evaluated if (self.work / j.run_dir / checkpoint.MODEL).is_file()]
        size = {j: (self.work / j.run_dir / checkpoint.MODEL).stat().st_size for j in finished}
        order = sorted(finished, key=lambda j: (j in sent, MODEL_PRIORITY.get(j.variant, 3), size[j], j.key))
        chosen: list[str] = []
        for job in order:
            member = self.model_member(job)
            target = staging / member
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(self.work / job.run_dir / checkpoint.MODEL, target)
            except OSError:  # another file system, or no hard links: a copy
                shutil.copyfile(self.work / job.run_dir / checkpoint.MODEL, target)
            if limit > 0 and pack.archive_size(staging, [*chosen, member]) <= limit:
                chosen.append(member)
            else:
                target.unlink()
        return chosen

    # ------------------------------------------------------------------ all of it
    def run(self) -> dict[str, Any]:
        self.environment = publish.environment()
        self.call["environment"] = self.environment
        self.call["code"] = self.code
        self.state.save()
        (self.work / "logs").mkdir(parents=True, exist_ok=True)
        try:
            self.prepare_data()
            self.poison_data()
            self.plan_carry()
            if not self.stop_requested:
                self.slots = self.resolve_jobs()
                self.call["jobs"] = self.slots
                self.schedule()
        finally:
            self.stop_all(self.call.get("stopped", "runner exiting"))
            summary = self.summary()
            self.pack(summary)
            self.state.save()
        log.info("%d/%d jobs done; this call %.0f s, grid %.0f s", summary["jobs_done"], summary["jobs_total"],
                 summary["call_wall_s"], summary["grid_wall_s"])  # fmt: skip
        return summary


def published_grid_name(device: str, name: str | None = None) -> str:
    """The published summary of a grid first trained on ``device`` (cpu, cuda or cuda:N): ``grid-cpu.json`` or
    ``grid-cuda.json``; ``grid-cuda-<name>.json`` for a grid given a name (two grids of one data set trained on one
    kind of device, e.g. two runners sharing a GPU, would otherwise publish their summaries under one path)."""
    kind = device.split(":")[0]
    return f"grid-{kind}-{name}.json" if name else f"grid-{kind}.json"


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    try:
        os.killpg(process.pid, sig)  # the job's own session (start_new_session): only what we started
    except ProcessLookupError:
        pass


def _env() -> dict[str, str]:
    path = os.environ.get("PYTHONPATH")
    return {
        **os.environ,
        "PYTHONPATH": f"{REPO}{os.pathsep}{path}" if path else str(REPO),
        "PYTHONUNBUFFERED": "1",
        "SDN_TRACKING": "off",
    }


def _plain_settings(s: Settings) -> dict[str, Any]:
    """The settings as JSON; paths by their last part only (grid.json is published: no machine's folders in it)."""
    plain = {k: (v.name if isinstance(v, Path) else v) for k, v in vars(s).items()}
    plain["python"] = Path(s.python).name
    return plain
