"""Architecture registry: name -> :class:`ArchSpec`. It registers and looks up, nothing else.

The built-in backbones register themselves in :mod:`sdn.models.builtin`, imported by ``sdn.models``; building a
network from a spec is :func:`sdn.models.factory.create`.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from sdn.models.multiexit import BackboneParts

DEFAULT_IC_INPUT = "post-relu"
BackboneBuilder = Callable[..., BackboneParts]  # builder(*, num_classes: int, input_size: int) -> BackboneParts


@dataclass(frozen=True)
class ArchSpec:
    """What the registry knows about one backbone.

    ``paper_exits`` are the block indices after which the paper attaches ICs; ``original_exits`` those of the
    released code where they differ (MobileNet's 5-IC mask). ``weight_decay`` is the paper's per-arch value.
    ``exit_init`` re-initialises each IC's Linear layer the way the original did for this arch (None: PyTorch
    default).
    """

    name: str
    builder: BackboneBuilder
    paper_exits: tuple[int, ...]
    weight_decay: float
    description: str
    input_sizes: tuple[int, ...] | None = (32, 64)  # None: any input size (torchvision/timm models)
    original_exits: tuple[int, ...] | None = None
    extra: dict[str, object] = field(default_factory=dict)
    exit_init: Callable[[nn.Linear], None] | None = None
    ic_inputs: tuple[str, ...] = (DEFAULT_IC_INPUT,)  # what an IC may read; the builder takes ic_input= if > 1
    paper_cost: tuple[float, ...] | None = None  # set: exits "paper" = the blocks nearest these cost fractions
    takes_weights: bool = False  # the builder takes weights= (a hub weights name or a local state-dict file)


_REGISTRY: dict[str, ArchSpec] = {}
_RESOLVERS: dict[str, Callable[[str], ArchSpec]] = {}  # "torchvision" -> resolver of "torchvision/<name>"


def register_resolver(source: str, resolve: Callable[[str], ArchSpec]) -> None:
    """Names ``<source>/<model>`` are looked up by ``resolve(name)`` (sdn.models.external registers its two)."""
    _RESOLVERS[source] = resolve


def register(spec: ArchSpec) -> ArchSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"architecture {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def list_archs() -> list[str]:
    return sorted(_REGISTRY)


def get_spec(name: str) -> ArchSpec:
    """The spec of a registered name, or of ``torchvision/<builder>`` / ``timm/<name>`` (resolved on first use;
    ``torchvision.<builder>`` / ``timm.<name>`` is the same network under a name that is also a folder name)."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    source = name.partition("/")[0] if "/" in name else name.partition(".")[0]
    if source in _RESOLVERS and source != name:
        return _RESOLVERS[source](name)
    close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.6)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise ValueError(
        f"unknown architecture {name!r}{hint}; known: {', '.join(sorted(_REGISTRY))}, "
        "or torchvision/<builder> and timm/<name> (see `sdn archs`)"
    )
