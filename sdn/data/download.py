"""Downloading and checking archives: streamed download, checksum verification, safe zip extraction.

A checksum is written ``"<algorithm>:<hex digest>"`` (``"sha256:..."``, ``"md5:..."``); a bare hex digest means
SHA-256. A download that fails its checksum never lands under its final name, and a cached copy that fails it is
removed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import urllib.request
import zipfile
from pathlib import Path

from sdn.io import atomic_path

log = logging.getLogger(__name__)

_CHUNK = 1 << 20


def parse_checksum(checksum: str) -> tuple[str, str]:
    """Split ``"algo:hex"`` (or a bare SHA-256 hex digest) into ``(algorithm, lower-case digest)``."""
    algorithm, sep, digest = checksum.partition(":")
    if not sep:
        algorithm, digest = "sha256", checksum
    algorithm = algorithm.lower()
    if algorithm not in hashlib.algorithms_guaranteed:
        raise ValueError(f"unknown checksum algorithm {algorithm!r} in {checksum!r}; use sha256:<hex> or md5:<hex>")
    digest = digest.strip().lower()
    if not digest or any(ch not in "0123456789abcdef" for ch in digest):
        raise ValueError(f"checksum {checksum!r} is not a hex digest")
    return algorithm, digest


def file_digest(path: str | os.PathLike[str], algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in chunks."""
    hasher = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            hasher.update(chunk)
    return hasher.hexdigest()


class ChecksumError(ValueError):
    """A file's digest differs from the expected one."""


def verify_checksum(path: str | os.PathLike[str], checksum: str, *, name: str | None = None) -> None:
    """Raise :class:`ChecksumError` naming the file, the expected and the actual digest when they differ."""
    algorithm, expected = parse_checksum(checksum)
    actual = file_digest(path, algorithm)
    if actual != expected:
        raise ChecksumError(
            f"checksum mismatch for {name or path}: expected {algorithm} {expected}, got {actual} "
            "(the file is corrupt or truncated)"
        )


def download(url: str, dest: str | os.PathLike[str], *, checksum: str, timeout: float = 60.0) -> Path:
    """Fetch ``url`` into ``dest`` and verify it; an existing ``dest`` that verifies is reused.

    An existing ``dest`` that fails its checksum is removed and fetched again. A fetched file that fails its
    checksum is removed and :class:`ChecksumError` is raised. Network failures raise :class:`OSError`
    (``urllib.error.URLError`` is one).
    """
    target = Path(dest)
    if target.exists():
        try:
            verify_checksum(target, checksum)
            return target
        except ChecksumError as err:
            log.warning("%s; removing it and downloading again", err)
            target.unlink()
    log.info("downloading %s -> %s", url, target)
    with atomic_path(target) as tmp:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as out:
            shutil.copyfileobj(response, out, _CHUNK)
        try:
            verify_checksum(tmp, checksum, name=f"{target} (downloaded from {url})")
        except ChecksumError as err:
            raise ChecksumError(f"{err}; the bad file was removed") from None
    return target


def extract_zip(archive: str | os.PathLike[str], dest_dir: str | os.PathLike[str], top: str) -> Path:
    """Extract ``archive`` (whose entries all live under ``top/``) into ``dest_dir/top``; return that folder.

    Extraction goes to a temporary folder beside the target, renamed on success, so a half-extracted tree never
    sits under the final name. Entries that would escape the folder (absolute paths, ``..``) are refused.
    """
    dest = Path(dest_dir)
    final = dest / top
    dest.mkdir(parents=True, exist_ok=True)
    staging = dest / f".{top}.extracting-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with zipfile.ZipFile(archive) as handle:
            for member in handle.namelist():
                parts = Path(member).parts
                if Path(member).is_absolute() or ".." in parts:
                    raise ValueError(f"{archive}: refusing unsafe entry {member!r}")
                if not parts or parts[0] != top:
                    raise ValueError(f"{archive}: entry {member!r} is not under {top}/ (not the expected archive)")
            handle.extractall(staging)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(staging / top, final)
    except zipfile.BadZipFile as err:
        raise ValueError(f"{archive} is not a readable zip file: {err}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


__all__ = [
    "ChecksumError",
    "download",
    "extract_zip",
    "file_digest",
    "parse_checksum",
    "verify_checksum",
]
