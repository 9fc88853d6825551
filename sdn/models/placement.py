"""Where the internal classifiers go: the paper's masks, or the blocks closest to given cost fractions."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch

from sdn.models.cost import profile_model
from sdn.models.multiexit import MultiExitNet
from sdn.models.registry import ArchSpec

ExitsArg = str | Sequence[int] | None
NAMED = ("paper", "paper-original", "none", "all")
COST_PREFIX = "cost:"


def resolve_exits(spec: ArchSpec, exits: ExitsArg, *, num_classes: int, input_size: int) -> tuple[int, ...]:
    """Block indices after which ICs sit, for ``exits`` = "paper" | "paper-original" | "none" | None |
    "cost:f1,f2,..." | "all" | a sequence of block indices."""
    if exits is None:
        return ()
    if isinstance(exits, str):
        key = exits.strip()
        if key == "none":
            return ()
        if key in ("paper", "paper-original") and spec.paper_cost is not None:
            return cost_placement(
                spec, spec.paper_cost, num_classes=num_classes, input_size=input_size, merge_clashes=True
            )
        if key == "all":
            return tuple(range(_num_blocks(spec, num_classes=num_classes, input_size=input_size) - 1))
        if key == "paper":
            return tuple(spec.paper_exits)
        if key == "paper-original":
            return tuple(spec.original_exits if spec.original_exits is not None else spec.paper_exits)
        if key.startswith(COST_PREFIX):
            fractions = parse_fractions(key[len(COST_PREFIX) :])
            return cost_placement(spec, fractions, num_classes=num_classes, input_size=input_size)
        raise ValueError(
            f"unknown exits {exits!r}; allowed: {', '.join(NAMED)}, 'cost:0.15,0.3,...' or a list of block indices"
        )
    return _explicit(exits)


def _explicit(exits: Sequence[int]) -> tuple[int, ...]:
    positions = []
    for item in exits:
        if isinstance(item, bool) or not isinstance(item, numbers.Integral):
            raise ValueError(f"exit positions must be block indices (ints), got {item!r} in {list(exits)}")
        positions.append(int(item))
    duplicates = sorted({p for p in positions if positions.count(p) > 1})
    if duplicates:
        raise ValueError(f"exit positions repeat block(s) {duplicates}: {positions}")
    return tuple(positions)


def parse_fractions(text: str) -> list[float]:
    """ "0.15,0.3,..." -> floats, each strictly inside (0, 1), no repeats."""
    tokens = [t.strip() for t in text.split(",") if t.strip()]
    if not tokens:
        raise ValueError("'cost:' needs at least one fraction, e.g. 'cost:0.15,0.3,0.45'")
    fractions = []
    for token in tokens:
        try:
            value = float(token)
        except ValueError:
            raise ValueError(f"cost fraction {token!r} is not a number") from None
        fractions.append(value)
    outside = [f for f in fractions if not (0.0 < f < 1.0) or math.isnan(f)]
    if outside:
        raise ValueError(f"cost fractions must lie strictly between 0 and 1; got {outside}")
    repeated = sorted({f for f in fractions if fractions.count(f) > 1})
    if repeated:
        raise ValueError(f"cost fractions repeat: {repeated}")
    return fractions


def closest_blocks(
    block_fractions: Sequence[float], fractions: Sequence[float], *, merge_clashes: bool = False
) -> tuple[int, ...]:
    """For each fraction the block (not the last: it feeds the final classifier) whose cumulative cost fraction
    is closest; ties go to the earlier block. Two fractions landing on one block raise ValueError (with
    ``merge_clashes``: they share that block's exit)."""
    candidates = range(len(block_fractions) - 1)
    if not candidates:
        raise ValueError("the backbone has fewer than two blocks; no internal exit is possible")
    chosen = [min(candidates, key=lambda b: (abs(block_fractions[b] - f), b)) for f in fractions]
    clashes = sorted({b for b in chosen if chosen.count(b) > 1})
    if merge_clashes:
        return tuple(sorted(set(chosen)))
    if clashes:
        detail = ", ".join(f"{f:g}->{b}" for f, b in zip(fractions, chosen, strict=True))
        raise ValueError(
            f"cost fractions map to the same block(s) {clashes} ({detail}); choose fractions further apart"
        )
    return tuple(sorted(chosen))


def _plain_cnn(spec: ArchSpec, *, num_classes: int, input_size: int) -> MultiExitNet:
    """The architecture without exits, built under a forked RNG so the caller's random stream is untouched."""
    with torch.random.fork_rng(devices=[]):
        parts = spec.builder(num_classes=num_classes, input_size=input_size)
    return MultiExitNet(parts, num_classes=num_classes, input_size=input_size)


def _num_blocks(spec: ArchSpec, *, num_classes: int, input_size: int) -> int:
    return len(_plain_cnn(spec, num_classes=num_classes, input_size=input_size).blocks)


def cost_placement(
    spec: ArchSpec,
    fractions: Sequence[float],
    *,
    num_classes: int,
    input_size: int,
    merge_clashes: bool = False,
) -> tuple[int, ...]:
    """Blocks whose cumulative backbone ops (paper convention, measured on the plain CNN) are closest to
    ``fractions`` of the CNN's ops."""
    cnn = _plain_cnn(spec, num_classes=num_classes, input_size=input_size)
    return closest_blocks(profile_model(cnn, input_size).block_fractions(), fractions, merge_clashes=merge_clashes)
