"""Architecture registry: one front door, ``create(name, ...)``, and ``list_archs()``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from torch import nn

from sdn.models.exits import AlphaMode
from sdn.models.multiexit import BackboneParts, MultiExitNet

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
    input_sizes: tuple[int, ...] = (32, 64)
    original_exits: tuple[int, ...] | None = None
    extra: dict[str, object] = field(default_factory=dict)
    exit_init: Callable[[nn.Linear], None] | None = None
    ic_inputs: tuple[str, ...] = (DEFAULT_IC_INPUT,)  # what an IC may read; the builder takes ic_input= if > 1


_REGISTRY: dict[str, ArchSpec] = {}


def register(spec: ArchSpec) -> ArchSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"architecture {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def list_archs() -> list[str]:
    _ensure_builtins()
    return sorted(_REGISTRY)


def get_spec(name: str) -> ArchSpec:
    _ensure_builtins()
    if name not in _REGISTRY:
        raise ValueError(f"unknown architecture {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


ExitsArg = str | Sequence[int] | None


def create(
    name: str,
    *,
    num_classes: int,
    input_size: int,
    exits: ExitsArg = "paper",
    alpha_mode: AlphaMode = "bounded",
    ic_input: str = DEFAULT_IC_INPUT,
) -> MultiExitNet:
    """Build architecture ``name`` with its exits.

    ``ic_input``: what an IC reads where the architecture offers a choice (``spec.ic_inputs``): ``"post-relu"``
    (default, the block's output) or, for resnet56, ``"pre-relu"`` (the block's sum before its last ReLU, as the
    original code).

    ``exits``: ``"paper"`` (the paper's placement), ``"paper-original"`` (the released code's masks),
    ``"none"``/``None`` (the plain CNN), ``"cost:0.15,0.3,..."`` (after the block whose cumulative cost is
    closest to each fraction of the CNN's cost) or an explicit sequence of block indices.
    """
    from sdn.models.placement import resolve_exits  # placement needs cost accounting, which needs models

    spec = get_spec(name)
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if input_size not in spec.input_sizes:
        raise ValueError(f"{name} is defined for input sizes {list(spec.input_sizes)}, got {input_size}")
    if ic_input not in spec.ic_inputs:
        raise ValueError(f"{name} offers ic_input {list(spec.ic_inputs)}, got {ic_input!r}")
    positions = resolve_exits(spec, exits, num_classes=num_classes, input_size=input_size)
    layout = {"ic_input": ic_input} if ic_input != DEFAULT_IC_INPUT else {}
    parts = spec.builder(num_classes=num_classes, input_size=input_size, **layout)
    model = MultiExitNet(
        parts,
        num_classes=num_classes,
        input_size=input_size,
        exit_positions=positions,
        alpha_mode=alpha_mode,
    )
    if spec.exit_init is not None:
        for head in model.exits:
            spec.exit_init(head.linear)
    return model


def _ensure_builtins() -> None:
    import sdn.models.builtin  # noqa: F401  (registers vgg16bn, resnet56, wrn32_4, mobilenet)
