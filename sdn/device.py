"""Choosing the compute device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``, with an optional CPU fallback."""

from __future__ import annotations

import warnings

import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def resolve_device(request: str = "auto", allow_cpu_fallback: bool = False) -> torch.device:
    """Turn a device request into a :class:`torch.device`.

    ``"auto"`` is CUDA when a GPU is available, else the CPU. ``"cuda"`` without a GPU raises RuntimeError, unless
    ``allow_cpu_fallback`` is set: then it warns and returns the CPU.
    """
    name = request.strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if torch.cuda.is_available():
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
