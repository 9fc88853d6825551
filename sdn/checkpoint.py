"""The one owner of a trained network's files: ``model.pt``, ``last.pt``, ``meta.json`` and ``history.csv``.

``model.pt`` is ``{"state_dict": ..., "meta": ...}`` (tensors on the CPU); ``meta.json`` beside it is the same meta
as JSON (arch, recipe, seed, exit positions, per-exit cost, holdout accuracy, commit, ...); ``history.csv`` has one
row per epoch. ``last.pt`` is the resume state written after every epoch (model, optimizer, scheduler, history and
the RNG state of :func:`get_rng_state`) and removed when ``model.pt`` lands.
Every file is written atomically (:mod:`sdn.io`). The layout is described in docs/internals.md.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import io as _io
import os
import random
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sdn import io
from sdn.models import MultiExitNet, create
from sdn.models.cost import profile_model
from sdn.models.registry import DEFAULT_IC_INPUT

MODEL = "model.pt"
LAST = "last.pt"
META = "meta.json"
HISTORY = "history.csv"


def git_commit(tree: str | os.PathLike[str] | None = None) -> str | None:
    """The commit of the source tree at ``tree`` (default: this package's): ``SDN_COMMIT`` where whoever started the
    run names it (a tree copied onto a GPU machine may carry a stale ``.git``), else git's HEAD; None outside a git
    checkout. The one place that decides which commit a run's code is (meta.json and provenance.json)."""
    if os.environ.get("SDN_COMMIT"):
        return os.environ["SDN_COMMIT"]
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(tree) if tree is not None else Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None


def cost_record(model: MultiExitNet, input_size: int) -> dict[str, Any]:
    """Per-exit params/MACs/ops/fraction from :func:`sdn.models.cost.profile_model`, as plain data.

    Profiled on a CPU float32 copy, so the caller's model is untouched.
    """
    probe = copy.deepcopy(model).to("cpu", torch.float32).eval()
    cost = profile_model(probe, input_size)
    return {"cnn": _plain(cost.cnn), "exits": [_plain(e) for e in cost.exits]}


def _plain(record: Any) -> dict[str, Any]:
    return dataclasses.asdict(record) if dataclasses.is_dataclass(record) else dict(record)


def read(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(state_dict, meta)`` of a ``model.pt`` (tensors on the CPU), checked to be an sdn checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    remedy = f"retrain it (delete {path} and {path.parent / META}, then rerun `sdn train` or the workflow)"
    io.verify_sha256(path, _recorded_model_sha256(path), remedy)
    try:
        payload = io.load_torch(path)
    except Exception as error:  # noqa: BLE001 - any unreadable checkpoint is reported the same way
        raise io.CorruptFileError(f"{path} cannot be read as a checkpoint ({error}); {remedy}") from error
    if not isinstance(payload, dict) or "state_dict" not in payload or "meta" not in payload:
        raise ValueError(f"{path} is not an sdn checkpoint (expected a dict with 'state_dict' and 'meta')")
    broken = [k for k, v in payload["state_dict"].items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if broken:
        raise io.CorruptFileError(f"{path} holds non-finite weights ({', '.join(broken[:5])}); {remedy}")
    return payload["state_dict"], payload["meta"]


def _recorded_model_sha256(path: Path) -> str | None:
    """``model_sha256`` of the meta.json beside a model.pt (None: not recorded, e.g. a checkpoint copied alone)."""
    meta_file = path.parent / META
    if not meta_file.is_file():
        return None
    recorded = read_meta(path.parent).get("model_sha256")
    return recorded if path.name == MODEL else None


def load_checkpoint(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> tuple[MultiExitNet, dict]:
    """Rebuild the model recorded in a ``model.pt`` and load its weights strictly; returns (model in eval, meta)."""
    state_dict, meta = read(path)
    positions = list(meta["exit_positions"])
    model = create(
        meta["arch"],
        num_classes=meta["num_classes"],
        input_size=meta["input_size"],
        exits=positions if positions else "none",
        alpha_mode=meta.get("alpha_mode", "bounded"),
        ic_input=meta.get("ic_input", DEFAULT_IC_INPUT),
        ic_head=meta.get("ic_head", "paper"),
    )
    model.load_state_dict(state_dict, strict=True)
    return model.to(device).eval(), meta


def save(out_dir: str | os.PathLike[str], model: MultiExitNet, meta: dict[str, Any], history: list[dict]) -> Path:
    """Write ``model.pt``, ``meta.json`` and ``history.csv`` into ``out_dir``, remove ``last.pt``; return model.pt."""
    out = Path(out_dir)
    state_dict = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    (out / META).unlink(missing_ok=True)  # an old meta.json must not vouch for the new model.pt
    io.save_torch({"state_dict": state_dict, "meta": meta}, out / MODEL)
    io.write_json(out / META, {**meta, "model_sha256": io.sha256_file(out / MODEL)})
    io.write_text(out / HISTORY, history_csv(history))
    (out / LAST).unlink(missing_ok=True)
    io.sha256_sidecar(out / LAST).unlink(missing_ok=True)
    return out / MODEL


def read_meta(out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``meta.json`` of a trained network's folder (model.pt's meta plus ``model_sha256``)."""
    path = Path(out_dir) / META
    try:
        meta = io.read_json(path)
    except ValueError as error:
        raise io.CorruptFileError(
            f"{path} is not valid JSON ({error}); rerun `sdn train` for {path.parent} (delete {path} first)"
        ) from error
    if not isinstance(meta, dict):
        raise io.CorruptFileError(f"{path} holds {type(meta).__name__}, not a checkpoint's meta; rerun `sdn train`")
    return meta


def save_resume_state(out_dir: str | os.PathLike[str], state: dict[str, Any]) -> None:
    """Write ``last.pt`` (model, optimizer, scheduler, RNG state, history after a finished epoch) and its sha256
    sidecar ``last.pt.sha256`` (removed first: a run killed in between leaves last.pt unverified, never refused)."""
    path = Path(out_dir) / LAST
    io.sha256_sidecar(path).unlink(missing_ok=True)
    io.save_torch(state, path)
    io.write_sha256_sidecar(path)


def load_resume_state(out_dir: str | os.PathLike[str], device: str | torch.device) -> dict[str, Any] | None:
    """The ``last.pt`` of ``out_dir`` mapped to ``device``, or None when there is none."""
    path = Path(out_dir) / LAST
    if not path.is_file():
        return None
    remedy = f"delete {path} to restart the run from epoch 1"
    io.verify_sha256(path, io.recorded_sha256(path), remedy)
    try:
        state = io.load_torch(path, map_location=device)
    except Exception as error:  # noqa: BLE001 - any unreadable resume state is reported the same way
        raise io.CorruptFileError(f"{path} cannot be read as resume state ({error}); {remedy}") from error
    if not isinstance(state, dict) or "identity" not in state or "epoch" not in state:
        raise io.CorruptFileError(f"{path} is not an sdn resume state (no 'identity'/'epoch'); {remedy}")
    return state


def get_rng_state() -> dict[str, Any]:
    """torch / numpy / random (and CUDA) generator states, as tensors and plain data (``weights_only`` loads them)."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "random": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    # a checkpoint loaded with map_location="cuda" holds its RNG states on the GPU; the generators take CPU bytes
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].cpu().numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    version, internal, gauss = state["random"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def history_csv(history: list[dict[str, float]]) -> str:
    buffer = _io.StringIO()
    if history:
        writer = csv.DictWriter(buffer, fieldnames=list(history[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(history)
    return buffer.getvalue()
