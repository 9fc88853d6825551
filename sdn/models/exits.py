"""The internal classifier (IC) head: mixed max/avg pooling down to 4x4, then one linear layer."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

AlphaMode = Literal["bounded", "original"]
TARGET_SPATIAL = 4


def reduction_kernel(spatial: int) -> int | None:
    """Pooling kernel (= stride) that brings an ``spatial``-sized map to about 4x4; None: no pooling."""
    if spatial >= TARGET_SPATIAL:
        return spatial // TARGET_SPATIAL
    return None


class MixedPool(nn.Module):
    """alpha * MaxPool(x) + (1 - alpha) * AvgPool(x), one learned alpha (Lee et al. 2016).

    ``alpha_mode="bounded"`` (default) learns a logit and uses ``alpha = sigmoid(logit)``, so alpha stays in
    [0, 1] by construction, starting at 0.5. ``"original"`` reproduces the original code: alpha itself is the
    parameter, initialised uniformly in [0, 1) and never clamped.
    """

    def __init__(self, kernel: int, alpha_mode: AlphaMode = "bounded") -> None:
        super().__init__()
        if alpha_mode not in ("bounded", "original"):
            raise ValueError(f"alpha_mode must be 'bounded' or 'original', got {alpha_mode!r}")
        self.alpha_mode = alpha_mode
        self.max_pool = nn.MaxPool2d(kernel_size=kernel)
        self.avg_pool = nn.AvgPool2d(kernel_size=kernel)
        initial = torch.zeros(1) if alpha_mode == "bounded" else torch.rand(1)
        self.alpha_param = nn.Parameter(initial)

    @property
    def alpha(self) -> torch.Tensor:
        if self.alpha_mode == "bounded":
            return torch.sigmoid(self.alpha_param)
        return self.alpha_param

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.alpha
        return a * self.max_pool(x) + (1 - a) * self.avg_pool(x)


class InternalClassifier(nn.Module):
    """Feature reduction (mixed pooling when the map is at least 4x4) followed by a single linear layer."""

    def __init__(
        self,
        channels: int,
        height: int,
        width: int,
        num_classes: int,
        alpha_mode: AlphaMode = "bounded",
    ) -> None:
        super().__init__()
        kernel = reduction_kernel(min(height, width))
        if kernel is None:
            self.pool: nn.Module = nn.Identity()
            out_h, out_w = height, width
        else:
            self.pool = MixedPool(kernel, alpha_mode)
            out_h, out_w = height // kernel, width // kernel
        self.in_features = channels * out_h * out_w
        self.linear = nn.Linear(self.in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.flatten(self.pool(x), 1))
