"""Wide-ResNet-32-4, as in the original SDN code (spec §1.3).

Three stages of five pre-activation ``wide_basic`` blocks (64/128/256 channels): BN-ReLU-conv3x3-Dropout(0.3)-
BN-ReLU-conv3x3(stride), all convs with bias, a plain 1x1 conv shortcut (with bias, no BN) when the shape changes,
and no activation after the addition. Tail: BN (default momentum 0.1, not the CNN class's 0.9) -ReLU-AvgPool-Linear.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from sdn.models.multiexit import BackboneParts

DEPTH = 32
WIDEN = 4
DROPOUT = 0.3
STAGE_WIDTHS = (16 * WIDEN, 32 * WIDEN, 64 * WIDEN)
STAGE_STRIDES = (1, 2, 2)
BLOCKS_PER_STAGE = (DEPTH - 2) // 6
STEM_CHANNELS = 16
STEM_STRIDE = {32: 1, 64: 2}


class WideBasic(nn.Module):
    """Pre-activation wide block; the stride sits on the second conv."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, dropout: float = DROPOUT) -> None:
        super().__init__()
        self.residual = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            nn.ReLU(),
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=True),
            nn.Dropout(p=dropout),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=True),
        )
        self.shortcut: nn.Module
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=True)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.residual(x) + self.shortcut(x)


def init_wrn(module: nn.Module) -> None:
    """The CNN's init: conv Xavier-uniform (gain sqrt 2), bias 0; BN 1/0; Linear ~ N(0, 0.01), bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.xavier_uniform_(m.weight, gain=math.sqrt(2.0))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)


def build_wrn32_4(*, num_classes: int, input_size: int) -> BackboneParts:
    if input_size not in STEM_STRIDE:
        raise ValueError(f"wrn32_4 supports input sizes {sorted(STEM_STRIDE)}, got {input_size}")
    stem = nn.Conv2d(3, STEM_CHANNELS, kernel_size=3, stride=STEM_STRIDE[input_size], padding=1, bias=True)
    blocks: list[nn.Module] = []
    in_channels = STEM_CHANNELS
    for width, stage_stride in zip(STAGE_WIDTHS, STAGE_STRIDES, strict=True):
        for index in range(BLOCKS_PER_STAGE):
            blocks.append(WideBasic(in_channels, width, stage_stride if index == 0 else 1))
            in_channels = width
    head = nn.Sequential(
        nn.BatchNorm2d(in_channels),
        nn.ReLU(),
        nn.AvgPool2d(kernel_size=8),
        nn.Flatten(),
        nn.Linear(in_channels, num_classes),
    )
    for module in (stem, *blocks, head):
        init_wrn(module)
    return BackboneParts(stem=stem, blocks=blocks, head=head)
