"""What a device call can carry to the next one, and whether a job still fits in the time left.

A device call carries in at most :data:`CARRY_LIMIT_MIB` (the working tree, the data archive and the resume pack of
the previous call). A stopped job's resume checkpoint (``last.pt``: fp32 weights and SGD momentum) travels whole when
it fits in what is left for the resume pack, or else as its weights only (the optimizer's state left out: SGD's
momentum restarts from zero on resume, recorded in the run's provenance). A job whose weights alone do not fit either
(VGG-16-BN's, about 59 MiB on CIFAR-10) cannot continue in another call: stopped, it starts over. The runner starts
those jobs first in a call and does not start one that its measured epoch times say cannot finish before the call
ends.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from sdn.reproduce.pack import MIB

CARRY_LIMIT_MIB = 64.0  # what one device call takes in: working tree + carried paths
TREE_RESERVE_MIB = 8.0  # the working tree (about 1.5 MiB) and a margin
# an epoch's cost relative to the CNN's: SDN training adds the ICs' forward and backward passes; IC-only training
# runs the frozen backbone forward only and trains the ICs (measured on an H200: ResNet-56 SDN 16.9k images/s,
# IC-only 57.6k)
RELATIVE_EPOCH_COST = {"cnn": 1.0, "sdn": 1.1, "ic_only": 0.35}


def resume_budget_mib(archive: str | os.PathLike[str] | None) -> float:
    """MiB left for the resume pack in a call that also carries ``archive`` and the working tree."""
    archive_mib = Path(archive).stat().st_size / MIB if archive is not None and Path(archive).is_file() else 0.0
    return max(CARRY_LIMIT_MIB - TREE_RESERVE_MIB - archive_mib, 0.0)


def resume_checkpoint_mib(arch: str, num_classes: int, input_size: int, *, optimizer: bool = True) -> float:
    """About the size of ``arch``'s ``last.pt`` in SDN training: 4 bytes a parameter for the weights and (with
    ``optimizer``) 4 for SGD's momentum, 4 a buffer (batch-norm statistics), and a little for the rest."""
    from sdn.models import create  # torch: only where a grid is planned

    model = create(arch, num_classes=num_classes, input_size=input_size)
    parameters = sum(p.numel() for p in model.parameters())
    buffers = sum(b.numel() for b in model.buffers())
    return ((8 if optimizer else 4) * parameters + 4 * buffers) / MIB + 0.5


def carryable_archs(archs: Iterable[str], num_classes: int, input_size: int, budget_mib: float) -> dict[str, bool]:
    """Per arch: does a stopped job's ``last.pt``, at least as its weights only, fit in ``budget_mib`` (so it can
    resume in the next call)?"""
    return {
        arch: resume_checkpoint_mib(arch, num_classes, input_size, optimizer=False) <= budget_mib for arch in archs
    }


def epoch_seconds(measured: Mapping[tuple[str, str], float], arch: str, recipe: str) -> float | None:
    """Seconds an epoch of ``arch`` under training ``recipe`` takes: measured, or scaled from a measured recipe of
    the same arch by :data:`RELATIVE_EPOCH_COST` (the slowest such estimate); None where nothing of ``arch`` is
    measured."""
    if (arch, recipe) in measured:
        return measured[(arch, recipe)]
    scaled = [
        seconds / RELATIVE_EPOCH_COST[other] * RELATIVE_EPOCH_COST[recipe]
        for (a, other), seconds in measured.items()
        if a == arch
    ]
    return max(scaled) if scaled else None
