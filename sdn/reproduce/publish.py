"""The published form of a finished run: ``reproduction/<dataset>/<arch>/s<seed>/<variant>/``.

Each run folder holds the workflow's own files (``meta.json``, ``metrics.json``, ``history.csv``), a compact
``outputs.npz`` (every exit's logits as float16, each row shifted to a maximum of 0; labels, exit costs and
positions unchanged) and ``provenance.json`` (code version, torch/CUDA/GPU, wall times, the checkpoint's
sha256: checkpoints stay out of git). ``MANIFEST.sha256`` at the top of the tree lists every file's sha256
(``sha256sum -c`` format); :func:`verify` checks it.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from sdn import io

MANIFEST = "MANIFEST.sha256"
RUN_FILES = ("meta.json", "metrics.json", "history.csv")
LOGIT_FLOOR = 60000.0  # below float16's largest finite value (65504)


def sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def compact_outputs(arrays: Mapping[str, np.ndarray], *, source: str = "outputs") -> dict[str, np.ndarray]:
    """``*_logits`` shifted so that every row's largest logit is 0, clipped at -``LOGIT_FLOOR``, as float16.

    Softmax, argmax, confidences and every analysis built on them are unchanged by the shift (up to float16 rounding,
    which the shift makes finest where it matters: near the top logits); a logit ``LOGIT_FLOOR`` below the row's
    largest has probability 0 in float64 either way. Everything else is kept as it is. NaN or inf is a ValueError.
    """
    compact: dict[str, np.ndarray] = {}
    for key, value in arrays.items():
        if key.endswith("_logits"):
            value = np.asarray(value, dtype=np.float64)
            if value.size and not np.isfinite(value).all():
                raise ValueError(f"{source}: {key} holds NaN or inf; re-evaluate the checkpoint")
            if value.size:
                value = np.clip(value - value.max(axis=-1, keepdims=True), -LOGIT_FLOOR, 0.0)
            value = value.astype(np.float16)
        compact[key] = value
    return compact


def code_version(repo: str | os.PathLike[str]) -> dict[str, Any]:
    """``git_commit`` (None outside a git checkout) and ``source_sha256``: a digest of every ``sdn/**/*.py``.

    The digest identifies the code even where the tree was copied without ``.git`` (a GPU machine); there
    ``SDN_COMMIT`` (exported by whoever starts the run) names the commit.
    """
    repo = Path(repo)
    commit: str | None = None
    dirty: bool | None = None
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10, check=True
        )
        commit = result.stdout.strip() or None
        status = subprocess.run(
            ["git", "status", "--porcelain", "--", "sdn", "scripts"],
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        dirty = bool(status.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    digest = hashlib.sha256()
    for path in sorted((repo / "sdn").rglob("*.py")):
        digest.update(path.relative_to(repo).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return {
        "git_commit": os.environ.get("SDN_COMMIT") or commit,
        "git_dirty": dirty,  # uncommitted changes under sdn/ or scripts/ (None: no git)
        "source_sha256": digest.hexdigest(),
    }


def environment() -> dict[str, Any]:
    """Python, torch and CUDA versions and the GPU names (empty without CUDA)."""
    import torch

    cuda = torch.cuda.is_available()
    return {
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
    }


def publish_run(run_dir: str | os.PathLike[str], dest: str | os.PathLike[str], provenance: Mapping[str, Any]) -> Path:
    """Copy a finished run (``sdn train`` + ``sdn evaluate`` outputs) into ``dest`` in the published form."""
    run, out = Path(run_dir), Path(dest)
    missing = [name for name in (*RUN_FILES, "outputs.npz") if not (run / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"run {run} is not finished: missing {', '.join(missing)} (train with `sdn train`, then `sdn evaluate`)"
        )
    out.mkdir(parents=True, exist_ok=True)
    for name in RUN_FILES:
        shutil.copyfile(run / name, out / name)
    with np.load(run / "outputs.npz", allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    io.save_npz(out / "outputs.npz", **compact_outputs(arrays, source=str(run / "outputs.npz")))
    record = dict(provenance)
    checkpoint = run / "model.pt"
    if checkpoint.is_file():
        record["checkpoint"] = {
            "file": "model.pt",
            "sha256": sha256_file(checkpoint),
            "bytes": checkpoint.stat().st_size,
        }
    record["logits"] = "float16, shifted so each row's maximum is 0 (softmax and argmax unchanged)"
    io.write_json(out / "provenance.json", record)
    return out


def write_manifest(root: str | os.PathLike[str]) -> Path:
    """Write ``root/MANIFEST.sha256``: one ``<sha256>  <relative path>`` line per file, sorted by path."""
    root = Path(root)
    lines = [f"{sha256_file(p)}  {p.relative_to(root).as_posix()}" for p in _files(root)]
    io.write_text(root / MANIFEST, "\n".join(lines) + ("\n" if lines else ""))
    return root / MANIFEST


def verify(root: str | os.PathLike[str]) -> None:
    """Check every file under ``root`` against ``MANIFEST.sha256``; ValueError lists what differs."""
    root = Path(root)
    manifest = root / MANIFEST
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest} is missing; write it with sdn.reproduce.publish.write_manifest")
    listed: dict[str, str] = {}
    for number, line in enumerate(manifest.read_text().splitlines(), 1):
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64:
            raise ValueError(f"{manifest}:{number}: expected '<sha256>  <path>', got {line!r}")
        listed[name] = digest
    present = {p.relative_to(root).as_posix(): p for p in _files(root)}
    problems = [f"missing: {name}" for name in sorted(set(listed) - set(present))]
    problems += [f"not in the manifest: {name}" for name in sorted(set(present) - set(listed))]
    problems += [
        f"changed: {name}"
        for name in sorted(set(listed) & set(present))
        if sha256_file(present[name]) != listed[name]
    ]
    if problems:
        raise ValueError(f"{manifest} does not match the files: " + "; ".join(problems))


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST and not p.name.startswith("."))


def read_provenance(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(run_dir) / "provenance.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing (every published run carries one)")
    return json.loads(path.read_text())
