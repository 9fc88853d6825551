"""The front door: ``create(name, ...)`` builds a registered backbone with its internal classifiers."""

from __future__ import annotations

from sdn.models.exits import AlphaMode, ICHead
from sdn.models.multiexit import MultiExitNet
from sdn.models.placement import ExitsArg, resolve_exits
from sdn.models.registry import DEFAULT_IC_INPUT, get_spec


def create(
    name: str,
    *,
    num_classes: int,
    input_size: int,
    exits: ExitsArg = "paper",
    alpha_mode: AlphaMode = "bounded",
    ic_input: str = DEFAULT_IC_INPUT,
    weights: str | None = None,
    ic_head: ICHead = "paper",
) -> MultiExitNet:
    """Build architecture ``name`` with its exits.

    ``ic_input``: what an IC reads where the architecture offers a choice (``spec.ic_inputs``): ``"post-relu"``
    (default, the block's output) or, for resnet56, ``"pre-relu"`` (the block's sum before its last ReLU, as the
    original code).

    ``exits``: ``"paper"`` (the paper's placement), ``"paper-original"`` (the released code's masks),
    ``"none"``/``None`` (the plain CNN), ``"cost:0.15,0.3,..."`` (after the block whose cumulative cost is
    closest to each fraction of the CNN's cost), ``"all"`` (after every block but the last) or an explicit sequence
    of block indices.

    ``ic_head``: the ICs' head on (C, H, W) maps: ``"paper"`` (mixed pooling to about 4x4, then a linear layer) or
    ``"gap"`` (global average pooling, then a linear layer; not the paper's, cheaper to run at an exit).

    ``weights`` (torchvision/timm models only): a local state-dict file of the original network or a hub weights
    name (``DEFAULT``, ``IMAGENET1K_V1``, a timm pretrained tag); loaded into the backbone before exits attach.
    """
    spec = get_spec(name)
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if weights is not None and not spec.takes_weights:
        raise ValueError(f"{name} takes no weights= (only torchvision/<builder> and timm/<name> models do)")
    if spec.input_sizes is not None and input_size not in spec.input_sizes:
        raise ValueError(f"{name} is defined for input sizes {list(spec.input_sizes)}, got {input_size}")
    if ic_input not in spec.ic_inputs:
        raise ValueError(f"{name} offers ic_input {list(spec.ic_inputs)}, got {ic_input!r}")
    positions = resolve_exits(spec, exits, num_classes=num_classes, input_size=input_size)
    layout: dict[str, object] = {"ic_input": ic_input} if ic_input != DEFAULT_IC_INPUT else {}
    if weights is not None:
        layout["weights"] = weights
    parts = spec.builder(num_classes=num_classes, input_size=input_size, **layout)
    model = MultiExitNet(
        parts,
        num_classes=num_classes,
        input_size=input_size,
        exit_positions=positions,
        alpha_mode=alpha_mode,
        ic_head=ic_head,
    )
    if spec.exit_init is not None:
        for head in model.exits:
            spec.exit_init(head.linear)
    return model
