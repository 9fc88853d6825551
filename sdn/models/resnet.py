"""ResNet-56 for CIFAR-sized inputs, as in the original SDN code (spec §1.2).

Three stages of nine post-activation BasicBlocks (16/32/64 channels) with a 1x1 conv + BN projection shortcut
whenever the shape changes. By default an internal classifier reads a block's output after its final ReLU (our
documented choice). ``ic_input="pre-relu"`` restores the original code's choice (spec §2.3): the IC reads the block's
sum (residual + shortcut) before that ReLU. The network computes the same function either way: with ``"pre-relu"``
each block returns its sum and the next block applies the ReLU first (the last block keeps its own ReLU, so the head
is unchanged), and the parameter names are the same, so checkpoints load across both layouts.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from sdn.models.multiexit import BackboneParts

IcInput = Literal["post-relu", "pre-relu"]
IC_INPUTS: tuple[str, ...] = ("post-relu", "pre-relu")
STAGE_WIDTHS = (16, 32, 64)
STAGE_STRIDES = (1, 2, 2)
BLOCKS_PER_STAGE = 9
STEM_STRIDE = {32: 1, 64: 2}


class BasicBlock(nn.Module):
    """conv3x3(stride)-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU.

    ``output_relu=False`` returns the sum before the final ReLU; the next block then takes ``input_relu=True`` and
    applies it first (the pre-ReLU IC layout). Neither flag adds parameters.
    """

    def __init__(
        self, in_channels: int, out_channels: int, stride: int, *, input_relu: bool = False, output_relu: bool = True
    ) -> None:
        super().__init__()
        self.input_relu = nn.ReLU() if input_relu else nn.Identity()
        self.residual = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.shortcut: nn.Module
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        else:
            self.shortcut = nn.Identity()
        self.relu = nn.ReLU() if output_relu else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input_relu(x)
        return self.relu(self.residual(x) + self.shortcut(x))


def init_resnet(module: nn.Module) -> None:
    """Conv: Kaiming-normal (fan_out, relu); BN 1/0; Linear ~ N(0, 0.01), bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)


def build_resnet56(*, num_classes: int, input_size: int, ic_input: IcInput = "post-relu") -> BackboneParts:
    """ResNet-56; ``ic_input`` chooses what a block hands to an IC (see the module docstring)."""
    if input_size not in STEM_STRIDE:
        raise ValueError(f"resnet56 supports input sizes {sorted(STEM_STRIDE)}, got {input_size}")
    if ic_input not in IC_INPUTS:
        raise ValueError(f"resnet56 ic_input must be one of {list(IC_INPUTS)}, got {ic_input!r}")
    pre = ic_input == "pre-relu"
    count = len(STAGE_WIDTHS) * BLOCKS_PER_STAGE
    stem = nn.Sequential(
        nn.Conv2d(3, STAGE_WIDTHS[0], kernel_size=3, stride=STEM_STRIDE[input_size], padding=1, bias=False),
        nn.BatchNorm2d(STAGE_WIDTHS[0]),
        nn.ReLU(),
    )
    blocks: list[nn.Module] = []
    in_channels = STAGE_WIDTHS[0]
    for width, stage_stride in zip(STAGE_WIDTHS, STAGE_STRIDES, strict=True):
        for index in range(BLOCKS_PER_STAGE):
            stride = stage_stride if index == 0 else 1
            first, last = not blocks, len(blocks) == count - 1
            blocks.append(
                BasicBlock(in_channels, width, stride, input_relu=pre and not first, output_relu=not pre or last)
            )
            in_channels = width
    head = nn.Sequential(nn.AvgPool2d(kernel_size=8), nn.Flatten(), nn.Linear(in_channels, num_classes))
    for module in (stem, *blocks, head):
        init_resnet(module)
    return BackboneParts(stem=stem, blocks=blocks, head=head)
