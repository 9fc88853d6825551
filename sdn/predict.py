"""Deploying a trained SDN: early-exit predictions on real image files, decoded and normalised as in training.

:class:`Predictor` loads a ``model.pt`` (:mod:`sdn.checkpoint`) and the threshold the early-exit analysis chose on
the held-out split (:mod:`sdn.exit_policy`), decodes images with PIL (RGB, the model's input size, no resizing:
training reads image files the same way), normalises them with the training data's mean and std, and runs the
online early exit of :func:`sdn.inference.early_exit_forward` in batches, so computation really stops at the exit.
Per image it returns the class, the exit index, the confidence (top softmax probability of the answering output)
and the cost paid as a fraction of the CNN's.

Bad input never stops a batch: an unreadable file, a grayscale image or one of the wrong size becomes a
:class:`Prediction` whose ``error`` says what is wrong; the other images are still answered.
"""

from __future__ import annotations

import base64
import binascii
import io as _io
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sdn import checkpoint
from sdn.exit_policy import ExitPolicy, override, resolve
from sdn.inference import early_exit_forward
from sdn.io import read_json
from sdn.models.multiexit import MultiExitNet
from sdn.outputs import exit_cost_arrays, exit_names

GRAYSCALE_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
DEFAULT_BATCH_SIZE = 64


class ImageError(ValueError):
    """One input is not an image this model can take (the message names it and what to do)."""


@dataclass(frozen=True)
class Preprocess:
    """How training turned image files into network inputs: RGB uint8 of ``size`` x ``size`` (with ``resize``:
    scaled, shorter side to ``size``, and centre-cropped, as an image folder prepared with ``--image-size``), /255,
    mean/std."""

    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...]
    resize: bool = False

    @classmethod
    def from_meta(cls, meta: dict[str, Any], data_dir: str | os.PathLike[str] | None = None) -> Preprocess:
        """From a checkpoint's meta (``preprocess``, recorded since issue 16), else a prepared data folder's."""
        record = meta.get("preprocess")
        if data_dir is not None:
            path = Path(data_dir) / "meta.json"
            if not path.is_file():
                raise FileNotFoundError(f"{path} does not exist: --data must be a prepared data folder")
            record = read_json(path)
        if not isinstance(record, dict) or not {"mean", "std", "classes"} <= set(record):
            raise ValueError(
                "the checkpoint records no input normalisation (it predates `preprocess` in meta.json): "
                "give the prepared data folder it was trained on (--data, or data_dir=...)"
            )
        classes = tuple(str(c) for c in record["classes"])
        if len(classes) != int(meta["num_classes"]):
            raise ValueError(f"the data lists {len(classes)} classes but the model has {meta['num_classes']}")
        return cls(
            size=int(meta["input_size"]),
            mean=tuple(float(v) for v in record["mean"]),
            std=tuple(float(v) for v in record["std"]),
            classes=classes,
            resize=bool(record.get("resize", False) or (record.get("request") or {}).get("image_size")),
        )


@dataclass
class Prediction:
    """The answer for one image, or its ``error`` (then the other fields are None)."""

    source: str
    class_index: int | None = None
    class_name: str | None = None
    exit_index: int | None = None
    exit_name: str | None = None
    confidence: float | None = None
    cost_fraction: float | None = None
    error: str | None = None

    def record(self) -> dict[str, Any]:
        return asdict(self)


def decode_image(data: bytes, size: int, name: str = "image", *, resize: bool = False) -> torch.Tensor:
    """uint8 ``[3, size, size]`` of an encoded image (PNG, JPEG, ...); ImageError naming ``name`` otherwise.

    With ``resize`` an image of any size is scaled and centre-cropped as :func:`sdn.data.datasets.scale_and_crop`
    does for the training data; without it the image must be ``size`` x ``size``."""
    from PIL import Image, UnidentifiedImageError

    from sdn.data.datasets import scale_and_crop

    if not data:
        raise ImageError(f"{name}: empty (0 bytes); send the bytes of an image file")
    try:
        with Image.open(_io.BytesIO(data)) as image:
            image.load()
            mode, (width, height) = image.mode, image.size
            if mode in GRAYSCALE_MODES:
                raise ImageError(
                    f"{name}: grayscale image (PIL mode {mode}); this model takes colour (RGB) images: "
                    "convert it to RGB first"
                )
            if (width, height) != (size, size) and not resize:
                raise ImageError(
                    f"{name}: {width}x{height} pixels; this model takes {size}x{size} images "
                    "(resize or crop it first, as the training data was prepared)"
                )
            rgb = image.convert("RGB")
            pixels = np.asarray(scale_and_crop(rgb, size) if resize else rgb, dtype=np.uint8)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(
            f"{name}: not an image file PIL can read (unknown format); send a PNG or JPEG file"
        ) from None
    except (OSError, ValueError, SyntaxError) as err:
        raise ImageError(f"{name}: not an image file PIL can read (broken file: {err})") from None
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1).contiguous()


def image_files(paths: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """The files named, folders expanded to every visible file inside them (sorted, recursively)."""
    found: list[Path] = []
    for entry in map(Path, paths):
        if entry.is_dir():
            inside = sorted(p for p in entry.rglob("*") if p.is_file() and not p.name.startswith("."))
            found += inside
        else:
            found.append(entry)
    return found


class Predictor:
    """Online early exit of one trained SDN on images (see the module docstring)."""

    def __init__(
        self,
        model: MultiExitNet,
        meta: dict[str, Any],
        preprocess: Preprocess,
        policy: ExitPolicy,
        *,
        device: str | torch.device = "cpu",
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.meta = meta
        self.preprocess = preprocess
        self.policy = override(policy)
        self.batch_size = batch_size
        num_exits = model.num_exits
        self.exit_fraction = exit_cost_arrays(meta["cost"], num_exits)["exit_fraction"]
        self.exit_names = exit_names(num_exits)
        self._mean = torch.tensor(preprocess.mean, device=self.device).view(1, -1, 1, 1)
        self._inv_std = 1.0 / torch.tensor(preprocess.std, device=self.device).view(1, -1, 1, 1)

    @classmethod
    def load(
        cls,
        checkpoint_path: str | os.PathLike[str],
        *,
        policy: str | None = None,
        threshold: float | int | None = None,
        rule: str | None = None,
        summary: str | os.PathLike[str] | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        device: str | torch.device = "cpu",
        batch_size: int = DEFAULT_BATCH_SIZE,
        exit_policy: ExitPolicy | None = None,
        preprocess: Preprocess | None = None,
    ) -> Predictor:
        """Load ``model.pt``; the threshold is ``threshold``, else the one ``rule`` (default: tolerance) chose in
        the early-exit analysis beside it (or ``summary``). ``exit_policy`` and ``preprocess`` (as recorded in an
        MLflow model) replace all of that and the checkpoint's normalisation."""
        model, meta = checkpoint.load_checkpoint(checkpoint_path, device)
        if model.num_exits < 2:
            raise ValueError(f"{checkpoint_path} is a plain CNN (no internal classifiers): nothing can exit early")
        if exit_policy is None:
            exit_policy = resolve(checkpoint_path, policy=policy, threshold=threshold, rule=rule, summary=summary)
        if preprocess is None:
            preprocess = Preprocess.from_meta(meta, data_dir)
        return cls(model, meta, preprocess, exit_policy, device=device, batch_size=batch_size)

    def with_overrides(self, *, threshold: Any = None, policy: str | None = None) -> ExitPolicy:
        """This predictor's policy with ``policy``/``threshold`` replaced (ValueError when out of range)."""
        return override(self.policy, policy=policy, threshold=threshold)

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``[N, 3, H, W]`` to the float input the model was trained on (as :mod:`sdn.data.loader`)."""
        x = images.to(self.device).to(torch.float32) / 255.0
        return (x - self._mean) * self._inv_std

    @torch.no_grad()
    def run(self, x: torch.Tensor, policy: ExitPolicy | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(class [N], exit index [N], confidence [N])`` of early exit on normalised inputs ``x``."""
        policy = policy or self.policy
        outputs: list[tuple[int, torch.Tensor]] = []
        heads = [*self.model.exits, self.model.head]
        hooks = [
            head.register_forward_hook(lambda _m, _i, out, e=e: outputs.append((e, out.detach())))
            for e, head in enumerate(heads)
        ]
        try:
            classes, exits = early_exit_forward(self.model, x, policy.policy, policy.threshold, policy.fallback)
        finally:
            for hook in hooks:
                hook.remove()
        exits_cpu = exits.cpu()
        confidence = torch.full((x.shape[0],), math.nan, dtype=torch.float64)
        best = torch.full((x.shape[0],), -1.0, dtype=torch.float64)
        for e, logits in outputs:  # rows of exit e: the samples that reached it, in their original order
            rows = (exits_cpu >= e).nonzero().squeeze(1)
            top = torch.softmax(logits.double(), dim=1).max(dim=1).values.cpu()
            best[rows] = torch.maximum(best[rows], top)
            stopped = exits_cpu[rows] == e
            confidence[rows[stopped]] = top[stopped]
        if policy.fallback == "most-confident":  # unstopped samples answer with their most confident output
            final = exits_cpu == len(heads) - 1
            confidence[final] = best[final]
        return classes.cpu().numpy(), exits_cpu.numpy(), confidence.numpy()

    def predict_images(self, images: torch.Tensor, policy: ExitPolicy | None = None) -> list[Prediction]:
        """Predictions for decoded uint8 ``[N, 3, H, W]`` images, in batches of ``batch_size``."""
        results: list[Prediction] = []
        for start in range(0, images.shape[0], self.batch_size):
            batch = images[start : start + self.batch_size]
            classes, exits, confidence = self.run(self.normalise(batch), policy)
            for offset, (c, e, p) in enumerate(
                zip(classes.tolist(), exits.tolist(), confidence.tolist(), strict=True)
            ):
                results.append(
                    Prediction(
                        source=f"#{start + offset}",
                        class_index=int(c),
                        class_name=self.preprocess.classes[int(c)],
                        exit_index=int(e),
                        exit_name=self.exit_names[int(e)],
                        confidence=float(p),
                        cost_fraction=float(self.exit_fraction[int(e)]),
                    )
                )
        return results

    def predict_bytes(self, items: Sequence[tuple[str, bytes]], policy: ExitPolicy | None = None) -> list[Prediction]:
        """One :class:`Prediction` per ``(name, encoded image bytes)``, in order; bad items carry ``error``."""
        decoded: list[torch.Tensor] = []
        slots: list[Prediction | int] = []
        for name, data in items:
            try:
                decoded.append(decode_image(data, self.preprocess.size, name, resize=self.preprocess.resize))
                slots.append(len(decoded) - 1)
            except ImageError as err:
                slots.append(Prediction(source=name, error=str(err)))
        answers = self.predict_images(torch.stack(decoded), policy) if decoded else []
        results = []
        for (name, _), slot in zip(items, slots, strict=True):
            if isinstance(slot, Prediction):
                results.append(slot)
            else:
                answers[slot].source = name
                results.append(answers[slot])
        return results

    def predict_files(
        self, paths: Sequence[str | os.PathLike[str]], policy: ExitPolicy | None = None
    ) -> list[Prediction]:
        """Predictions for image files and folders of them (see :func:`image_files`)."""
        items: list[tuple[str, bytes]] = []
        unreadable: dict[int, Prediction] = {}
        for path in image_files(paths):
            try:
                items.append((str(path), path.read_bytes()))
            except OSError as err:
                unreadable[len(items) + len(unreadable)] = Prediction(
                    source=str(path), error=f"{path}: cannot be read ({err.strerror or err})"
                )
        return _merge(unreadable, self.predict_bytes(items, policy))

    def predict_base64(
        self, images: Sequence[Any], *, threshold: Any = None, policy: str | None = None
    ) -> list[Prediction]:
        """The serving entry point: base64-encoded image files (one string each; named ``#0``, ``#1``, ...).

        ``threshold``/``policy`` override this predictor's for this call. An empty request or a threshold out of
        range raises ValueError (the whole request is wrong); a bad image is an ``error`` in its own row.
        """
        if len(images) == 0:
            raise ValueError("empty request: send at least one base64-encoded image in the 'image' column")
        chosen = self.with_overrides(threshold=threshold, policy=policy)
        items: list[tuple[str, bytes]] = []
        failed: dict[int, Prediction] = {}
        for n, text in enumerate(images):
            try:
                if not isinstance(text, str | bytes):
                    raise ValueError(type(text).__name__)
                items.append((f"#{n}", base64.b64decode(text, validate=True)))
            except (binascii.Error, ValueError) as err:
                failed[n] = Prediction(
                    source=f"#{n}", error=f"#{n}: not a base64-encoded image file ({err}); send the file's bytes"
                )
        return _merge(failed, self.predict_bytes(items, chosen))


def _merge(failed: dict[int, Prediction], answered: list[Prediction]) -> list[Prediction]:
    """``answered`` in order with the ``failed`` items put back at their positions."""
    rest = iter(answered)
    return [failed[i] if i in failed else next(rest) for i in range(len(failed) + len(answered))]
