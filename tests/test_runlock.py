"""One running command per output folder: a second one is refused naming the holder; SIGKILL frees the lock."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sdn.cli import main
from sdn.runlock import LOCK_NAME, FolderBusyError, folder_lock

HOLDER = """
import sys, time
from sdn.runlock import folder_lock
with folder_lock(sys.argv[1], ["sdn", "train", "--out", sys.argv[1]]):
    print("locked", flush=True)
    time.sleep(600)
"""


def start_holder(folder: Path) -> subprocess.Popen:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    return holder


def test_second_command_on_a_busy_folder_is_refused_naming_the_holder(tmp_path: Path, capsys) -> None:
    results = tmp_path / "results"
    results.mkdir()
    out = tmp_path / "report"
    holder = start_holder(out)
    try:
        assert main(["report", "--results", str(results), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert f"output folder {out} is in use" in err
        assert f"pid {holder.pid}" in err and socket.gethostname() in err and "sdn train --out" in err
        assert not (out / "summary.md").exists()  # the refused command wrote nothing
        with pytest.raises(FolderBusyError, match=str(out)):
            with folder_lock(out):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # the kernel dropped the dead holder's lock: the folder is free again, the stale lock file is no obstacle
    assert (out / LOCK_NAME).exists()
    assert main(["report", "--results", str(results), "--out", str(out)]) == 0
    assert (out / "summary.md").is_file()
    assert (out / LOCK_NAME).read_text() == ""  # released: names no holder


def test_lock_is_released_on_error_and_a_fresh_empty_folder_is_removed(tmp_path: Path) -> None:
    out = tmp_path / "new" / "folder"
    with pytest.raises(ZeroDivisionError):
        with folder_lock(out):
            _ = 1 / 0
    assert not out.exists()
    with folder_lock(out):
        (out / "result.txt").write_text("x")
    with folder_lock(out):  # released after the block: taken again at once
        pass
    assert (out / "result.txt").is_file()


def test_nested_lock_in_one_process_is_refused(tmp_path: Path) -> None:
    with folder_lock(tmp_path):
        with pytest.raises(FolderBusyError, match="in use by another running command"):
            with folder_lock(tmp_path):
                pass


LAUNCHER = (
    "import sys; sys.path.insert(0, sys.argv[1]); import conftest; conftest.register_tiny_arch(); "
    "from sdn.cli import main; raise SystemExit(main(sys.argv[2:]))"
)


def _cli_train(data: Path, out: Path, *, slow: str | None = None) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SDN_TEST_SLOW", "SDN_TRACKING_URI")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    if slow:
        env["SDN_TEST_SLOW"] = slow
    args = ["train", "--recipe", "sdn", "--arch", "tiny_test", "--data", str(data), "--out", str(out)]
    args += ["--epochs", "4", "--batch-size", "16", "--lr", "0.05", "--seed", "7", "--device", "cpu"]
    return subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, str(Path(__file__).resolve().parent), *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_second_trainer_on_the_same_folder_is_refused_until_the_first_dies(tiny, tmp_path: Path) -> None:
    """Issue 12, fault 6: an orphaned trainer (its Snakemake was SIGKILLed) and a rerun in the same folder."""
    data = tiny.prepared(tmp_path / "data")
    out = tmp_path / "run"
    first = _cli_train(data, out, slow="0.05")
    try:
        deadline = time.monotonic() + 120
        while not (out / LOCK_NAME).is_file() or not (out / LOCK_NAME).read_text():
            assert first.poll() is None, first.stderr.read() if first.stderr else ""
            assert time.monotonic() < deadline, "the first trainer never took the lock"
            time.sleep(0.01)
        second = _cli_train(data, out)
        _, err = second.communicate(timeout=300)
        assert second.returncode == 2, err
        assert f"output folder {out} is in use" in err and f"pid {first.pid}" in err and "train --recipe sdn" in err
        assert first.poll() is None  # the refused rerun did not disturb the running one
        first.send_signal(signal.SIGKILL)
        first.wait()
    finally:
        if first.poll() is None:
            first.kill()
        first.wait()
    rerun = _cli_train(data, out)
    _, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err
    assert (out / "model.pt").is_file()
