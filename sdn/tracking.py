"""Experiment tracking: a local journal first (the truth), then one MLflow run per job (the index).

``track`` writes ``<out_dir>/.mlflow-journal.<command>.json`` when the job starts and again when it ends, then
sends the whole run to MLflow in one go (params, metrics in batches, tags, artifacts, final status). Sending at
the end keeps a SQLite store locked only briefly when many jobs finish together; "database is locked" errors are
retried with backoff. Any other tracking failure (no mlflow installed, server unreachable, store error) is ONE
logged warning: the journal stays on disk with ``"synced": false`` and ``sdn sync-mlflow`` uploads it later.

Bounded waits: a job's own time never depends on the server's health. Every upload (and ``tracking-init``) runs
under one deadline (SDN_TRACKING_DEADLINE; 30 s for a server, 90 s for a local SQLite store, whose waits are
our own jobs' locks, not a broken server): MLflow's HTTP requests get a short timeout and one quick retry
(MLFLOW_HTTP_REQUEST_TIMEOUT, MLFLOW_HTTP_REQUEST_MAX_RETRIES, MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR, unless set), and
whatever they do not cover (a store that hangs, a lock never granted) is cut off by the deadline: the upload is
abandoned in its daemon thread and the journal kept. A server answering 5xx on ``/health``, or not answering
within 3 s, is not contacted further by this process. A SQLite store is created under a file lock beside it, so
concurrent first use never races on its schema migration (once created, the lock file says "ready" and the
store is opened without it). A journal that cannot be written (disk full) is patched
in place with its final status, so it never stays "RUNNING" after the job ended.

This is the only module that imports mlflow, and only inside functions, so ``import sdn`` stays fast and works
where mlflow is absent. (That is also why it is over 500 lines: every MLflow call of the project lives here.)

Environment:
    SDN_TRACKING=off         no journal, no MLflow
    SDN_TRACKING_URI         tracking URI (else MLFLOW_TRACKING_URI; neither: journal only)
    SDN_EXPERIMENT           experiment name (default "sdn")
    SDN_MLFLOW_TAGS          run tags: key=value,key=value (the workflow's form), or a JSON object whose
                             "wildcards": {...} become plain tags (dataset, arch, ...)
    SDN_TRACKING_DEADLINE    seconds one upload may take in all (default 30 for a server, 90 for a local store)
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import os
import random
import re
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sdn.io import read_json, write_json

log = logging.getLogger(__name__)

JOURNAL_PREFIX = ".mlflow-journal"
JOURNAL_GLOB = f"{JOURNAL_PREFIX}*.json"
JOURNAL_VERSION = 1
DEFAULT_EXPERIMENT = "sdn"

# MLflow's limits (mlflow.utils.validation), repeated here so the journal already holds what is uploaded.
MAX_KEY_LENGTH = 250
MAX_PARAM_VALUE_LENGTH = 6000
MAX_TAG_VALUE_LENGTH = 8000
PARAMS_PER_BATCH = 100
METRICS_PER_BATCH = 1000

LOCK_RETRIES = 10
LOCK_BASE_DELAY_S = 0.2
LOCK_MAX_DELAY_S = 5.0
HEALTH_TIMEOUT_S = 3.0
DEADLINE_S = 30.0  # one upload (or store initialisation) in all, to a server
LOCAL_STORE_DEADLINE_S = 90.0  # the same to a local store (SQLite, files): many jobs of ours may queue on its locks
STORE_LOCK_TIMEOUT_S = 20.0
# MLflow's own HTTP settings while we call it (an explicit setting in the environment wins); the default (120 s
# timeout, 7 retries with backoff factor 2) made a job wait 4 minutes on a server answering 503.
MLFLOW_HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0",
    "MLFLOW_HTTP_RESPECT_RETRY_AFTER_HEADER": "false",
}
JOURNAL_FLUSH_INTERVAL_S = 10.0

_KEY_BAD_CHARS = re.compile(r"[^A-Za-z0-9_\-. :/]")
_mlflow_missing_warned = False
_unavailable: dict[str, str] = {}  # URI -> why: servers this process found broken are not contacted again

T = TypeVar("T")


# ----------------------------------------------------------------------------------------------- configuration


@dataclasses.dataclass(frozen=True)
class TrackingConfig:
    """Where runs go, resolved from the environment."""

    enabled: bool
    uri: str | None
    experiment: str
    tags: dict[str, str]
    deadline: float | None = None  # None: deadline_for(uri)


def tracking_config(env: Mapping[str, str] | None = None) -> TrackingConfig:
    """Read SDN_TRACKING, SDN_TRACKING_URI / MLFLOW_TRACKING_URI, SDN_EXPERIMENT and SDN_MLFLOW_TAGS."""
    env = os.environ if env is None else env
    enabled = env.get("SDN_TRACKING", "on").strip().lower() not in {"off", "0", "false", "no"}
    uri = (env.get("SDN_TRACKING_URI") or env.get("MLFLOW_TRACKING_URI") or "").strip() or None
    experiment = (env.get("SDN_EXPERIMENT") or "").strip() or DEFAULT_EXPERIMENT
    return TrackingConfig(
        enabled=enabled,
        uri=uri,
        experiment=experiment,
        tags=_env_tags(env.get("SDN_MLFLOW_TAGS")),
        deadline=_env_deadline(env.get("SDN_TRACKING_DEADLINE")),
    )


def _env_deadline(raw: str | None) -> float | None:
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not (0 < value <= 3600):  # NaN fails this too
        log.warning("ignoring SDN_TRACKING_DEADLINE=%r: expected seconds in (0, 3600]; using the default", raw)
        return None
    return value


def deadline_for(uri: str, configured: float | None = None) -> float:
    """Seconds one upload to ``uri`` may take: ``configured``, else 30 for a server, 90 for a local store."""
    if configured is not None:
        return configured
    return DEADLINE_S if uri.startswith(("http://", "https://")) else LOCAL_STORE_DEADLINE_S


def _env_tags(raw: str | None) -> dict[str, str]:
    if not raw:
        return {}
    if not raw.lstrip().startswith(("{", "[")):  # the workflow's readable form: key=value,key=value
        pairs = [item.split("=", 1) for item in raw.split(",") if item.strip()]
        if all(len(pair) == 2 and pair[0].strip() for pair in pairs):
            return clean_tags({key.strip(): value for key, value in pairs})
        log.warning("ignoring SDN_MLFLOW_TAGS: expected JSON or key=value,key=value, got %r", raw[:200])
        return {}
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as err:
        log.warning("ignoring SDN_MLFLOW_TAGS: not valid JSON (%s)", err)
        return {}
    if not isinstance(obj, dict):
        log.warning("ignoring SDN_MLFLOW_TAGS: expected a JSON object, got %s", type(obj).__name__)
        return {}
    tags: dict[str, Any] = {}
    for key, value in obj.items():
        if key == "wildcards" and isinstance(value, Mapping):
            tags.update(value)  # one tag scheme for every run: dataset, arch, seed, variant (RUN_TAGS)
        else:
            tags[key] = value
    return clean_tags(tags)


# ----------------------------------------------------------------------------------------------- value cleaning


def clean_key(key: str) -> str:
    """An MLflow-valid key: allowed characters only, at most 250 characters."""
    cleaned = _KEY_BAD_CHARS.sub("_", str(key)) or "_"
    return cleaned[:MAX_KEY_LENGTH]


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _to_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, bool | int | float) or value is None:
        return str(value)
    try:
        return json.dumps(value, sort_keys=True, default=str)
    except (TypeError, ValueError):
        return str(value)


def flatten_params(params: Mapping[str, Any] | Any, prefix: str = "") -> dict[str, str]:
    """Nested mappings/dataclasses as ``a.b.c`` keys; values as strings within MLflow's length limit."""
    if dataclasses.is_dataclass(params) and not isinstance(params, type):
        params = dataclasses.asdict(params)
    if not isinstance(params, Mapping):
        raise ValueError(f"params must be a mapping or a dataclass instance, got {type(params).__name__}")
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            value = dataclasses.asdict(value)
        if isinstance(value, Mapping) and value:
            flat.update(flatten_params(value, prefix=f"{name}."))
        else:
            flat[clean_key(name)] = _truncate(_to_text(value), MAX_PARAM_VALUE_LENGTH)
    return flat


def clean_tags(tags: Mapping[str, Any]) -> dict[str, str]:
    """Tags as MLflow-valid keys and string values (nested mappings flattened like params)."""
    flat: dict[str, str] = {}
    for key, value in tags.items():
        if isinstance(value, Mapping) and value:
            for sub_key, sub_value in clean_tags(value).items():
                flat[clean_key(f"{key}.{sub_key}")] = sub_value
        else:
            flat[clean_key(key)] = _truncate(_to_text(value), MAX_TAG_VALUE_LENGTH)
    return flat


def _now_ms() -> int:
    return int(time.time() * 1000)


# ----------------------------------------------------------------------------------------------- the run


def journal_path(out_dir: str | os.PathLike[str], command: str) -> Path:
    """The journal file of ``command`` in ``out_dir`` (one per command, so commands sharing a folder coexist)."""
    safe = re.sub(r"[^A-Za-z0-9_\-]", "_", command) or "run"
    return Path(out_dir) / f"{JOURNAL_PREFIX}.{safe}.json"


class Run:
    """What one job reports: kept in memory, mirrored to the journal, uploaded to MLflow at the end."""

    def __init__(
        self,
        command: str,
        params: Mapping[str, Any] | Any,
        out_dir: Path | None,
        config: TrackingConfig,
    ) -> None:
        self.command = command
        self.out_dir = out_dir
        self.config = config
        self.journal_id = uuid.uuid4().hex
        self.params = flatten_params(params)
        self.tags: dict[str, str] = {
            **config.tags,
            "sdn.command": command,
            "sdn.journal_id": self.journal_id,
        }
        self.tags.setdefault("step", config.tags.get("rule") or command)
        if out_dir is not None:
            self.tags["sdn.out_dir"] = str(out_dir)
        self.metrics: list[dict[str, Any]] = []
        self.artifacts: list[str] = []
        self.models: list[dict[str, str]] = []
        self.status = "RUNNING"
        self.start_time = _now_ms()
        self.end_time: int | None = None
        self.synced = False
        self.sync_info: dict[str, Any] = {}
        self._last_flush = 0.0

    @property
    def journal_file(self) -> Path | None:
        return journal_path(self.out_dir, self.command) if self.out_dir is not None and self.config.enabled else None

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Record metric values at ``step`` (0 when omitted), timestamped now."""
        stamp = _now_ms()
        for key, value in metrics.items():
            self.metrics.append(
                {"key": clean_key(key), "value": float(value), "step": int(step or 0), "timestamp": stamp}
            )
        if time.monotonic() - self._last_flush >= JOURNAL_FLUSH_INTERVAL_S:
            self.write_journal()

    def log_artifact(self, path: str | os.PathLike[str]) -> None:
        """Record a file or folder to upload; stored relative to the journal so results can be moved."""
        target = Path(path)
        if not target.exists():
            log.warning("artifact %s does not exist; not tracked", target)
            return
        if self.out_dir is not None:
            self.artifacts.append(os.path.relpath(target.resolve(), Path(self.out_dir).resolve()))
        else:
            self.artifacts.append(str(target.resolve()))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self.tags.update(clean_tags(tags))

    def log_model(self, path: str | os.PathLike[str]) -> None:
        """Record an MLflow model folder (:func:`save_pyfunc_model`) to upload with the run and register as
        :func:`registered_model_name` of the run's tags (a new version per run)."""
        before = len(self.artifacts)
        self.log_artifact(path)
        if len(self.artifacts) == before:
            return
        try:
            name = registered_model_name(self.tags)
        except ValueError as err:
            log.warning("MLflow model %s is logged but not registered: %s", path, err)
            return
        self.models.append({"path": self.artifacts[-1], "name": name})

    def to_journal(self) -> dict[str, Any]:
        return {
            "version": JOURNAL_VERSION,
            "journal_id": self.journal_id,
            "command": self.command,
            "experiment": self.config.experiment,
            "run_name": run_name(self.command, self.out_dir, self.tags),
            "params": self.params,
            "tags": self.tags,
            "metrics": self.metrics,
            "artifacts": self.artifacts,
            "models": self.models,
            "status": self.status,
            "start_time": self.start_time,
            "end_time": self.end_time,
            "synced": self.synced,
            "sync": self.sync_info,
        }

    def write_journal(self) -> None:
        """Mirror the run to its journal; never raises (a failure is a warning, the final status still lands)."""
        self._last_flush = time.monotonic()
        path = self.journal_file
        if path is None:
            return
        journal = self.to_journal()
        try:
            write_json(path, journal)
            return
        except Exception as err:  # noqa: BLE001 - e.g. disk full: tracking must not fail the job
            problem = f"{type(err).__name__}: {err}"
        patched = patch_journal_in_place(path, journal, problem)
        log.warning(
            "could not write the tracking journal %s (%s)%s",
            path,
            problem,
            f"; its status was set to {journal['status']} in place" if patched else "; it may be out of date",
        )


JOURNAL_ESSENTIAL_KEYS = (
    "version",
    "journal_id",
    "command",
    "experiment",
    "status",
    "start_time",
    "end_time",
    "synced",
)


def patch_journal_in_place(path: Path, journal: Mapping[str, Any], problem: str) -> bool:
    """Overwrite the existing journal file in place, within its current size, with ``journal``'s final state.

    For when a normal (atomic) write fails, a full disk above all: rewriting bytes the file already holds needs no
    new space. Metrics, artifacts and then params are dropped (``"truncated": true``) until the compact JSON fits;
    the rest of the file is padded with spaces (valid JSON). Returns False when even that is impossible.
    """
    try:
        size = path.stat().st_size
    except OSError:
        return False
    doc = {**journal, "journal_error": _truncate(problem, 300)}
    candidates = [
        doc,
        {**doc, "metrics": [], "artifacts": [], "truncated": True},
        {**doc, "metrics": [], "artifacts": [], "params": {}, "tags": {}, "truncated": True},
        {key: doc.get(key) for key in JOURNAL_ESSENTIAL_KEYS} | {"truncated": True},
    ]
    for candidate in candidates:
        data = json.dumps(candidate, separators=(",", ":"), sort_keys=True, default=str).encode()
        if len(data) <= size:
            break
    else:
        return False
    try:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.pwrite(fd, data + b" " * (size - len(data)), 0)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        return False
    return True


RUN_TAGS = ("dataset", "arch", "seed", "variant", "step")  # the tags every run carries when they apply


def metric_key(split: str, kind: str, exit_index: int, num_exits: int) -> str:
    """The MLflow name of one exit's metric: ``test/top1/ic1`` .. ``test/top1/final`` (the last exit is ``final``,
    so a CNN's only head and an SDN's last one share a name; MLflow groups charts by the part before ``/``)."""
    head = "final" if exit_index == num_exits - 1 else f"ic{exit_index + 1}"
    return f"{split}/{kind}/{head}"


def run_name(command: str, out_dir: Path | None, tags: Mapping[str, str]) -> str:
    """``digits/resnet56/s0/sdn: train`` from the run's tags, else ``train: <short out path>``."""
    step = tags.get("step") or command
    where = [tags.get("dataset"), tags.get("arch"), tags.get("seed"), tags.get("variant")]
    if where[0]:
        if where[2] is not None and where[2] != "" and not str(where[2]).startswith("s"):
            where[2] = f"s{where[2]}"
        return f"{'/'.join(str(p) for p in where if p)}: {step}"
    if out_dir is None:
        return step
    return f"{step}: {short_path(out_dir)}"


def short_path(path: Path) -> str:
    """``path`` relative to the working folder when inside it, else its last three parts (no leading ``/``)."""
    try:
        relative = Path(path).resolve().relative_to(Path.cwd().resolve())
        parts = relative.parts
    except (OSError, ValueError):
        parts = tuple(p for p in Path(path).parts if p not in ("/", ""))
    return "/".join(parts[-3:]) or "."


@contextmanager
def track(
    command: str, params: Mapping[str, Any] | Any | None = None, out_dir: str | os.PathLike[str] | None = None
) -> Iterator[Run]:
    """Track one job. The journal is written first; MLflow gets the run when the block ends.

    If the block raises, the run is recorded as FAILED and the exception propagates. Tracking itself never
    raises: a failure to reach MLflow is one warning and ``"synced": false`` in the journal.
    """
    config = tracking_config()
    run = Run(command, params or {}, Path(out_dir) if out_dir is not None else None, config)
    if not config.enabled:
        yield run
        return
    run.write_journal()
    try:
        yield run
    except BaseException as exc:
        run.status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
        _finish(run)
        raise
    run.status = "FINISHED"
    _finish(run)


def _finish(run: Run) -> None:
    run.end_time = _now_ms()
    run.write_journal()
    if run.config.uri is None:
        return
    base_dir = Path(run.out_dir) if run.out_dir is not None else None
    try:
        run_id = upload_journal(run.to_journal(), base_dir=base_dir, uri=run.config.uri, deadline=run.config.deadline)
    except MlflowUnavailable:
        return  # already warned once for this process
    except Exception as err:  # noqa: BLE001 - a tracking failure must never fail the job
        log.warning(
            "MLflow tracking failed for %s (URI %s): %s: %s; the run stays in %s for `sdn sync-mlflow`",
            run.command,
            run.config.uri,
            type(err).__name__,
            err,
            run.journal_file or "no journal (no out_dir)",
        )
        run.sync_info = {"uri": run.config.uri, "error": f"{type(err).__name__}: {err}"[:2000]}
        run.write_journal()
        return
    run.synced = True
    run.sync_info = {"uri": run.config.uri, "run_id": run_id, "synced_at": _now_ms()}
    run.write_journal()


# ----------------------------------------------------------------------------------------------- upload


class MlflowUnavailable(RuntimeError):
    """mlflow is not installed here (for example on the GPU machine)."""


class TrackingUnavailable(ConnectionError):
    """The tracking server or store is down, half-alive or too slow: nothing more is sent to it by this process."""


def _import_client() -> Any:
    global _mlflow_missing_warned
    try:
        from mlflow.entities import Metric, Param, RunTag  # noqa: F401 - imported here, not in the worker thread
        from mlflow.tracking import MlflowClient
    except ImportError as err:
        if not _mlflow_missing_warned:
            _mlflow_missing_warned = True
            log.warning("mlflow is not installed (%s): tracking is journal-only; run `sdn sync-mlflow` later", err)
        raise MlflowUnavailable("mlflow is not installed") from err
    return MlflowClient


def is_locked_error(err: BaseException) -> bool:
    """True for SQLite's 'database is locked' anywhere in the exception chain."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if "database is locked" in str(current):
            return True
        current = current.__cause__ or current.__context__
    return False


def with_lock_retry(fn: Callable[..., T], *args: Any, attempts: int = LOCK_RETRIES, **kwargs: Any) -> T:
    """Call ``fn``; on 'database is locked' wait (exponential backoff with jitter) and retry, ``attempts`` times."""
    for attempt in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            if not is_locked_error(err) or attempt == attempts - 1:
                raise
            delay = min(LOCK_BASE_DELAY_S * 2**attempt, LOCK_MAX_DELAY_S) * (0.5 + random.random())
            log.debug("database is locked; retry %d/%d in %.2f s", attempt + 1, attempts - 1, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def check_reachable(uri: str, timeout: float = HEALTH_TIMEOUT_S) -> None:
    """For an http(s) URI, fail fast (TrackingUnavailable) unless ``/health`` answers within ``timeout``.

    A server that does not answer, or answers with a server error (5xx), is down for the rest of this process.
    Other answers (a proxy without ``/health``: 404) are left for MLflow to judge.
    """
    if not uri.startswith(("http://", "https://")):
        return
    if uri in _unavailable:
        raise TrackingUnavailable(_unavailable[uri])
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout):
            return
    except urllib.error.HTTPError as err:
        if err.code < 500:
            return  # something answered; let MLflow judge
        reason = f"MLflow server {uri} is unavailable: /health answered HTTP {err.code}"
    except (urllib.error.URLError, OSError) as err:
        cause = getattr(err, "reason", err)
        reason = f"MLflow server {uri} is unreachable: {cause or type(cause).__name__}"
        if isinstance(cause, TimeoutError) or isinstance(err, TimeoutError):
            reason = f"MLflow server {uri} is unreachable: /health did not answer within {timeout:g} s"
    _unavailable[uri] = reason
    raise TrackingUnavailable(reason)


@contextmanager
def bounded_mlflow_http() -> Iterator[None]:
    """MLflow's HTTP timeout/retry settings for the block (MLFLOW_HTTP_DEFAULTS, unless set in the environment)."""
    added = [name for name in MLFLOW_HTTP_DEFAULTS if name not in os.environ]
    for name in added:
        os.environ[name] = MLFLOW_HTTP_DEFAULTS[name]
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


def call_with_deadline(fn: Callable[[], T], *, deadline: float, what: str, uri: str) -> T:
    """Run ``fn`` in a daemon thread and wait at most ``deadline`` seconds for it.

    On time-out the thread is abandoned (it dies with the process), ``uri`` is marked unavailable for the rest of
    this process and TrackingUnavailable is raised. Exceptions of ``fn`` propagate.
    """
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as err:  # noqa: BLE001 - handed to the caller
            outcome["error"] = err

    worker = threading.Thread(target=work, name=f"sdn-tracking {what}", daemon=True)
    with bounded_mlflow_http():
        worker.start()
        worker.join(deadline)
    if worker.is_alive():
        reason = f"MLflow at {uri} did not finish {what} within {deadline:g} s (SDN_TRACKING_DEADLINE)"
        _unavailable[uri] = reason
        raise TrackingUnavailable(reason)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///path`` URI (None for other stores and in-memory databases)."""
    if not uri.startswith("sqlite:///"):
        return None
    db_path = uri.removeprefix("sqlite:///").split("?", 1)[0]
    if not db_path or db_path == ":memory:":
        return None
    return Path(db_path)


ARTIFACTS_SCHEME = "mlflow-artifacts:"
ARTIFACTS_FOLDER = "mlartifacts"


def sqlite_artifact_location(uri: str, experiment: str = DEFAULT_EXPERIMENT) -> str | None:
    """For ``sqlite:///path/db``: ``mlflow-artifacts:/<experiment>``, a location that names no machine's folder.

    ``upload_journal`` copies the files to ``<db folder>/mlartifacts/<experiment>/...`` itself, and
    ``mlflow server --backend-store-uri sqlite:///<db> --artifacts-destination <db folder>/mlartifacts`` serves
    them, so a results folder copied to another machine still browses its artifacts (an absolute ``file://``
    location would point at the first machine's disk).
    """
    if sqlite_path(uri) is None:
        return None
    return f"{ARTIFACTS_SCHEME}/{re.sub(r'[^A-Za-z0-9_.-]', '_', experiment) or 'sdn'}"


def local_artifact_root(uri: str, artifact_uri: str) -> Path | None:
    """Where a run of a SQLite store with an ``mlflow-artifacts:`` location keeps its files (None otherwise)."""
    db_path = sqlite_path(uri)
    if db_path is None or not artifact_uri.startswith(ARTIFACTS_SCHEME):
        return None
    rest = artifact_uri.removeprefix(ARTIFACTS_SCHEME).lstrip("/")
    return db_path.parent / ARTIFACTS_FOLDER / rest


STORE_READY = "ready"


@contextmanager
def store_lock(uri: str, timeout: float = STORE_LOCK_TIMEOUT_S) -> Iterator[None]:
    """For a SQLite store: an exclusive lock on ``<db>.lock`` until the store exists (creating and migrating its
    schema are not safe from several processes at once).

    Once a block under the lock has succeeded, the lock file says "ready" and later calls (with the database
    present) skip the lock. Waits at most ``timeout`` seconds, then raises TrackingUnavailable naming the lock file.
    Other stores: no-op.
    """
    db_path = sqlite_path(uri)
    if db_path is None:
        yield
        return
    lock_file = db_path.with_name(db_path.name + ".lock")
    try:
        ready = lock_file.read_text().strip() == STORE_READY and db_path.stat().st_size > 0
    except OSError:
        ready = False
    if ready:
        yield
        return
    db_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a+") as handle:
        give_up = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= give_up:
                    raise TrackingUnavailable(
                        f"SQLite store {db_path}: lock {lock_file} not granted within {timeout:g} s"
                    ) from None
                time.sleep(0.05 + 0.1 * random.random())
        yield
        handle.seek(0)
        handle.truncate()
        handle.write(STORE_READY + "\n")
        handle.flush()
    # the lock is released when the file closes


def _client_class(uri: str) -> Any:
    """MlflowClient, after the fast checks made in the calling thread (server health, mlflow importable)."""
    if uri in _unavailable:
        raise TrackingUnavailable(_unavailable[uri])
    check_reachable(uri)
    return _import_client()


def open_store(client_class: Any, uri: str, experiment: str) -> tuple[Any, str]:
    """A client of ``uri`` and the id of ``experiment`` (created when missing).

    Constructing the client opens the store (a SQLite store creates or migrates its schema then): done under
    ``store_lock``, so concurrent first use of a fresh store is safe.
    """
    with store_lock(uri):
        client = client_class(tracking_uri=uri)
        return client, ensure_experiment(client, experiment, uri)


def ensure_experiment(client: Any, name: str, uri: str) -> str:
    """The experiment's id, creating it (artifacts beside a SQLite DB) when missing; safe against races."""
    experiment = with_lock_retry(client.get_experiment_by_name, name)
    if experiment is not None:
        return str(experiment.experiment_id)
    try:
        location = sqlite_artifact_location(uri, name)
        return str(with_lock_retry(client.create_experiment, name, artifact_location=location))
    except Exception:
        experiment = with_lock_retry(client.get_experiment_by_name, name)  # another job created it meanwhile
        if experiment is None:
            raise
        return str(experiment.experiment_id)


def init_store(uri: str, experiment: str = DEFAULT_EXPERIMENT, *, deadline: float | None = None) -> str:
    """Create the store's schema (SQLite) and the experiment once, before jobs fan out; returns its id."""
    client_class = _client_class(uri)
    _, experiment_id = call_with_deadline(
        lambda: open_store(client_class, uri, experiment),
        deadline=deadline_for(uri, deadline),
        what="store initialisation",
        uri=uri,
    )
    return experiment_id


def _find_run(client: Any, experiment_id: str, journal_id: str) -> str | None:
    runs = with_lock_retry(
        client.search_runs,
        [experiment_id],
        filter_string=f"tags.`sdn.journal_id` = '{journal_id}'",
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def _chunks(items: list[T], size: int) -> Iterator[list[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def upload_journal(
    journal: Mapping[str, Any],
    *,
    base_dir: Path | None,
    uri: str,
    experiment: str | None = None,
    deadline: float | None = None,
) -> str:
    """Send one journal to MLflow as one run and return the run id, within ``deadline`` seconds in all.

    Idempotent: the run carries the tag ``sdn.journal_id``; a run already holding it is completed, not duplicated.
    Artifact paths are relative to ``base_dir`` (the journal's folder). Raises on failure (TrackingUnavailable when
    the server is down, half-alive or too slow).
    """
    client_class = _client_class(uri)
    return call_with_deadline(
        lambda: _upload(client_class, journal, base_dir=base_dir, uri=uri, experiment=experiment),
        deadline=deadline_for(uri, deadline),
        what="the upload",
        uri=uri,
    )


def _upload(
    client_class: Any, journal: Mapping[str, Any], *, base_dir: Path | None, uri: str, experiment: str | None
) -> str:
    from mlflow.entities import Metric, Param, RunTag

    name = experiment or journal.get("experiment") or DEFAULT_EXPERIMENT
    client, experiment_id = open_store(client_class, uri, name)
    journal_id = str(journal["journal_id"])
    tags = dict(journal.get("tags", {}))
    tags["sdn.journal_id"] = journal_id
    run_id = _find_run(client, experiment_id, journal_id)
    if run_id is None:
        run = with_lock_retry(
            client.create_run,
            experiment_id,
            start_time=journal.get("start_time"),
            tags={"sdn.journal_id": journal_id},
            run_name=journal.get("run_name"),
        )
        run_id = run.info.run_id

    params = [Param(k, v) for k, v in journal.get("params", {}).items()]
    for chunk in _chunks(params, PARAMS_PER_BATCH):
        with_lock_retry(client.log_batch, run_id, params=chunk)
    metrics = [
        Metric(m["key"], float(m["value"]), int(m["timestamp"]), int(m["step"])) for m in journal.get("metrics", [])
    ]
    for chunk in _chunks(metrics, METRICS_PER_BATCH):
        with_lock_retry(client.log_batch, run_id, metrics=chunk)
    run_tags = [RunTag(k, v) for k, v in tags.items()]
    for chunk in _chunks(run_tags, PARAMS_PER_BATCH):
        with_lock_retry(client.log_batch, run_id, tags=chunk)

    artifacts = journal.get("artifacts", [])
    local_root = None
    if artifacts:
        local_root = local_artifact_root(uri, with_lock_retry(client.get_run, run_id).info.artifact_uri)
    if local_root is not None:
        from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository

        local = LocalArtifactRepository(str(local_root))
        log_file, log_dir = local.log_artifact, local.log_artifacts
    else:

        def log_file(path: str, artifact_path: str | None) -> None:
            with_lock_retry(client.log_artifact, run_id, path, artifact_path=artifact_path)

        def log_dir(path: str, artifact_path: str | None) -> None:
            with_lock_retry(client.log_artifacts, run_id, path, artifact_path=artifact_path)

    for rel in artifacts:
        path = Path(rel) if base_dir is None else base_dir / rel
        if not path.exists():
            log.warning("artifact %s of run %s is gone; not uploaded", path, run_id)
            continue
        artifact_dir = _artifact_dir(rel, base_dir)
        if path.is_dir():
            log_dir(str(path), _join(artifact_dir, path.name))
        else:
            log_file(str(path), artifact_dir)

    for model in journal.get("models", []):
        artifact_path = _join(_artifact_dir(model["path"], base_dir), Path(model["path"]).name)
        if local_root is not None:  # a path `mlflow models serve` reads without a tracking server
            source = (local_root / artifact_path).resolve().as_uri()
        else:
            source = f"{with_lock_retry(client.get_run, run_id).info.artifact_uri}/{artifact_path}"
        register_model_version(client, str(model["name"]), source, run_id, tags)

    status = journal.get("status", "FINISHED")
    if status == "RUNNING":
        status = "KILLED"  # a journal left behind by a job that never finished
    with_lock_retry(client.set_terminated, run_id, status=status, end_time=journal.get("end_time") or _now_ms())
    return str(run_id)


def _join(parent: str | None, name: str) -> str:
    return name if parent is None else f"{parent}/{name}"


def _artifact_dir(rel: str, base_dir: Path | None) -> str | None:
    """The run's artifact folder a journal artifact (relative to ``base_dir``) is uploaded into."""
    parent = Path(rel).parent
    return None if base_dir is None or rel.startswith("..") or parent == Path(".") else parent.as_posix()


# ----------------------------------------------------------------------------------------------- MLflow models

MODEL_FOLDER = "mlflow_model"
IMAGE_COLUMN = "image"
OUTPUT_COLUMNS = (
    ("source", "string"),
    ("class_index", "long"),
    ("class_name", "string"),
    ("exit_index", "long"),
    ("exit_name", "string"),
    ("confidence", "double"),
    ("cost_fraction", "double"),
    ("error", "string"),
)
REGISTERED_MODEL_TAGS = ("dataset", "arch", "variant")


def registered_model_name(tags: Mapping[str, str]) -> str:
    """``sdn-<dataset>-<arch>-<variant>`` from a run's tags (ValueError naming the tags that are missing)."""
    missing = [key for key in REGISTERED_MODEL_TAGS if not tags.get(key)]
    if missing:
        raise ValueError(f"cannot name the registered model: the run has no tag {', '.join(missing)}")
    name = "-".join(["sdn", *(str(tags[key]) for key in REGISTERED_MODEL_TAGS)])
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def register_model_version(client: Any, name: str, source: str, run_id: str, tags: Mapping[str, str]) -> str:
    """Register ``source`` as a version of ``name`` (created, tagged with dataset/arch/variant, when missing),
    tagged with the run's tags; idempotent per run (the version a run already has is returned)."""
    try:
        with_lock_retry(
            client.create_registered_model,
            name,
            tags={k: tags[k] for k in REGISTERED_MODEL_TAGS if k in tags},
            description="An SDN (Kaya et al., ICML 2019) serving online early exit; see the sdn README.",
        )
    except Exception:  # noqa: BLE001 - it exists already (another run, or a race); anything else raises here
        with_lock_retry(client.get_registered_model, name)
    found = with_lock_retry(client.search_model_versions, f"name = '{name}' and run_id = '{run_id}'")
    if found:
        return str(found[0].version)
    version = with_lock_retry(
        client.create_model_version, name, source, run_id=run_id, tags=dict(tags), await_creation_for=0
    )
    return str(version.version)


def save_pyfunc_model(
    path: str | os.PathLike[str],
    checkpoint: str | os.PathLike[str],
    *,
    exit_policy: Mapping[str, Any],
    preprocess: Mapping[str, Any],
    example_image: bytes,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write an MLflow pyfunc model serving online early exit of ``checkpoint`` to the folder ``path``.

    Input: a column ``image`` of base64-encoded image files; output: one row per image with the columns of
    ``OUTPUT_COLUMNS`` (``error`` set, the rest null, for an image it cannot take). Inference parameters
    ``threshold`` and ``policy`` default to ``exit_policy``'s and may be overridden per request. The folder is
    written under a temporary name and renamed, replacing an older one.
    """
    import base64
    import shutil

    import mlflow.pyfunc
    import pandas as pd
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    target = Path(path)
    threshold = float(exit_policy["threshold"])
    signature = ModelSignature(
        inputs=Schema([ColSpec("string", IMAGE_COLUMN)]),
        outputs=Schema([ColSpec(kind, name, required=False) for name, kind in OUTPUT_COLUMNS]),
        params=ParamSchema(
            [ParamSpec("threshold", "double", threshold), ParamSpec("policy", "string", str(exit_policy["policy"]))]
        ),
    )
    example = pd.DataFrame({IMAGE_COLUMN: [base64.b64encode(example_image).decode("ascii")]})
    temporary = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        mlflow.pyfunc.save_model(
            str(temporary),
            python_model=_early_exit_model_class()(),
            artifacts={"checkpoint": str(checkpoint)},
            model_config={"exit_policy": dict(exit_policy), "preprocess": dict(preprocess)},
            signature=signature,
            input_example=(example, {"threshold": threshold}),
            pip_requirements=_requirements(),
            metadata=dict(metadata or {}),
        )
        if target.exists():
            shutil.rmtree(target)
        temporary.rename(target)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return target


def _requirements() -> list[str]:
    """What the model needs besides the sdn package itself (installed from this repository; the server runs with
    ``--env-manager local``). Given explicitly: MLflow's inference of them would load the model once more."""
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for package in ("mlflow", "torch", "numpy", "pandas", "pillow"):
        try:
            pins.append(f"{package}=={version(package)}")
        except PackageNotFoundError:
            pins.append(package)
    return pins


def _early_exit_model_class() -> type:
    """The PythonModel class (built here, as every mlflow import lives in this module; pickled by value)."""
    import mlflow.pyfunc

    class SdnEarlyExitModel(mlflow.pyfunc.PythonModel):  # type: ignore[misc,name-defined]
        """Online early exit of one SDN (:class:`sdn.predict.Predictor`) on base64-encoded images."""

        def load_context(self, context: Any) -> None:
            from sdn.exit_policy import ExitPolicy
            from sdn.predict import Predictor, Preprocess

            config = context.model_config
            prep = config["preprocess"]
            self.predictor = Predictor.load(
                context.artifacts["checkpoint"],
                exit_policy=ExitPolicy(**config["exit_policy"]),
                preprocess=Preprocess(
                    size=int(prep["size"]),
                    mean=tuple(prep["mean"]),
                    std=tuple(prep["std"]),
                    classes=tuple(prep["classes"]),
                ),
            )

        def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201 - MLflow reads hints
            import pandas as pd
            from mlflow.exceptions import MlflowException
            from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

            params = params or {}
            try:
                if IMAGE_COLUMN_NAME not in getattr(model_input, "columns", ()):
                    raise ValueError(f"the request has no column {IMAGE_COLUMN_NAME!r} of base64-encoded images")
                rows = self.predictor.predict_base64(
                    list(model_input[IMAGE_COLUMN_NAME]),
                    threshold=params.get("threshold"),
                    policy=params.get("policy"),
                )
            except ValueError as err:
                raise MlflowException(str(err), error_code=INVALID_PARAMETER_VALUE) from None
            records = [r.record() for r in rows]  # object columns: integers stay integers, a failed row's are null
            return pd.DataFrame({name: pd.Series([r[name] for r in records], dtype=object) for name in COLUMNS})

    IMAGE_COLUMN_NAME = IMAGE_COLUMN  # noqa: N806 - captured by value when the class is pickled
    COLUMNS = [name for name, _ in OUTPUT_COLUMNS]  # noqa: N806
    return SdnEarlyExitModel


# ----------------------------------------------------------------------------------------------- sync


@dataclasses.dataclass
class SyncSummary:
    uploaded: list[Path] = dataclasses.field(default_factory=list)
    already_synced: list[Path] = dataclasses.field(default_factory=list)
    skipped_running: list[Path] = dataclasses.field(default_factory=list)
    failed: list[Path] = dataclasses.field(default_factory=list)
    corrupt: list[Path] = dataclasses.field(default_factory=list)


def find_journals(results_dir: str | os.PathLike[str]) -> list[Path]:
    """Every journal under ``results_dir``, sorted."""
    root = Path(results_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"results folder {root} does not exist")
    return sorted(root.rglob(JOURNAL_GLOB))


class CorruptJournal(ValueError):
    """A journal file that cannot be read as one."""


def read_journal(path: Path) -> dict[str, Any]:
    """The journal at ``path``; CorruptJournal (naming the file and what is wrong) if it is not one."""
    try:
        journal = read_json(path)
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise CorruptJournal(f"{path}: not readable as JSON ({type(err).__name__}: {err})") from None
    if not isinstance(journal, dict):
        raise CorruptJournal(f"{path}: expected a JSON object, found {type(journal).__name__}")
    for key, kind in (("journal_id", str), ("params", dict), ("tags", dict), ("metrics", list), ("artifacts", list)):
        if key in journal and not isinstance(journal[key], kind):
            raise CorruptJournal(f"{path}: key {key!r} should be a {kind.__name__}")
    if not journal.get("journal_id"):
        raise CorruptJournal(f"{path}: key 'journal_id' is missing")
    return journal


def sync_results(
    results_dir: str | os.PathLike[str],
    uri: str,
    *,
    experiment: str | None = None,
    include_running: bool = False,
    deadline: float | None = None,
) -> SyncSummary:
    """Upload every journal under ``results_dir`` not yet synced and mark it synced; a second call uploads nothing.

    Journals still RUNNING (a job in progress, or killed) are skipped unless ``include_running`` (uploaded KILLED).
    A corrupt journal is skipped with a warning naming it; the others are uploaded. Once the server proves down
    or too slow (TrackingUnavailable), the remaining journals are counted failed without waiting on it again.
    """
    summary = SyncSummary()
    for path in find_journals(results_dir):
        try:
            journal = read_journal(path)
        except CorruptJournal as err:
            log.warning("skipping a corrupt tracking journal: %s; fix or delete it, then sync again", err)
            summary.corrupt.append(path)
            continue
        if journal.get("synced"):
            summary.already_synced.append(path)
            continue
        if journal.get("status") == "RUNNING" and not include_running:
            summary.skipped_running.append(path)
            continue
        try:
            run_id = upload_journal(journal, base_dir=path.parent, uri=uri, experiment=experiment, deadline=deadline)
        except MlflowUnavailable:
            raise RuntimeError("mlflow is not installed: cannot sync journals here") from None
        except Exception as err:  # noqa: BLE001 - report and go on with the other journals
            log.warning("could not upload %s to %s: %s: %s", path, uri, type(err).__name__, err)
            summary.failed.append(path)
            continue
        journal["synced"] = True
        journal["sync"] = {"uri": uri, "run_id": run_id, "synced_at": _now_ms()}
        write_json(path, journal)
        summary.uploaded.append(path)
    return summary
