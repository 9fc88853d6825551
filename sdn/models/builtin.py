"""Registers the four paper backbones: ``vgg16bn``, ``resnet56``, ``wrn32_4``, ``mobilenet``.

Exit positions are 0-based block indices (spec §2.1). MobileNet's paper placement has six ICs (the text's rule);
``paper-original`` gives the released code's five-IC mask.
"""

from __future__ import annotations

from torch import nn

from sdn.models.mobilenet import build_mobilenet
from sdn.models.registry import ArchSpec, register
from sdn.models.resnet import build_resnet56
from sdn.models.vgg import build_vgg16bn, init_linear_small
from sdn.models.wideresnet import build_wrn32_4


def zero_bias(linear: nn.Linear) -> None:
    """PyTorch default weight, bias 0 (the original WRN SDN's ICs)."""
    if linear.bias is not None:
        nn.init.zeros_(linear.bias)


register(
    ArchSpec(
        name="vgg16bn",
        builder=build_vgg16bn,
        paper_exits=(1, 3, 5, 6, 8, 9),
        weight_decay=5e-4,
        description="VGG-16 with BN, 13 conv blocks, FC tail [512,512] (32px) or [2048,1024] (64px)",
        exit_init=init_linear_small,
    )
)
register(
    ArchSpec(
        name="resnet56",
        builder=build_resnet56,
        paper_exits=(3, 7, 11, 15, 19, 23),
        weight_decay=1e-4,
        description="ResNet-56, 27 post-activation BasicBlocks, 1x1 conv+BN projection shortcuts",
        ic_inputs=("post-relu", "pre-relu"),
    )
)
register(
    ArchSpec(
        name="wrn32_4",
        builder=build_wrn32_4,
        paper_exits=(2, 4, 6, 8, 10, 12),
        weight_decay=5e-4,
        description="Wide-ResNet-32-4, 15 pre-activation wide blocks, dropout 0.3",
        exit_init=zero_bias,
    )
)
register(
    ArchSpec(
        name="mobilenet",
        builder=build_mobilenet,
        paper_exits=(2, 4, 6, 8, 9, 11),
        original_exits=(2, 4, 6, 8, 11),
        weight_decay=1e-4,
        description="MobileNet v1 (width 1.0), 13 depthwise-separable blocks",
    )
)
