"""BadNets poisoning (paper §5, spec §6): the trigger, poisoned training data and the triggered test split.

Works on uint8 image tensors [N, 3, H, W] (the prepared-data format) and never mutates its input.
:func:`write_poisoned` writes a poisoned copy of a prepared-data folder: ``train.pt`` poisoned, ``holdout.pt`` and
``test.pt`` copied, ``test_triggered.pt`` (every non-target test image with the trigger, true labels) and
``meta.json`` last (the format is in docs/internals.md).
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from sdn.data.prepare import TensorSplit, load_prepared, split_hashes
from sdn.io import atomic_path, load_torch, save_torch, write_json

log = logging.getLogger(__name__)

REFERENCE_SIZE = 32  # the default trigger is defined for 32 x 32 images (CIFAR-10)
DEFAULT_TRIGGER = (5, 26, 26)  # size, x, y for 32x32 images


@dataclass(frozen=True)
class Trigger:
    """A solid square stamped onto every channel: top-left corner at column ``x``, row ``y``; side ``size``.

    The default is the original code's: a 5x5 white square at (26, 26) of a 32x32 image (pixels 26..30).
    """

    size: int = 5
    x: int = 26
    y: int = 26
    value: int = 255

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"trigger size must be >= 1 pixel, got {self.size}")
        if self.x < 0 or self.y < 0:
            raise ValueError(f"trigger position (x={self.x}, y={self.y}) must be >= 0")
        if not 0 <= self.value <= 255:
            raise ValueError(f"trigger value must be a uint8 value in [0, 255], got {self.value}")

    def scaled_to(self, input_size: int, reference_size: int = REFERENCE_SIZE) -> Trigger:
        """The same trigger for ``input_size`` images: position and size scaled by input_size / reference_size."""
        if input_size < 1:
            raise ValueError(f"input size must be >= 1, got {input_size}")
        factor = input_size / reference_size
        return Trigger(
            size=max(1, round(self.size * factor)),
            x=round(self.x * factor),
            y=round(self.y * factor),
            value=self.value,
        )

    def check_fits(self, height: int, width: int) -> None:
        """Raise ValueError unless the square lies inside a ``height`` x ``width`` image."""
        if self.x + self.size > width or self.y + self.size > height:
            raise ValueError(
                f"trigger of size {self.size} at (x={self.x}, y={self.y}) covers columns "
                f"{self.x}..{self.x + self.size - 1} and rows {self.y}..{self.y + self.size - 1}, "
                f"which does not fit a {height}x{width} image (need x + size <= {width} and y + size <= {height})"
            )


def apply_trigger(images: torch.Tensor, trigger: Trigger) -> torch.Tensor:
    """A copy of uint8 ``images`` [N, C, H, W] with the trigger square set to ``trigger.value`` on every channel."""
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(
            f"images must be a uint8 tensor [N, C, H, W], got dtype {images.dtype} and shape {tuple(images.shape)}"
        )
    trigger.check_fits(images.shape[2], images.shape[3])
    out = images.clone()
    out[:, :, trigger.y : trigger.y + trigger.size, trigger.x : trigger.x + trigger.size] = trigger.value
    return out


def poison(
    split: TensorSplit, trigger: Trigger, *, target: int = 5, rate: float = 0.1, seed: int = 0
) -> tuple[TensorSplit, torch.Tensor]:
    """BadNets poisoning of a training split.

    ``round(rate * N)`` samples (N = the whole split) are drawn without replacement, with a generator seeded by
    ``seed``, among the samples whose label is NOT ``target`` (stamping a target-class image teaches nothing);
    their images get the trigger and their labels become ``target``. Returns the new split and the sorted
    indices of the poisoned samples (int64). The input split is not modified.
    """
    labels = split.labels
    _check_target(target, labels)
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"poison rate must be a fraction in [0, 1], got {rate}")
    candidates = torch.nonzero(labels != target).flatten()
    count = round(rate * labels.numel())
    if count > candidates.numel():
        raise ValueError(
            f"poison rate {rate} asks for {count} samples but only {candidates.numel()} of {labels.numel()} "
            f"are not of the target class {target}"
        )
    generator = torch.Generator().manual_seed(seed)
    chosen = candidates[torch.randperm(candidates.numel(), generator=generator)[:count]]
    chosen = torch.sort(chosen).values
    images = split.images.clone()
    images[chosen] = apply_trigger(split.images[chosen], trigger)
    new_labels = labels.clone()
    new_labels[chosen] = target
    return TensorSplit(images=images, labels=new_labels), chosen


def triggered_split(split: TensorSplit, trigger: Trigger, *, target: int = 5) -> tuple[TensorSplit, torch.Tensor]:
    """Every sample NOT of class ``target``, with the trigger on and its TRUE label kept; plus their indices."""
    _check_target(target, split.labels)
    keep = torch.nonzero(split.labels != target).flatten()
    images = apply_trigger(split.images[keep], trigger)
    return TensorSplit(images=images, labels=split.labels[keep].clone()), keep


def _check_target(target: int, labels: torch.Tensor) -> None:
    if labels.dtype != torch.int64 or labels.ndim != 1:
        raise ValueError(f"labels must be an int64 tensor [N], got dtype {labels.dtype}, shape {tuple(labels.shape)}")
    if target < 0:
        raise ValueError(f"target class must be >= 0, got {target}")


def resolve_trigger(input_size: int, size: int | None, x: int | None, y: int | None, value: int) -> Trigger:
    """The default trigger scaled to ``input_size``; any of size/x/y given explicitly is used as is."""
    scaled = Trigger(*DEFAULT_TRIGGER, value=value).scaled_to(input_size)
    return Trigger(
        size=scaled.size if size is None else size,
        x=scaled.x if x is None else x,
        y=scaled.y if y is None else y,
        value=value,
    )


def write_poisoned(
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    trigger: Trigger,
    target: int,
    rate: float,
    seed: int,
) -> Path:
    """Write the poisoned prepared-data folder (format of docs/internals.md); meta.json is written last."""
    clean = load_prepared(data_dir)
    num_classes = int(clean.info.num_classes)
    if not 0 <= target < num_classes:
        raise ValueError(f"--target {target} is not a class of {clean.info.name} (0..{num_classes - 1})")
    size = int(clean.info.input_size)
    trigger.check_fits(size, size)
    src, out = Path(data_dir), Path(out_dir)
    if src.resolve() == out.resolve():
        raise ValueError(f"--out must differ from --data ({src}): the clean data must stay clean")
    out.mkdir(parents=True, exist_ok=True)
    (out / "meta.json").unlink(missing_ok=True)  # the folder is untrusted until the new meta.json lands

    train_blob = load_torch(src / "train.pt")
    poisoned, chosen = poison(clean.split("train"), trigger, target=target, rate=rate, seed=seed)
    save_torch({**train_blob, "images": poisoned.images, "labels": poisoned.labels}, out / "train.pt")
    for split in ("holdout", "test"):
        with atomic_path(out / f"{split}.pt") as tmp:
            shutil.copyfile(src / f"{split}.pt", tmp)
    test_blob = load_torch(src / "test.pt")
    triggered, kept = triggered_split(clean.split("test"), trigger, target=target)
    blob = {"images": triggered.images, "labels": triggered.labels}
    if "indices" in test_blob:
        blob["indices"] = test_blob["indices"][kept]
    save_torch(blob, out / "test_triggered.pt")
    everything = clean.split("test")  # also the target class: "triggered accuracy over all triggered images"
    save_torch({**test_blob, "images": apply_trigger(everything.images, trigger)}, out / "test_triggered_all.pt")

    meta = dict(clean.meta)
    meta["sizes"] = {**meta.get("sizes", {}), "test_triggered": len(triggered), "test_triggered_all": len(everything)}
    meta["backdoor"] = {
        "attack": "badnets",
        "clean_data": str(src),
        "target": target,
        "rate": rate,
        "seed": seed,
        "trigger": {"size": trigger.size, "x": trigger.x, "y": trigger.y, "value": trigger.value},
        "poisoned_count": int(chosen.numel()),
        "poisoned_indices": "poisoned_indices.json (positions in train.pt)",
        "test_triggered": "every test sample not of the target class, trigger on, TRUE labels",
        "test_triggered_all": "every test sample, trigger on, TRUE labels",
    }
    meta["sha256"] = split_hashes(out)
    write_json(out / "poisoned_indices.json", chosen.tolist())
    write_json(out / "meta.json", meta)
    log.info(
        "poisoned %d of %d training samples (target %d); %d triggered test samples -> %s",
        chosen.numel(),
        len(poisoned),
        target,
        len(triggered),
        out,
    )
    return out
