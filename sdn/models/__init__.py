"""Backbones, internal classifiers and the multi-exit wrapper. Front door: :func:`create`.

Importing the package registers the built-in backbones (``sdn.models.builtin``), as timm does, so the registry is
complete before anyone looks a name up.
"""

from sdn.models import (
    builtin,  # noqa: F401  (registers vgg16bn, resnet56, wrn32_4, mobilenet)
    external,  # noqa: F401  (resolves torchvision/<builder> and timm/<name>)
)
from sdn.models.exits import InternalClassifier, MixedPool
from sdn.models.factory import create
from sdn.models.multiexit import BackboneParts, MultiExitNet
from sdn.models.registry import ArchSpec, get_spec, list_archs, register

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
