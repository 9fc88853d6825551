"""Grad-CAM of the first internal classifier vs the final classifier (paper §5.2, spec §8).

Uses the ``grad-cam`` package (``pytorch_grad_cam.GradCAM``): CAM = ReLU(sum_c mean_ij(dy/dA_c) * A_c) at a target
layer, min-max normalised per image to [0, 1], then resized (bilinear, OpenCV) to the input size. The original
code used bicubic upsampling; the difference is cosmetic.

The target layer of an exit is the block feeding it: ``blocks[exit_positions[k]]`` for internal classifier k and
the last block for the final classifier (the original took the conv inside that block, pre-BN; we take the
block's output, which is what the exit actually sees).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from sdn.models.multiexit import MultiExitNet
from sdn.outputs import validate_logits


class SingleExit(nn.Module):
    """``model`` seen through one of its exits: forward returns ``model(x)[exit_index]`` (one logits tensor)."""

    def __init__(self, model: MultiExitNet, exit_index: int) -> None:
        super().__init__()
        if not -model.num_exits <= exit_index < model.num_exits:
            raise ValueError(f"exit index {exit_index} out of range for a model with {model.num_exits} exits")
        self.model = model
        self.exit_index = exit_index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)[self.exit_index]


def exit_target_layer(model: MultiExitNet, exit_index: int) -> nn.Module:
    """The block whose output feeds exit ``exit_index`` (negative counts from the end; -1 = final classifier)."""
    num = model.num_exits
    if not -num <= exit_index < num:
        raise ValueError(f"exit index {exit_index} out of range for a model with {num} exits")
    index = exit_index % num
    if index == num - 1:
        return model.blocks[len(model.blocks) - 1]
    return model.blocks[model.exit_positions[index]]


def feature_map_transform(layout: str) -> Any:
    """How a block's output becomes a (B, C, H, W) map for Grad-CAM: None for maps; channels-last maps are permuted;
    token sequences lose their extra (class/register) tokens and are laid out on the square patch grid."""
    if layout == "hwc":
        return lambda x: x.permute(0, 3, 1, 2)
    if layout != "tokens":
        return None

    def tokens_to_map(x: torch.Tensor) -> torch.Tensor:
        side = int(math.isqrt(x.shape[1]))
        patches = x[:, x.shape[1] - side * side :]
        return patches.transpose(1, 2).reshape(x.shape[0], x.shape[2], side, side)

    return tokens_to_map


def grad_cam(
    model: MultiExitNet, images: torch.Tensor, exit_index: int, target_classes: list[int] | None = None
) -> np.ndarray:
    """Grad-CAM maps [N, H, W] in [0, 1] of exit ``exit_index`` for normalised float ``images`` [N, C, H, W].

    ``target_classes``: the class whose logit is explained, per image; None = that exit's own prediction.
    The model is put in eval mode (and left there).
    """
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    if images.ndim != 4 or not images.is_floating_point():
        raise ValueError(f"images must be a float tensor [N, C, H, W], got {images.dtype} {tuple(images.shape)}")
    if target_classes is not None and len(target_classes) != images.shape[0]:
        raise ValueError(f"got {len(target_classes)} target classes for {images.shape[0]} images")
    model.eval()
    wrapper = SingleExit(model, exit_index)
    targets = None if target_classes is None else [ClassifierOutputTarget(int(c)) for c in target_classes]
    # The input takes part in the graph, so the target activations carry gradients even if weights are frozen.
    inputs = images.detach().clone().requires_grad_(True)
    reshape = feature_map_transform(getattr(model, "layout", "chw"))
    with GradCAM(
        model=wrapper, target_layers=[exit_target_layer(model, exit_index)], reshape_transform=reshape
    ) as cam:
        maps = cam(input_tensor=inputs, targets=targets)
    model.zero_grad(set_to_none=True)
    return np.clip(np.asarray(maps, dtype=np.float32), 0.0, 1.0)


class NoDestructiveSampleError(ValueError):
    """No sample has an internal classifier right and the final classifier wrong (a property of the model)."""


@dataclass(frozen=True)
class Selection:
    """Samples chosen for the figure and the rule that chose them."""

    indices: np.ndarray  # int64 [n], into the split
    rule: str  # "ic1_right_final_wrong" | "any_ic_right_final_wrong"


def select_destructive(logits: np.ndarray, labels: np.ndarray, max_samples: int) -> Selection:
    """Destructive samples (spec §8): the first IC right and the final classifier wrong, in split order.

    If there is none, falls back to "some IC right and the final wrong". Raises ValueError when the model has no
    internal classifier, NoDestructiveSampleError when no sample qualifies under either rule.
    """
    validate_logits(logits, labels)
    if max_samples < 1:
        raise ValueError(f"max_samples must be >= 1, got {max_samples}")
    logits = np.asarray(logits)
    if logits.shape[0] < 2:
        raise ValueError("the outputs hold a single exit (a CNN): Grad-CAM compares an IC with the final head")
    correct = logits.argmax(axis=-1) == np.asarray(labels)[None, :]
    final_wrong = ~correct[-1]
    for rule, mask in (
        ("ic1_right_final_wrong", correct[0] & final_wrong),
        ("any_ic_right_final_wrong", correct[:-1].any(axis=0) & final_wrong),
    ):
        indices = np.flatnonzero(mask)
        if indices.size:
            return Selection(indices=indices[:max_samples].astype(np.int64), rule=rule)
    raise NoDestructiveSampleError("no sample has an internal classifier right and the final classifier wrong")


def gradcam_figure(images: np.ndarray, cams_first: np.ndarray, cams_final: np.ndarray, row_titles: list[str]) -> Any:
    """Grid figure: one row per sample; columns image, IC1 CAM overlay, final-classifier CAM overlay.

    ``images`` uint8 [n, 3, H, W]; ``cams_*`` float [n, H, W] in [0, 1].
    """
    from sdn.report.plots import new_figure

    n = images.shape[0]
    if not (cams_first.shape[0] == cams_final.shape[0] == len(row_titles) == n) or n == 0:
        raise ValueError(
            f"need the same non-zero number of images ({n}), IC1 maps ({cams_first.shape[0]}), final maps "
            f"({cams_final.shape[0]}) and titles ({len(row_titles)})"
        )
    fig, axes = new_figure(n, 3, figsize=(8.4, 2.4 * n + 0.6), squeeze=False, layout="constrained")
    overlay = None
    for row in range(n):
        picture = np.transpose(images[row], (1, 2, 0))
        axes[row, 0].imshow(picture)
        axes[row, 0].set_ylabel(row_titles[row], fontsize=9, rotation=0, ha="right", va="center", labelpad=8)
        for col, cam in ((1, cams_first[row]), (2, cams_final[row])):
            axes[row, col].imshow(picture)
            overlay = axes[row, col].imshow(cam, cmap="jet", alpha=0.5, vmin=0.0, vmax=1.0)
        for axis in axes[row]:
            axis.set_xticks([])
            axis.set_yticks([])
    for col, title in enumerate(("image", "IC1 Grad-CAM", "final Grad-CAM")):
        axes[0, col].set_title(title, fontsize=10)
    colorbar = fig.colorbar(overlay, ax=axes[:, 1:], shrink=min(1.0, 0.9 / n**0.5), pad=0.02)
    colorbar.set_label("Grad-CAM relevance (0 = none, 1 = most)", fontsize=9)
    return fig
