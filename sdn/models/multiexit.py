"""A backbone with internal classifiers attached after chosen blocks.

Any classification network that can be written as ``head(blocks[n-1](...blocks[0](stem(x))))`` takes exits the
same way. A CNN is simply the model with no exits, so turning a trained CNN into an SDN is loading its weights
(:meth:`MultiExitNet.load_backbone_state`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from sdn.models.exits import AlphaMode, FeatureLayout, ICHead, TokenPool, make_exit

BACKBONE_PREFIXES = ("stem.", "blocks.", "head.")


@dataclass
class BackboneParts:
    """A network split into its stem, the ordered blocks an exit may follow, and the final head."""

    stem: nn.Module
    blocks: Sequence[nn.Module]
    head: nn.Module
    layout: FeatureLayout = "chw"  # what the blocks output: (C, H, W) maps, (H, W, C) maps or (N, D) tokens
    token_pool: TokenPool = "cls"  # token ICs read the class token (token 0) or the mean over tokens


class MultiExitNet(nn.Module):
    """Backbone (stem -> blocks -> head) plus one :class:`InternalClassifier` after each block in ``exit_positions``.

    ``forward`` returns a list of logits, one per exit in order, the final classifier last. With no exits it is
    the plain CNN and the list has one element.
    """

    def __init__(
        self,
        parts: BackboneParts,
        *,
        num_classes: int,
        input_size: int,
        exit_positions: Sequence[int] = (),
        alpha_mode: AlphaMode = "bounded",
        ic_head: ICHead = "paper",
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.stem = parts.stem
        self.blocks = nn.ModuleList(parts.blocks)
        self.head = parts.head
        self.num_classes = num_classes
        self.input_size = input_size
        positions = tuple(int(p) for p in exit_positions)
        if list(positions) != sorted(set(positions)):
            raise ValueError(f"exit positions must be strictly increasing block indices, got {list(positions)}")
        if positions and not 0 <= positions[0] <= positions[-1] < len(self.blocks) - 1:
            raise ValueError(
                f"exit positions {list(positions)} out of range: an internal exit must follow one of blocks "
                f"0..{len(self.blocks) - 2} (the last block feeds the final classifier)"
            )
        self.exit_positions = positions
        shapes = self.block_output_shapes(input_size, in_channels)
        self.layout = parts.layout
        self.exits = nn.ModuleList(
            make_exit(
                shapes[p],
                num_classes=num_classes,
                layout=parts.layout,
                token_pool=parts.token_pool,
                alpha_mode=alpha_mode,
                head=ic_head,
                where=f"block {p}",
            )
            for p in positions
        )

    @property
    def num_exits(self) -> int:
        """Number of outputs: internal classifiers plus the final classifier."""
        return len(self.exit_positions) + 1

    @torch.no_grad()
    def block_output_shapes(self, input_size: int, in_channels: int = 3) -> list[torch.Size]:
        """Shape (without batch) of every block's output for one ``input_size`` x ``input_size`` image."""
        was_training = self.training
        self.eval()
        try:
            x = self.stem(torch.zeros(1, in_channels, input_size, input_size))
            shapes = []
            for block in self.blocks:
                x = block(x)
                shapes.append(x.shape[1:])
        finally:
            self.train(was_training)
        return shapes

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs: list[torch.Tensor] = []
        exit_iter = iter(zip(self.exit_positions, self.exits, strict=True))
        next_exit = next(exit_iter, None)
        x = self.stem(x)
        for index, block in enumerate(self.blocks):
            x = block(x)
            if next_exit is not None and next_exit[0] == index:
                outputs.append(next_exit[1](x))
                next_exit = next(exit_iter, None)
        outputs.append(self.head(x))
        return outputs

    def backbone_parameters(self) -> list[nn.Parameter]:
        return [*self.stem.parameters(), *self.blocks.parameters(), *self.head.parameters()]

    def exit_parameters(self) -> list[nn.Parameter]:
        return list(self.exits.parameters())

    def backbone_modules(self) -> list[nn.Module]:
        return [self.stem, self.blocks, self.head]

    def load_backbone_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load a CNN's (or SDN's) backbone weights; the exits keep their own (fresh) weights.

        Every backbone tensor must be present and no unknown key may appear: a mismatch names the keys.
        """
        backbone = {k: v for k, v in state.items() if k.startswith(BACKBONE_PREFIXES)}
        unknown = sorted(k for k in state if not k.startswith(BACKBONE_PREFIXES) and not k.startswith("exits."))
        missing, unexpected = self.load_state_dict(backbone, strict=False)
        missing_backbone = [k for k in missing if k.startswith(BACKBONE_PREFIXES)]
        if unknown or unexpected or missing_backbone:
            raise ValueError(
                "backbone state does not fit this model: "
                f"missing {missing_backbone[:5]}, unexpected {(unknown + list(unexpected))[:5]}"
            )
