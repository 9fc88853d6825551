"""One running command per output folder: an exclusive ``flock`` on ``<folder>/.sdn-run.lock``.

Two processes writing the same folder (two clones or users sharing one ``results:`` folder, or a rerun while the
trainer of a killed Snakemake is still running) would interleave checkpoints, logs and journals. The command
holding the lock writes who it is (pid, host, start time, command line) into the lock file; a second command on
the same folder is refused at once with that description. The kernel releases the lock when the holder dies,
SIGKILL included, so a stale lock file never blocks anything: only a live holder does.

The lock file is left in place on release (removing it would let two later processes lock two different files);
its content is cleared so that it no longer names a holder.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

LOCK_NAME = ".sdn-run.lock"


class FolderBusyError(RuntimeError):
    """Another live process holds the lock of this output folder."""


def lock_path(folder: str | os.PathLike[str]) -> Path:
    return Path(folder) / LOCK_NAME


def describe_holder(path: Path) -> str:
    """The holder as written in the lock file, in words (or why it is unknown)."""
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        info = {}
    if not isinstance(info, dict) or not info:
        return "a process that has not yet written its details"
    started = info.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(started)) if isinstance(started, int | float) else "?"
    pid, host, command = info.get("pid", "?"), info.get("host", "?"), info.get("command", "?")
    return f"pid {pid} on host {host}, started {when}, command: {command}"


@contextmanager
def folder_lock(
    folder: str | os.PathLike[str], command: Sequence[str] | None = None, scratch: Sequence[str] = ()
) -> Iterator[Path]:
    """Hold ``folder``'s run lock for the block; raise FolderBusyError naming the holder if another process has it.

    The folder is created if needed; when this call created it and nothing but the lock file (and files whose
    names start with one of ``scratch``: the tracking journal) is left at the end (a command that failed before
    writing anything), the folder is removed again.
    """
    target = Path(folder)
    created = not target.exists()
    target.mkdir(parents=True, exist_ok=True)
    path = lock_path(target)
    handle = open(path, "a+")  # noqa: SIM115 - held for the block; the kernel drops the lock if we die
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FolderBusyError(
                f"output folder {target} is in use by another running command ({describe_holder(path)}); "
                f"wait for it to finish or stop it; the lock is {path} and is released when that process exits"
            ) from None
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.time(),
            "command": " ".join(command if command is not None else sys.argv),
        }
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(info) + "\n")
        handle.flush()
        try:
            yield path
        finally:
            handle.seek(0)
            handle.truncate()
            handle.flush()
            left = [p for p in target.iterdir() if p.name != LOCK_NAME]
            if created and all(p.is_file() and p.name.startswith(tuple(scratch or ["\0"])) for p in left):
                for leftover in left:
                    leftover.unlink(missing_ok=True)
                path.unlink(missing_ok=True)
                try:
                    target.rmdir()
                except OSError:
                    pass  # another command has started writing there meanwhile
    finally:
        handle.close()
