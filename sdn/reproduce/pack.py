"""Tar archives cut into parts of bounded size, and put back together.

A GPU machine returns at most a few files of bounded size (the device tool: 8 files of at most 16 MiB), so every
archive the runner writes is split into ``<name>.tar.00``, ``<name>.tar.01``, ... of at most ``part_bytes`` each;
:func:`unpack` concatenates the parts in order and extracts them.
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Iterable
from pathlib import Path

MIB = 1024 * 1024
RECORD = tarfile.RECORDSIZE  # 10240


def pack(
    root: str | os.PathLike[str], members: Iterable[str], out_dir: str | os.PathLike[str], name: str, part_bytes: int
) -> list[Path]:
    """Tar ``members`` (paths relative to ``root``) and write the archive to ``out_dir`` in parts; return them.

    An archive of no members still gives one (small) part, so a reader always finds ``<name>.tar.00``.
    """
    if part_bytes < 1:
        raise ValueError(f"part_bytes must be positive, got {part_bytes}")
    root = Path(root)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for member in sorted(set(members)):
            tar.add(root / member, arcname=member)
    data = buffer.getvalue()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(f"{name}.tar.[0-9][0-9]"):
        stale.unlink()
    parts = []
    for index, start in enumerate(range(0, max(len(data), 1), part_bytes)):
        part = out / f"{name}.tar.{index:02d}"
        tmp = part.with_name(f".{part.name}.tmp")
        tmp.write_bytes(data[start : start + part_bytes])
        os.replace(tmp, part)
        parts.append(part)
    return parts


def archive_size(root: str | os.PathLike[str], members: Iterable[str]) -> int:
    """Bytes the tar of ``members`` takes: a 512-byte header per file (plus a pax header for a long name), the data
    in 512-byte blocks, two end blocks, all rounded up to tar's 10240-byte records."""
    total = 1024
    for member in members:
        size = (Path(root) / member).stat().st_size
        total += 512 + (1536 if len(member) > 99 else 0) + (size + 511) // 512 * 512
    return -(-total // RECORD) * RECORD


def parts_of(folder: str | os.PathLike[str], name: str) -> list[Path]:
    """The parts ``<name>.tar.NN`` in ``folder``, in order; FileNotFoundError when there are none."""
    parts = sorted(Path(folder).glob(f"{name}.tar.[0-9][0-9]"))
    if not parts:
        raise FileNotFoundError(f"no {name}.tar.NN parts in {folder} (written by scripts/gpu-reproduce.sh)")
    expected = [f"{name}.tar.{i:02d}" for i in range(len(parts))]
    if [p.name for p in parts] != expected:
        raise ValueError(f"{folder}: parts of {name}.tar are not consecutive: {[p.name for p in parts]}")
    return parts


def unpack(folder: str | os.PathLike[str], name: str, dest: str | os.PathLike[str]) -> list[str]:
    """Join the parts of ``<name>.tar`` in ``folder`` and extract them into ``dest``; return the member names."""
    data = b"".join(p.read_bytes() for p in parts_of(folder, name))
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
        tar.extractall(dest, filter="data")
        return tar.getnames()
