"""Backbones, internal classifiers and the multi-exit wrapper. Front door: :func:`create`."""

from sdn.models.exits import InternalClassifier, MixedPool
from sdn.models.multiexit import BackboneParts, MultiExitNet
from sdn.models.registry import ArchSpec, create, get_spec, list_archs, register

__all__ = [
    "ArchSpec",
    "BackboneParts",
    "InternalClassifier",
    "MixedPool",
    "MultiExitNet",
    "create",
    "get_spec",
    "list_archs",
    "register",
]
