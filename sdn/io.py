"""Atomic file output: every result is written to a temporary name in the same folder, then renamed.

A killed job therefore never leaves a file that looks finished.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``, on error delete it."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; results get the usual permissions
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def read_json(path: str | os.PathLike[str]) -> Any:
    return json.loads(Path(path).read_text())


def save_torch(obj: Any, path: str | os.PathLike[str]) -> None:
    """torch.save through a file handle: the archive's inner folder is then always ``archive`` (saved to a path it
    is the temporary file's random name), so the same tensors give the same bytes and the same sha256."""
    import torch  # here, not at the top: analyses that never touch a checkpoint start without torch

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            torch.save(obj, handle)


def load_torch(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> Any:
    import torch

    return torch.load(path, map_location=map_location, weights_only=True)


def save_npz(path: str | os.PathLike[str], **arrays: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez_compressed(handle, **arrays)


class CorruptFileError(ValueError):
    """A file that cannot be read, or whose content differs from the sha256 recorded when it was written."""


_SHA256: dict[tuple[str, int, int], str] = {}


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The file's sha256 (hex), computed once per process per (path, size, modification time)."""
    file = Path(path)
    stat = file.stat()
    key = (str(file.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _SHA256:
        digest = hashlib.sha256()
        with open(file, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        _SHA256[key] = digest.hexdigest()
    return _SHA256[key]


def verify_sha256(path: str | os.PathLike[str], expected: str | None, remedy: str) -> None:
    """Raise CorruptFileError naming ``path`` when its sha256 differs from ``expected`` (None: not recorded)."""
    if expected is None:
        return
    actual = sha256_file(path)
    if actual != expected:
        raise CorruptFileError(
            f"{path} is corrupt: its sha256 is {actual[:16]}..., but {expected[:16]}... was recorded when it was "
            f"written; {remedy}"
        )


def sha256_sidecar(path: str | os.PathLike[str]) -> Path:
    """``<file>.sha256`` beside ``path``: one line ``<hex>  <name>`` (the format `sha256sum -c` reads)."""
    file = Path(path)
    return file.with_name(f"{file.name}.sha256")


def write_sha256_sidecar(path: str | os.PathLike[str]) -> str:
    """Record the sha256 of ``path`` in its sidecar; return it."""
    digest = sha256_file(path)
    write_text(sha256_sidecar(path), f"{digest}  {Path(path).name}\n")
    return digest


def recorded_sha256(path: str | os.PathLike[str]) -> str | None:
    """The sha256 recorded in the sidecar of ``path``, or None when there is none (the file is then not verified)."""
    sidecar = sha256_sidecar(path)
    if not sidecar.is_file():
        return None
    words = sidecar.read_text().split()
    if not words or len(words[0]) != 64:
        raise CorruptFileError(f"{sidecar} is not a sha256 record (`<hex>  <name>`); delete it and {Path(path)}")
    return words[0]


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} as JSON")
