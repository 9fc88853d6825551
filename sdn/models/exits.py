"""Internal classifier (IC) heads.

Convolutional (C, H, W) maps get the paper's head: mixed max/avg pooling down to about 4x4, then one linear layer
(``head="gap"``, not the paper's: global average pooling, then one linear layer, cheaper to run at an exit).
Token sequences (N, D) (ViT, DeiT) get LayerNorm, the class token (or the mean over tokens), one linear layer;
channels-last (H, W, C) maps (Swin stages) get LayerNorm over C, the mean over H and W, one linear layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

import torch
from torch import nn

AlphaMode = Literal["bounded", "original"]
ICHead = Literal["paper", "gap"]
IC_HEADS: tuple[str, ...] = get_args(ICHead)
FeatureLayout = Literal["chw", "hwc", "tokens"]
TokenPool = Literal["cls", "mean"]
LAYOUTS: tuple[str, ...] = ("chw", "hwc", "tokens")
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

    @property
    def is_identity(self) -> bool:
        """Kernel 1 (a 4x4 map, as the paper's rule gives): ``a*x + (1-a)*x``, the identity up to float rounding.
        Training keeps the paper's computation (and its op count); inference may skip it (:func:`inference_pool`)."""
        return self.max_pool.kernel_size in (1, (1, 1))


def inference_pool(pool: nn.Module) -> nn.Module:
    """``pool`` as inference runs it: a :class:`MixedPool` of kernel 1 becomes ``nn.Identity`` (its max and average
    pools of a 1x1 window and the mix return the map itself), which spares an exported or deployed IC two pools,
    their layout conversions and the mix (MobileNet's ICs 3-5 and VGG-16-BN's 4-5 read 4x4 maps). Logits agree with
    the training module's to float rounding. Any other pool is returned as is."""
    if isinstance(pool, MixedPool) and pool.is_identity:
        return nn.Identity()
    return pool


class InternalClassifier(nn.Module):
    """Feature reduction followed by a single linear layer. ``head="paper"``: mixed pooling to about 4x4 when the
    map is at least 4x4 (the paper's); ``"gap"``: global average pooling to 1x1, so the linear layer reads only the
    channels (fewer ops and kernels at each exit; a model change whose accuracy has to be measured)."""

    def __init__(
        self,
        channels: int,
        height: int,
        width: int,
        num_classes: int,
        alpha_mode: AlphaMode = "bounded",
        head: ICHead = "paper",
    ) -> None:
        super().__init__()
        if head not in IC_HEADS:
            raise ValueError(f"unknown IC head {head!r}; allowed: {', '.join(IC_HEADS)}")
        kernel = reduction_kernel(min(height, width))
        if head == "gap":
            self.pool = nn.AdaptiveAvgPool2d(1)
            out_h, out_w = 1, 1
        elif kernel is None:
            self.pool: nn.Module = nn.Identity()
            out_h, out_w = height, width
        else:
            self.pool = MixedPool(kernel, alpha_mode)
            out_h, out_w = height // kernel, width // kernel
        self.in_features = channels * out_h * out_w
        self.linear = nn.Linear(self.in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.flatten(self.pool(x), 1))


class TokenClassifier(nn.Module):
    """LayerNorm over the features, then the class token (``pool="cls"``, token 0) or the mean over tokens, then
    one linear layer. Reads (B, N, D) token sequences."""

    def __init__(self, dim: int, num_classes: int, pool: TokenPool = "cls") -> None:
        super().__init__()
        if pool not in ("cls", "mean"):
            raise ValueError(f"token pool must be 'cls' or 'mean', got {pool!r}")
        self.pool = pool
        self.norm = nn.LayerNorm(dim)
        self.linear = nn.Linear(dim, num_classes)
        self.in_features = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        x = x[:, 0] if self.pool == "cls" else x.mean(dim=1)
        return self.linear(x)


class ChannelsLastClassifier(nn.Module):
    """LayerNorm over C, the mean over H and W, one linear layer. Reads (B, H, W, C) maps."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.linear = nn.Linear(channels, num_classes)
        self.in_features = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm(x).mean(dim=(1, 2)))


def make_exit(
    shape: Sequence[int],
    *,
    num_classes: int,
    layout: FeatureLayout = "chw",
    token_pool: TokenPool = "cls",
    alpha_mode: AlphaMode = "bounded",
    head: ICHead = "paper",
    where: str = "block",
) -> nn.Module:
    """The IC head that fits a feature of ``shape`` (without batch) in ``layout``; ``where`` names it in errors.
    ``head`` applies to (C, H, W) maps (token and channels-last heads pool globally already)."""
    dims = tuple(int(d) for d in shape)
    expected = 2 if layout == "tokens" else 3
    if layout not in LAYOUTS:
        raise ValueError(f"unknown feature layout {layout!r}; allowed: {', '.join(LAYOUTS)}")
    if len(dims) != expected:
        raise ValueError(
            f"{where} outputs shape {dims}; a {layout!r} internal classifier needs {expected} dimensions "
            "((C, H, W) maps, (H, W, C) maps or (N, D) tokens)"
        )
    if layout == "tokens":
        return TokenClassifier(dims[1], num_classes, token_pool)
    if layout == "hwc":
        return ChannelsLastClassifier(dims[2], num_classes)
    return InternalClassifier(*dims, num_classes=num_classes, alpha_mode=alpha_mode, head=head)
