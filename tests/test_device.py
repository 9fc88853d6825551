"""Device choice: jobs of one workflow spread over several GPUs by claiming slot locks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from sdn import device as device_module
from sdn.device import GPU_LOCK_DIR_ENV, claim_gpu, resolve_device

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def release_claims() -> Iterator[None]:
    yield
    for handle in device_module._held_slots:
        handle.close()
    device_module._held_slots.clear()
    device_module._claimed_gpu = None


def test_claims_spread_over_gpus_and_reuse_released_slots(tmp_path: Path) -> None:
    claims = [claim_gpu(3, tmp_path) for _ in range(7)]
    assert claims == [(0, 0), (1, 0), (2, 0), (0, 1), (1, 1), (2, 1), (0, 2)]
    # the job on GPU 1, slot 0 ends: GPU 1 now runs the fewest jobs, and its free slot is reused
    device_module._held_slots[1].close()
    assert claim_gpu(3, tmp_path) == (1, 0)
    assert claim_gpu(3, tmp_path) == (1, 2)  # GPUs 1 and 2 tie at 2 jobs: the lower index, its lowest free slot


def test_a_killed_job_releases_its_gpu(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from sdn.device import claim_gpu; print(claim_gpu(2, sys.argv[1]), flush=True); "
            "time.sleep(60)",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "(0, 0)"
        assert claim_gpu(2, tmp_path) == (1, 0)  # GPU 0 is taken by the other process
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    time.sleep(0.1)
    assert claim_gpu(2, tmp_path) == (0, 0)  # its lock went with it


def test_resolve_device_claims_once_per_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    chosen: list[int] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setenv(GPU_LOCK_DIR_ENV, str(tmp_path))
    claim_gpu(2, tmp_path)  # another job already runs on GPU 0
    assert resolve_device("auto") == torch.device("cuda", 1)
    assert resolve_device("cuda") == torch.device("cuda", 1)  # the same claim, not a second slot
    assert chosen == [1]
    assert resolve_device("cuda:0") == torch.device("cuda", 0)  # an explicit index is taken as asked
    monkeypatch.delenv(GPU_LOCK_DIR_ENV)
    device_module._claimed_gpu = None
    assert resolve_device("cuda") == torch.device("cuda")  # outside the workflow: no claim


def test_claim_needs_a_gpu(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        claim_gpu(0, tmp_path)
