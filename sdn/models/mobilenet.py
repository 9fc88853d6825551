"""MobileNet v1 (width 1.0) for small inputs, as in the original SDN code (spec §1.4).

Stem conv3x3 (32 channels, stride 1 on every input size) -BN-ReLU, then 13 depthwise-separable blocks
dw3x3(stride)-BN-ReLU-pw1x1-BN-ReLU; tail AvgPool (2 on 32x32, 4 on 64x64) -Linear. PyTorch default init.
"""

from __future__ import annotations

from torch import nn

from sdn.models.multiexit import BackboneParts

STEM_CHANNELS = 32
# (out_channels, stride) of the 13 blocks.
CONFIG = (
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1),
)  # fmt: skip
TOTAL_STRIDE = 16
SUPPORTED_SIZES = (32, 64)


def separable_block(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, in_channels, kernel_size=3, stride=stride, padding=1, groups=in_channels, bias=False),
        nn.BatchNorm2d(in_channels),
        nn.ReLU(),
        nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=1, padding=0, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
    )


def build_mobilenet(*, num_classes: int, input_size: int) -> BackboneParts:
    if input_size not in SUPPORTED_SIZES:
        raise ValueError(f"mobilenet supports input sizes {list(SUPPORTED_SIZES)}, got {input_size}")
    stem = nn.Sequential(
        nn.Conv2d(3, STEM_CHANNELS, kernel_size=3, stride=1, padding=1, bias=False),
        nn.BatchNorm2d(STEM_CHANNELS),
        nn.ReLU(),
    )
    blocks: list[nn.Module] = []
    in_channels = STEM_CHANNELS
    for out_channels, stride in CONFIG:
        blocks.append(separable_block(in_channels, out_channels, stride))
        in_channels = out_channels
    head = nn.Sequential(
        nn.AvgPool2d(kernel_size=input_size // TOTAL_STRIDE),
        nn.Flatten(),
        nn.Linear(in_channels, num_classes),
    )
    return BackboneParts(stem=stem, blocks=blocks, head=head)
