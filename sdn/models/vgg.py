"""VGG-16 with batch normalisation, as in the original SDN code (spec §1.1).

Thirteen blocks of conv3x3 (with bias) -> BN -> ReLU [-> 2x2 max-pool]; an internal classifier reads a block's
output after its max-pool. The classifier tail keeps the original's quirk: no ReLU between its last two Linear
layers.
"""

from __future__ import annotations

import math

from torch import nn

from sdn.models.multiexit import BackboneParts

WIDTHS = (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)
POOL_AFTER = (False, True, False, True, False, False, True, False, False, True, False, False, True)
FC_WIDTHS = {32: (512, 512), 64: (2048, 1024)}
DROPOUT = 0.5


def conv_block(in_channels: int, out_channels: int, pool: bool) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=True),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
    ]
    if pool:
        layers.append(nn.MaxPool2d(kernel_size=2))
    return nn.Sequential(*layers)


def classifier_tail(in_features: int, fc_widths: tuple[int, int], num_classes: int) -> nn.Sequential:
    first, second = fc_widths
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(in_features, first),
        nn.ReLU(),
        nn.Dropout(DROPOUT),
        nn.Linear(first, second),
        nn.Dropout(DROPOUT),  # faithful: no ReLU here (spec §10, quirk 9)
        nn.Linear(second, num_classes),
    )


def init_vgg(module: nn.Module) -> None:
    """Conv ~ N(0, sqrt(2 / (k*k*C_out))) with zero bias, BN 1/0, Linear ~ N(0, 0.01) with zero bias."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            init_linear_small(m)


def init_linear_small(linear: nn.Linear) -> None:
    """Weight ~ N(0, 0.01), bias 0 (the original VGG's Linear layers, its ICs included)."""
    nn.init.normal_(linear.weight, 0.0, 0.01)
    if linear.bias is not None:
        nn.init.zeros_(linear.bias)


def build_vgg16bn(*, num_classes: int, input_size: int) -> BackboneParts:
    if input_size not in FC_WIDTHS:
        raise ValueError(f"vgg16bn supports input sizes {sorted(FC_WIDTHS)}, got {input_size}")
    blocks = []
    in_channels = 3
    for width, pool in zip(WIDTHS, POOL_AFTER, strict=True):
        blocks.append(conv_block(in_channels, width, pool))
        in_channels = width
    final_spatial = input_size // 2 ** sum(POOL_AFTER)
    head = classifier_tail(in_channels * final_spatial * final_spatial, FC_WIDTHS[input_size], num_classes)
    parts = BackboneParts(stem=nn.Identity(), blocks=blocks, head=head)
    for block in blocks:
        init_vgg(block)
    init_vgg(head)
    return parts
