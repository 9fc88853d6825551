"""Choosing the compute device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``, with an optional CPU fallback.

Several jobs of one workflow on a machine with several GPUs: Snakemake's ``gpu`` resource only limits how many run at
once, it does not say which GPU each gets. With ``SDN_GPU_LOCK_DIR`` set (the workflow sets it) and more than one GPU
visible, a job asking for ``auto`` or ``cuda`` claims the GPU running the fewest jobs by holding an exclusive lock on
a slot file there until it exits (the kernel drops the lock even on SIGKILL), so jobs spread evenly over the GPUs,
``--resources gpu=2`` per GPU included. ``cuda:N`` is taken as asked; under SLURM each job sees only its own GPU.
"""

from __future__ import annotations

import fcntl
import logging
import os
import platform
import warnings
from pathlib import Path
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where a device is resolved: `sdn` commands that need none start faster
    import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda")
GPU_LOCK_DIR_ENV = "SDN_GPU_LOCK_DIR"
log = logging.getLogger(__name__)
_held_slots: list[IO[str]] = []  # the slot locks this process holds, open until it exits
_claimed_gpu: int | None = None  # the GPU this process claimed: later requests get the same one


def _try_lock(path: Path) -> IO[str] | None:
    handle = open(path, "a")  # noqa: SIM115 - held open for the life of the process when the lock is taken
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def _held_count(lock_dir: Path, gpu: int) -> int:
    """How many slots of ``gpu`` other processes hold now."""
    count = 0
    for path in lock_dir.glob(f"gpu{gpu}.slot*.lock"):
        handle = _try_lock(path)
        if handle is None:
            count += 1
        else:
            handle.close()  # closing drops the probe's lock
    return count


def claim_gpu(gpu_count: int, lock_dir: str | os.PathLike[str]) -> tuple[int, int]:
    """Claim a slot on the GPU with the fewest claimed slots (ties: the lowest index); returns ``(gpu, slot)``.

    The slot stays claimed until this process exits. Claims are serialised by a lock on ``lock_dir/claim.lock``.
    """
    if gpu_count < 1:
        raise ValueError(f"gpu_count must be at least 1, got {gpu_count}")
    folder = Path(lock_dir)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "claim.lock", "a") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)  # released when the file closes
        gpu = min(range(gpu_count), key=lambda g: (_held_count(folder, g), g))
        slot = 0
        while (handle := _try_lock(folder / f"gpu{gpu}.slot{slot}.lock")) is None:
            slot += 1
        _held_slots.append(handle)
    return gpu, slot


def _claimed_cuda_device() -> torch.device:
    import torch

    global _claimed_gpu
    count = torch.cuda.device_count()
    lock_dir = os.environ.get(GPU_LOCK_DIR_ENV)
    if count < 2 or not lock_dir:
        return torch.device("cuda")
    if _claimed_gpu is None:
        _claimed_gpu, slot = claim_gpu(count, lock_dir)
        log.info("claimed GPU %d of %d (slot %d, locks in %s)", _claimed_gpu, count, slot, lock_dir)
        torch.cuda.set_device(_claimed_gpu)
    return torch.device("cuda", _claimed_gpu)


def resolve_device(request: str = "auto", allow_cpu_fallback: bool = False) -> torch.device:
    """Turn a device request into a :class:`torch.device`.

    ``"auto"`` is CUDA when a GPU is available, else the CPU. ``"cuda"`` without a GPU raises RuntimeError, unless
    ``allow_cpu_fallback`` is set: then it warns and returns the CPU. Without an index, and with several GPUs and
    ``SDN_GPU_LOCK_DIR`` set, the least busy GPU is claimed (see the module's docstring).
    """
    import torch

    name = request.strip().lower()
    if name == "auto":
        return _claimed_cuda_device() if torch.cuda.is_available() else torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if torch.cuda.is_available():
            if name == "cuda":
                return _claimed_cuda_device()
            device = torch.device(name)
            if device.index is not None and device.index >= torch.cuda.device_count():
                raise RuntimeError(f"{name} requested but only {torch.cuda.device_count()} GPU(s) are visible")
            return device
        message = (
            "CUDA requested but no GPU is available (torch.cuda.is_available() is False); "
            "use --device cpu or --device auto"
        )
        if allow_cpu_fallback:
            warnings.warn(f"{message}; falling back to the CPU as allowed", RuntimeWarning, stacklevel=2)
            return torch.device("cpu")
        raise RuntimeError(message)
    raise ValueError(f"unknown device {request!r}; use one of {', '.join(DEVICE_CHOICES)} or cuda:N")


SIMD_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")  # what sets a CPU's training speed, widest last


def cpu_model(cpuinfo: str | os.PathLike[str] = "/proc/cpuinfo") -> str:
    """The CPU's model name with its family, model and vector extensions where Linux's /proc/cpuinfo gives them
    ("AMD EPYC (family 25 model 1; avx2)": virtual machines often show a bare vendor name, and two such CPUs can
    train at twice the speed of each other); elsewhere what :mod:`platform` knows, or "unknown"."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        text = ""
    first: dict[str, str] = {}
    for line in text.split("\n\n")[0].splitlines():  # the first processor's block
        key, _, value = line.partition(":")
        first.setdefault(key.strip(), value.strip())
    name = first.get("model name")
    if not name:
        return platform.processor() or platform.machine() or "unknown"
    details = []
    if "cpu family" in first and "model" in first:
        details.append(f"family {first['cpu family']} model {first['model']}")
    flags = set(first.get("flags", "").split())
    if simd := [flag for flag in SIMD_FLAGS if flag in flags]:
        details.append(", ".join(simd))
    return f"{name} ({'; '.join(details)})" if details else name
