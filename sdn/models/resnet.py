"""ResNet-56 for CIFAR-sized inputs, as in the original SDN code (spec §1.2).

Three stages of nine post-activation BasicBlocks (16/32/64 channels) with a 1x1 conv + BN projection shortcut
whenever the shape changes. An internal classifier reads a block's output after its final ReLU (our documented
choice; the original fed the pre-activation sum, spec §2.3).
"""

from __future__ import annotations

import torch
from torch import nn

from sdn.models.multiexit import BackboneParts

STAGE_WIDTHS = (16, 32, 64)
STAGE_STRIDES = (1, 2, 2)
BLOCKS_PER_STAGE = 9
STEM_STRIDE = {32: 1, 64: 2}


class BasicBlock(nn.Module):
    """conv3x3(stride)-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
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
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
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


def build_resnet56(*, num_classes: int, input_size: int) -> BackboneParts:
    if input_size not in STEM_STRIDE:
        raise ValueError(f"resnet56 supports input sizes {sorted(STEM_STRIDE)}, got {input_size}")
    stem = nn.Sequential(
        nn.Conv2d(3, STAGE_WIDTHS[0], kernel_size=3, stride=STEM_STRIDE[input_size], padding=1, bias=False),
        nn.BatchNorm2d(STAGE_WIDTHS[0]),
        nn.ReLU(),
    )
    blocks: list[nn.Module] = []
    in_channels = STAGE_WIDTHS[0]
    for width, stage_stride in zip(STAGE_WIDTHS, STAGE_STRIDES, strict=True):
        for index in range(BLOCKS_PER_STAGE):
            blocks.append(BasicBlock(in_channels, width, stage_stride if index == 0 else 1))
            in_channels = width
    head = nn.Sequential(nn.AvgPool2d(kernel_size=8), nn.Flatten(), nn.Linear(in_channels, num_classes))
    for module in (stem, *blocks, head):
        init_resnet(module)
    return BackboneParts(stem=stem, blocks=blocks, head=head)
