"""Parameters, MACs and paper-convention operation counts of a multi-exit network, per exit.

Conventions (spec §1.5):

* ``macs``: multiply-accumulates of the convolutions and linear layers, measured with
  :class:`torch.utils.flop_counter.FlopCounterMode` (its flops are 2 x MACs; biases not included).
* ``ops``: the paper's count, from forward hooks on the leaf modules: Conv2d k*k*Cin/g muls + (k*k*Cin/g - 1)
  adds (+1 with bias) per output element; Linear in muls + (in - 1) adds per output element; BatchNorm 2 per
  input element; ReLU 1 per element; MaxPool k*k - 1 and AvgPool k*k per output element; Dropout, Flatten,
  identity and the IC's alpha mixing nothing. For torchvision/timm networks (not in the paper): other activations
  (GELU, SiLU, Hardswish, ...) 1 per element, LayerNorm/GroupNorm 5 per input element, and
  :class:`nn.MultiheadAttention` as one unit, 2 ops per MAC of its projections and attention products.

  ``convention="paper"`` (default) also reproduces the original profiler's grouped-convolution count: it
  multiplies a grouped conv's per-element ops by ``groups``, so a depthwise conv costs as much as a dense one.
  Only MobileNet has grouped convs; this is what the original numbers and MobileNet's IC mask were measured
  with (its 15..90% positions only come out under this count). ``convention="exact"`` drops that multiplier.

The cost of reaching exit k is the backbone up to its block plus every IC 1..k (the original's rule: an early
exit has evaluated all earlier ICs); the final exit costs the whole backbone plus all ICs. Profiling runs one
all-zeros image of batch 1 in eval mode under ``torch.no_grad``; every hook is removed afterwards.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

from sdn.models.multiexit import MultiExitNet

OpsConvention = Literal["paper", "exact"]
CONVENTIONS: tuple[str, ...] = ("paper", "exact")

_FREE_MODULES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.Flatten, nn.Identity)
_FREE_NAMES = frozenset(
    {"Permute", "StochasticDepth", "DropPath", "ClassToken"}
)  # torchvision/timm reshuffles, train-only drops
_ELEMENTWISE = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh,
)  # fmt: skip
_ELEMENTWISE_NAMES = frozenset({"GELU", "GELUTanh", "QuickGELU", "Swish", "HardSwish", "HardSigmoid", "Mish"})  # timm
_NORM_PER_ELEMENT = 5  # LayerNorm/GroupNorm: mean, variance, normalise, scale, shift


@dataclass(frozen=True)
class CostRecord:
    params: int
    macs: int
    ops: int

    def __add__(self, other: CostRecord) -> CostRecord:
        return CostRecord(self.params + other.params, self.macs + other.macs, self.ops + other.ops)

    def as_dict(self) -> dict[str, int]:
        return {"params": self.params, "macs": self.macs, "ops": self.ops}


ZERO = CostRecord(0, 0, 0)


@dataclass(frozen=True)
class ExitCost:
    """Cumulative cost of producing output ``index`` (0-based, final classifier last).

    ``block`` is the block the IC reads (None for the final classifier); ``fraction`` = ops / CNN ops.
    """

    index: int
    block: int | None
    params: int
    macs: int
    ops: int
    fraction: float

    def as_dict(self) -> dict[str, Any]:
        return {"index": self.index, "params": self.params, "macs": self.macs, "ops": self.ops,
                "fraction": self.fraction}  # fmt: skip


@dataclass(frozen=True)
class ModelCost:
    """``cnn``: the backbone alone; ``exits``: one per output; ``blocks``: backbone cost through each block."""

    cnn: CostRecord
    exits: list[ExitCost]
    blocks: list[CostRecord]

    def block_fractions(self) -> list[float]:
        """Cumulative backbone ops through each block (stem included) as a fraction of the CNN's ops."""
        return [b.ops / self.cnn.ops for b in self.blocks]


def _pool_kernel_area(kernel: int | tuple[int, ...]) -> int:
    if isinstance(kernel, int):
        return kernel * kernel
    area = 1
    for k in kernel:
        area *= int(k)
    return area


def module_ops(module: nn.Module, inputs: tuple[Any, ...], output: Any, convention: OpsConvention = "paper") -> int:
    """Paper-convention ops of one call of a leaf module (see the module docstring)."""
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        per_group_in = module.in_channels // module.groups
        per_element = 2 * kh * kw * per_group_in - 1 + (1 if module.bias is not None else 0)
        if convention == "paper":
            per_element *= module.groups
        return output.numel() * per_element
    if isinstance(module, nn.Linear):
        return output.numel() * (2 * module.in_features - 1)
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return 2 * inputs[0].numel()
    if isinstance(module, _ELEMENTWISE) or type(module).__name__ in _ELEMENTWISE_NAMES:
        return output.numel()
    if isinstance(module, nn.MaxPool2d):
        return output.numel() * (_pool_kernel_area(module.kernel_size) - 1)
    if isinstance(module, nn.AvgPool2d):
        return output.numel() * _pool_kernel_area(module.kernel_size)
    if isinstance(module, nn.AdaptiveAvgPool2d | nn.AdaptiveMaxPool2d):
        in_h, in_w = inputs[0].shape[-2:]
        out_h, out_w = output.shape[-2:]
        area = -(-in_h // out_h) * -(-in_w // out_w)
        return output.numel() * (area if isinstance(module, nn.AdaptiveAvgPool2d) else area - 1)
    if isinstance(module, nn.LayerNorm | nn.GroupNorm):
        return _NORM_PER_ELEMENT * inputs[0].numel()
    if isinstance(module, nn.MultiheadAttention):
        return 2 * _attention_macs(module, inputs)
    if isinstance(module, _FREE_MODULES) or type(module).__name__ in _FREE_NAMES:
        return 0
    warnings.warn(f"sdn.models.cost: no op count for {type(module).__name__}; counted as 0", stacklevel=2)
    return 0


def _attention_macs(module: nn.MultiheadAttention, inputs: tuple[Any, ...]) -> int:
    """MACs of one self-/cross-attention call: q, k, v and output projections plus the two attention products."""
    query, key = inputs[0], inputs[1] if len(inputs) > 1 else inputs[0]
    batch_first = module.batch_first
    q_len = query.shape[1] if batch_first else query.shape[0]
    k_len = key.shape[1] if batch_first else key.shape[0]
    batch = query.shape[0] if batch_first else query.shape[1]
    dim = module.embed_dim
    projections = (2 * q_len + 2 * k_len) * dim * dim  # q and output over the queries, k and v over the keys
    products = 2 * q_len * k_len * dim
    return batch * (projections + products)


def _counted_units(root: nn.Module) -> list[nn.Module]:
    """Leaf modules, and MultiheadAttention as one unit (its in-projection is no module of its own)."""
    units: list[nn.Module] = []
    inside = set()
    for module in root.modules():
        if id(module) in inside:
            continue
        if isinstance(module, nn.MultiheadAttention):
            units.append(module)
            inside.update(id(m) for m in module.modules())
        elif next(module.children(), None) is None:
            units.append(module)
    return units


class _OpsCounter:
    """Forward hooks on every counted unit of ``root`` adding their ops to ``total``; removed by :meth:`close`."""

    def __init__(self, root: nn.Module, convention: OpsConvention) -> None:
        self.total = 0
        self.convention = convention
        self._handles = [m.register_forward_hook(self._hook) for m in _counted_units(root)]

    def _hook(self, module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        self.total += module_ops(module, inputs, output, self.convention)

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


@contextmanager
def _counting(model: nn.Module, convention: OpsConvention) -> Iterator[_OpsCounter]:
    counter = _OpsCounter(model, convention)
    was_training = model.training
    fastpath = torch.backends.mha.get_fastpath_enabled()
    model.eval()
    try:
        torch.backends.mha.set_fastpath_enabled(False)
        with torch.no_grad():
            yield counter
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        counter.close()
        model.train(was_training)


def _cpu_attention_flops(query: Any, key: Any, value: Any, *args: Any, **kwargs: Any) -> int:
    return flop_counter.sdpa_flop_count(query, key, value)


def _extra_flop_formulas() -> dict[Any, Any]:
    """Flop formulas the counter lacks: the CPU's fused attention kernel (same count as the CUDA ones)."""
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    return {op: _cpu_attention_flops} if op is not None else {}


def _measure(module: nn.Module, x: torch.Tensor, counter: _OpsCounter) -> tuple[torch.Tensor, CostRecord]:
    counter.total = 0
    with FlopCounterMode(display=False, custom_mapping=_extra_flop_formulas()) as flops:
        y = module(x)
    params = sum(p.numel() for p in module.parameters())
    return y, CostRecord(params=params, macs=flops.get_total_flops() // 2, ops=counter.total)


def _check_convention(convention: str) -> None:
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown ops convention {convention!r}; allowed: {', '.join(CONVENTIONS)}")


def profile_model(
    model: MultiExitNet, input_size: int, *, convention: OpsConvention = "paper", in_channels: int = 3
) -> ModelCost:
    """Cost of the backbone and of reaching every exit of ``model`` for one ``input_size`` image.

    The model is left as it was (mode restored, no hooks, no buffers added).
    """
    _check_convention(convention)
    reference = next(model.parameters(), None)
    device = reference.device if reference is not None else torch.device("cpu")
    dtype = reference.dtype if reference is not None else torch.float32
    exit_at = dict(zip(model.exit_positions, model.exits, strict=True))
    exit_costs: list[CostRecord] = []
    block_costs: list[CostRecord] = []
    with _counting(model, convention) as counter:
        x = torch.zeros(1, in_channels, input_size, input_size, device=device, dtype=dtype)
        x, running = _measure(model.stem, x, counter)
        for index, block in enumerate(model.blocks):
            x, cost = _measure(block, x, counter)
            running = running + cost
            block_costs.append(running)
            if index in exit_at:
                exit_costs.append(_measure(exit_at[index], x, counter)[1])
        head_cost = _measure(model.head, x, counter)[1]
    cnn = running + head_cost
    if cnn.ops <= 0:
        raise ValueError("the model's backbone counts no operations; cannot express exit costs as fractions")
    exits: list[ExitCost] = []
    ics = ZERO
    for index, (block, ic_cost) in enumerate(zip(model.exit_positions, exit_costs, strict=True)):
        ics = ics + ic_cost
        exits.append(_exit_cost(index, block, block_costs[block] + ics, cnn))
    exits.append(_exit_cost(len(exit_costs), None, cnn + ics, cnn))
    return ModelCost(cnn=cnn, exits=exits, blocks=block_costs)


def _exit_cost(index: int, block: int | None, reach: CostRecord, cnn: CostRecord) -> ExitCost:
    return ExitCost(index, block, reach.params, reach.macs, reach.ops, reach.ops / cnn.ops)
