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
from sdn.device import cpu_model
from sdn.outputs import compact_outputs

MANIFEST = "MANIFEST.sha256"
# where the published runs' checkpoints go in a repository (git-ignored: only their sha256 is published)
CHECKPOINTS_DIR = "checkpoints"
RUN_FILES = ("meta.json", "metrics.json", "history.csv")


def sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def code_version(repo: str | os.PathLike[str]) -> dict[str, Any]:
    """``git_commit`` (None outside a git checkout) and ``source_sha256``: a digest of every ``sdn/**/*.py``.

    The digest identifies the code even where the tree was copied without ``.git`` (a GPU machine); there
    ``SDN_COMMIT`` (exported by whoever starts the run) names the commit.
    """
    from sdn.checkpoint import git_commit  # imports torch: only where the code's version is asked for

    repo = Path(repo)
    dirty: bool | None = None
    try:
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
        "git_commit": git_commit(repo),
        "git_dirty": dirty,  # uncommitted changes under sdn/ or scripts/ (None: no git)
        "source_sha256": digest.hexdigest(),
    }


def environment() -> dict[str, Any]:
    """Python, torch and CUDA versions, the GPU names (empty without CUDA), the CPU's model and core count."""
    import torch

    cuda = torch.cuda.is_available()
    return {
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
    }


def publish_run(
    run_dir: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    provenance: Mapping[str, Any],
    *,
    top_k: int | None = None,
) -> Path:
    """Copy a finished run (``sdn train`` + ``sdn evaluate`` outputs) into ``dest`` in the published form.

    ``top_k``: keep only each row's k largest logits (:func:`sdn.outputs.compact_outputs`); None keeps all, as
    float16.
    """
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
    io.save_npz(out / "outputs.npz", **compact_outputs(arrays, top_k=top_k, source=str(run / "outputs.npz")))
    record = dict(provenance)
    checkpoint = run / "model.pt"
    if checkpoint.is_file():
        record["checkpoint"] = {
            "file": "model.pt",
            "sha256": sha256_file(checkpoint),
            "bytes": checkpoint.stat().st_size,
        }
    record["logits"] = "float16, shifted so each row's maximum is 0 (softmax and argmax unchanged)" + (
        f"; only the {top_k} largest per row, the rest as one log-sum-exp (sdn.outputs.compact_outputs)"
        if top_k
        else ""
    )
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
