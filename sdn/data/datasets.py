"""Data sets by name: where the images come from, their classes, normalisation and augmentation parameters.

``load_raw(name, ...)`` returns a :class:`RawDataset` whose train/test sources decode images on demand into uint8
``[N, 3, H, W]`` tensors; :mod:`sdn.data.prepare` turns that into the cached tensor files.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from sdn.data.download import download, extract_zip, verify_checksum

log = logging.getLogger(__name__)

KNOWN_DATASETS = ("cifar10", "cifar100", "tinyimagenet", "imagefolder", "digits", "synthetic")

# (num_classes, input_size) of the data sets whose shape is fixed.
_SHAPES: dict[str, tuple[int, int]] = {
    "cifar10": (10, 32),
    "cifar100": (100, 32),
    "tinyimagenet": (200, 64),
    "digits": (10, 32),
}

Stats = tuple[tuple[float, float, float], tuple[float, float, float]]

# Per-data-set (mean, std). Data sets missing here get statistics computed from their training images.
DATASET_STATS: dict[str, Stats] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.507, 0.487, 0.441), (0.267, 0.256, 0.276)),
    "tinyimagenet": ((0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262)),
}
# The original code normalised CIFAR-10 with these (spec §9, bug 10); kept as ``normalization="imagenet"``.
IMAGENET_STATS: Stats = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
NORMALIZATIONS = ("dataset", "imagenet")

TINY_IMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
# The digest published for the official archive (the one torchvision-style loaders check). No SHA-256 of the
# archive could be verified from here (no network), so the default check is this MD5; pass
# ``checksum="sha256:<hex>"`` to check a SHA-256 instead.
TINY_IMAGENET_CHECKSUM = "md5:90528d7ca1a48142e341f4ef8d21d0de"
TINY_IMAGENET_FOLDER = "tiny-imagenet-200"
TINY_IMAGENET_JITTER = 0.2

DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0


def check_name(name: str) -> str:
    if name not in KNOWN_DATASETS:
        raise ValueError(f"unknown data set {name!r}; known: {', '.join(KNOWN_DATASETS)}")
    return name


def dataset_shape(name: str) -> tuple[int, int]:
    """``(num_classes, input_size)`` of a data set with a fixed shape (cifar10, cifar100, tinyimagenet, digits)."""
    check_name(name)
    if name not in _SHAPES:
        raise ValueError(
            f"data set {name!r} has no fixed shape (it depends on the files or options); "
            f"fixed: {', '.join(_SHAPES)}. Read num_classes/input_size from the prepared meta.json instead"
        )
    return _SHAPES[name]


def augmentation_params(name: str, input_size: int) -> tuple[int, float]:
    """``(crop_padding, color_jitter)``: padding 4 for 32x32 and 8 for 64x64 (input_size // 8); jitter for Tiny."""
    return max(1, input_size // 8), (TINY_IMAGENET_JITTER if name == "tinyimagenet" else 0.0)


@dataclass(frozen=True)
class DatasetInfo:
    """What training needs to know about a prepared data set (read from its meta.json)."""

    name: str
    num_classes: int
    input_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_padding: int
    color_jitter: float
    classes: tuple[str, ...]

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> DatasetInfo:
        try:
            return cls(
                name=str(meta["dataset"]),
                num_classes=int(meta["num_classes"]),
                input_size=int(meta["input_size"]),
                mean=tuple(float(v) for v in meta["mean"]),
                std=tuple(float(v) for v in meta["std"]),
                crop_padding=int(meta["crop_padding"]),
                color_jitter=float(meta["color_jitter"]),
                classes=tuple(str(c) for c in meta["classes"]),
            )
        except KeyError as err:
            raise ValueError(f"prepared-data meta lacks the key {err.args[0]!r}") from None


class ImageSource(Protocol):
    """One split of a raw data set: labels known up front, images decoded on demand."""

    labels: torch.Tensor

    def load(self, indices: torch.Tensor) -> torch.Tensor: ...


@dataclass
class ArraySource:
    """Images already in memory as uint8 ``[N, 3, H, W]``."""

    images: torch.Tensor
    labels: torch.Tensor

    def load(self, indices: torch.Tensor) -> torch.Tensor:
        return self.images[indices].contiguous()


@dataclass
class FileSource:
    """Image files decoded with PIL (converted to RGB). Every image must be ``size`` x ``size``, or with ``resize``
    is scaled (shorter side to ``size``, bilinear) and centre-cropped to it."""

    paths: list[Path]
    labels: torch.Tensor
    size: int
    resize: bool = False

    def load(self, indices: torch.Tensor) -> torch.Tensor:
        out = torch.empty((len(indices), 3, self.size, self.size), dtype=torch.uint8)
        for row, index in enumerate(indices.tolist()):
            path = self.paths[index]
            pixels = read_image(path, self.size if self.resize else None)
            if pixels.shape[:2] != (self.size, self.size):
                raise ValueError(
                    f"{path} is {pixels.shape[1]}x{pixels.shape[0]}; every image of this data set must be "
                    f"{self.size}x{self.size} (or set image_size / --image-size to resize and crop them)"
                )
            out[row] = torch.from_numpy(pixels).permute(2, 0, 1)
        return out


def read_image(path: Path, size: int | None = None) -> np.ndarray:
    """``path`` as an RGB uint8 array (H, W, 3); with ``size`` scaled (shorter side) and centre-cropped to it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise ValueError(f"cannot read image {path} ({error}); remove or replace the file") from error
    return np.array(rgb if size is None else scale_and_crop(rgb, size))


def scale_and_crop(rgb: Any, size: int) -> Any:
    """A PIL image scaled (shorter side to ``size``, bilinear) and centre-cropped to ``size`` x ``size``: the one
    definition, used for training data and for images given to a trained model (:mod:`sdn.predict`)."""
    from PIL import Image

    width, height = rgb.size
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    rgb = rgb.resize((new_w, new_h), Image.Resampling.BILINEAR)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return rgb.crop((left, top, left + size, top + size))


@dataclass
class RawDataset:
    name: str
    classes: tuple[str, ...]
    input_size: int
    train: ImageSource
    test: ImageSource
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


@dataclass(frozen=True)
class SyntheticSpec:
    """Random but learnable data: each class is a smooth random colour pattern plus per-image noise."""

    num_classes: int = 4
    input_size: int = 32
    train_size: int = 400
    test_size: int = 100
    noise: float = 0.15
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_classes < 2 or self.input_size < 4 or self.train_size < 1 or self.test_size < 1:
            raise ValueError(f"invalid synthetic spec {self}: need num_classes>=2, input_size>=4, sizes>=1")


def stats_for(name: str, normalization: str) -> Stats | None:
    """Fixed (mean, std) for this data set and normalisation, or None when they are computed from the data."""
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization {normalization!r}; allowed: {', '.join(NORMALIZATIONS)}")
    if normalization == "imagenet":
        return IMAGENET_STATS
    return DATASET_STATS.get(name)


def load_raw(
    name: str,
    *,
    data_root: str | os.PathLike[str],
    url: str | None = None,
    local_path: str | os.PathLike[str] | None = None,
    checksum: str | None = None,
    synthetic: SyntheticSpec | None = None,
    image_size: int | None = None,
    test_fraction: float | None = None,
) -> RawDataset:
    """The raw train/test sources of data set ``name`` (see module docstring). ``image_size`` and
    ``test_fraction``: imagefolder only (see :func:`imagefolder`)."""
    if (image_size is not None or test_fraction is not None) and name != "imagefolder":
        raise ValueError(f"image_size and test_fraction apply to imagefolder data sets, not {name!r}")
    check_name(name)
    root = Path(data_root)
    if name in ("cifar10", "cifar100"):
        return _cifar(name, root)
    if name == "tinyimagenet":
        return _tinyimagenet(root, url=url or TINY_IMAGENET_URL, local_path=local_path, checksum=checksum)
    if name == "imagefolder":
        folder = Path(local_path) if local_path is not None else root
        return imagefolder(folder, image_size=image_size, test_fraction=test_fraction)
    if name == "digits":
        return _digits()
    return _synthetic(synthetic or SyntheticSpec())


# --- CIFAR ------------------------------------------------------------------------------------------------


def _cifar(name: str, root: Path) -> RawDataset:
    from torchvision import datasets

    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    splits = {}
    for train in (True, False):
        try:
            splits[train] = cls(root=str(root), train=train, download=True)
        except (OSError, RuntimeError) as err:  # URLError is an OSError; torchvision raises RuntimeError
            raise FileNotFoundError(
                f"{name} is not under data_root {root} and downloading it from {cls.url} failed ({err}). "
                f"On a machine without network, copy {cls.filename} (or its extracted {cls.base_folder}/ folder) "
                f"into {root} and pass it as --data-root, or use --dataset imagefolder with --data-root pointing "
                "at a folder with train/ and test/ ImageFolder trees (e.g. an extracted cifar10-jpeg)"
            ) from None

    def source(ds: Any) -> ArraySource:
        images = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()
        return ArraySource(images, torch.as_tensor(ds.targets, dtype=torch.int64))

    return RawDataset(
        name=name,
        classes=tuple(splits[True].classes),
        input_size=32,
        train=source(splits[True]),
        test=source(splits[False]),
        source={"kind": "torchvision", "url": cls.url},
    )


# --- Tiny ImageNet ----------------------------------------------------------------------------------------


def _tinyimagenet(
    root: Path, *, url: str, local_path: str | os.PathLike[str] | None, checksum: str | None
) -> RawDataset:
    checksum = checksum or TINY_IMAGENET_CHECKSUM
    folder = root / TINY_IMAGENET_FOLDER
    if local_path is not None:
        local = Path(local_path)
        if local.is_dir():
            folder = local
        elif local.is_file():
            if not _is_tiny_folder(folder):
                verify_checksum(local, checksum)  # a user's file: report, never delete
                extract_zip(local, root, TINY_IMAGENET_FOLDER)
        else:
            raise FileNotFoundError(f"Tiny ImageNet local path {local} does not exist (give the zip or its folder)")
    elif not _is_tiny_folder(folder):
        archive = root / f"{TINY_IMAGENET_FOLDER}.zip"
        try:
            download(url, archive, checksum=checksum)
        except OSError as err:
            raise FileNotFoundError(
                f"Tiny ImageNet is not under data_root {root} and downloading {url} failed ({err}). On a machine "
                f"without network, put {archive.name} (or the extracted {TINY_IMAGENET_FOLDER}/ folder) under "
                "data_root, or pass --local-path to a copy"
            ) from None
        extract_zip(archive, root, TINY_IMAGENET_FOLDER)
    if not _is_tiny_folder(folder):
        raise FileNotFoundError(f"{folder} is not a Tiny ImageNet folder (needs wnids.txt, train/, val/)")
    return _read_tiny_folder(folder, source={"kind": "tinyimagenet", "url": url, "checksum": checksum})


def _is_tiny_folder(folder: Path) -> bool:
    return (folder / "wnids.txt").is_file() and (folder / "train").is_dir() and (folder / "val").is_dir()


def _read_tiny_folder(folder: Path, *, source: dict[str, Any]) -> RawDataset:
    """Train = train/<wnid>/images/*; test = the official val split, labelled by val_annotations.txt.

    Val images are mapped to their classes in place of moving them into class folders, so a read-only copy works.
    """
    wnids = sorted({line.strip() for line in (folder / "wnids.txt").read_text().splitlines() if line.strip()})
    index = {wnid: i for i, wnid in enumerate(wnids)}
    train_paths: list[Path] = []
    train_labels: list[int] = []
    for wnid in wnids:
        images = folder / "train" / wnid / "images"
        if not images.is_dir():
            raise FileNotFoundError(f"Tiny ImageNet class folder {images} is missing")
        found = sorted(p for p in images.iterdir() if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
        train_paths += found
        train_labels += [index[wnid]] * len(found)
    annotations = folder / "val" / "val_annotations.txt"
    if not annotations.is_file():
        raise FileNotFoundError(f"Tiny ImageNet val labels {annotations} are missing")
    test_paths: list[Path] = []
    test_labels: list[int] = []
    for line in sorted(annotations.read_text().splitlines()):
        fields = line.split("\t")
        if len(fields) < 2:
            continue
        if fields[1] not in index:
            raise ValueError(f"{annotations}: class {fields[1]!r} of {fields[0]} is not in wnids.txt")
        image = folder / "val" / "images" / fields[0]
        if not image.is_file():  # a tree whose val images were already moved into class folders
            image = folder / "val" / "images" / fields[1] / fields[0]
        test_paths.append(image)
        test_labels.append(index[fields[1]])
    return RawDataset(
        name="tinyimagenet",
        classes=tuple(wnids),
        input_size=64,
        train=FileSource(train_paths, torch.tensor(train_labels, dtype=torch.int64), 64),
        test=FileSource(test_paths, torch.tensor(test_labels, dtype=torch.int64), 64),
        source={**source, "folder": str(folder)},
    )


# --- ImageFolder ------------------------------------------------------------------------------------------

_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".gif", ".tif", ".tiff", ".webp")


def imagefolder(root: Path, *, image_size: int | None = None, test_fraction: float | None = None) -> RawDataset:
    """``root/train/<class>/*`` and ``root/test/<class>/*`` (or, with ``test_fraction``, only ``train/``: every
    ``round(1/test_fraction)``-th image of each class, in sorted order, becomes the test split). Images of any size
    with ``image_size`` (scaled and centre-cropped to it); without it they must be square and all one size."""
    if not root.is_dir():
        raise FileNotFoundError(f"imagefolder data root {root} does not exist (it needs train/ and test/ folders)")
    if image_size is not None and image_size < 4:
        raise ValueError(f"imagefolder image_size must be at least 4 pixels, got {image_size}")
    if test_fraction is not None and not 0.0 < test_fraction < 1.0:
        raise ValueError(f"imagefolder test_fraction must lie in (0, 1), got {test_fraction}")
    splits = {}
    for split in ("train", "test") if test_fraction is None else ("train",):
        folder = root / split
        if not folder.is_dir():
            hint = " or set test_fraction (--test-fraction) to split train/" if split == "test" else ""
            raise FileNotFoundError(
                f"imagefolder split folder {folder} is missing (need {root}/train and {root}/test{hint})"
            )
        splits[split] = _scan_folder(folder)
    if test_fraction is not None:
        splits["train"], splits["test"] = _split_every_nth(*splits["train"], round(1 / test_fraction))
    train_classes, test_classes = splits["train"][0], splits["test"][0]
    if train_classes != test_classes:
        raise ValueError(
            f"{root}: train/ and test/ have different class folders: {list(train_classes)} vs {list(test_classes)}"
        )
    size = image_size
    if size is None:
        first = splits["train"][1][0]
        height, width = read_image(first).shape[:2]
        if width != height:
            raise ValueError(
                f"{first} is {width}x{height}; imagefolder images must be square and all the same size, "
                "or set image_size (--image-size) to resize and crop them"
            )
        size = width

    def source(paths: list[Path], labels: list[int]) -> FileSource:
        return FileSource(paths, torch.tensor(labels, dtype=torch.int64), size, resize=image_size is not None)

    return RawDataset(
        name="imagefolder",
        classes=train_classes,
        input_size=size,
        train=source(*splits["train"][1:]),
        test=source(*splits["test"][1:]),
        source={"kind": "imagefolder", "root": str(root.resolve())},
    )


def _split_every_nth(
    classes: tuple[str, ...], paths: list[Path], labels: list[int], every: int
) -> tuple[tuple[tuple[str, ...], list[Path], list[int]], tuple[tuple[str, ...], list[Path], list[int]]]:
    seen: dict[int, int] = {}
    train: tuple[list[Path], list[int]] = ([], [])
    test: tuple[list[Path], list[int]] = ([], [])
    for path, label in zip(paths, labels, strict=True):
        seen[label] = seen.get(label, 0) + 1
        target = test if seen[label] % every == 0 else train
        target[0].append(path)
        target[1].append(label)
    empty = [classes[c] for c in range(len(classes)) if c not in test[1] or c not in train[1]]
    if empty:
        raise ValueError(f"test_fraction leaves class(es) {empty} without train or test images; add images")
    return (classes, *train), (classes, *test)


def _scan_folder(folder: Path) -> tuple[tuple[str, ...], list[Path], list[int]]:
    classes = tuple(sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")))
    if not classes:
        raise FileNotFoundError(f"{folder} has no class sub-folders (expected {folder}/<class>/<image files>)")
    if len(classes) < 2:
        raise ValueError(
            f"{folder} has one class folder ({classes[0]}); a classifier needs at least two: "
            f"add {folder}/<another class>/ with images"
        )
    paths: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        found = sorted(p for p in (folder / name).rglob("*") if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES)
        paths += found
        labels += [label] * len(found)
    if not paths:
        raise FileNotFoundError(f"{folder} holds no image files ({', '.join(_IMAGE_SUFFIXES)})")
    return classes, paths, labels


# --- digits -----------------------------------------------------------------------------------------------


def _digits() -> RawDataset:
    """scikit-learn's 1,797 8x8 digits (values 0..16), bilinearly upsampled to 32x32 and repeated to RGB."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    pixels = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) * (255.0 / 16.0)
    upsampled = F.interpolate(pixels, size=(32, 32), mode="bilinear", align_corners=False)
    images = upsampled.round().clamp(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    labels = torch.as_tensor(bunch.target, dtype=torch.int64)
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)),
        test_size=DIGITS_TEST_FRACTION,
        random_state=DIGITS_SPLIT_SEED,
        stratify=labels.numpy(),
    )
    train_idx, test_idx = torch.as_tensor(np.sort(train_idx)), torch.as_tensor(np.sort(test_idx))
    return RawDataset(
        name="digits",
        classes=tuple(str(d) for d in range(10)),
        input_size=32,
        train=ArraySource(images[train_idx], labels[train_idx]),
        test=ArraySource(images[test_idx], labels[test_idx]),
        source={"kind": "sklearn.load_digits", "upsample": "bilinear", "test_fraction": DIGITS_TEST_FRACTION},
    )


# --- synthetic --------------------------------------------------------------------------------------------


def synthetic_images(spec: SyntheticSpec, count: int, stream: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` images of ``spec``; ``stream`` separates train (0) from test (1) draws."""
    prototypes_gen = torch.Generator().manual_seed(spec.seed)
    coarse = torch.rand((spec.num_classes, 3, 4, 4), generator=prototypes_gen)
    size = (spec.input_size, spec.input_size)
    prototypes = F.interpolate(coarse, size=size, mode="bilinear", align_corners=False)
    gen = torch.Generator().manual_seed(spec.seed * 1000 + 1 + stream)
    labels = torch.arange(count) % spec.num_classes
    labels = labels[torch.randperm(count, generator=gen)]
    noise = torch.randn((count, 3, *size), generator=gen) * spec.noise
    images = ((prototypes[labels] + noise).clamp(0, 1) * 255).round().to(torch.uint8)
    return images, labels.to(torch.int64)


def _synthetic(spec: SyntheticSpec) -> RawDataset:
    train = synthetic_images(spec, spec.train_size, 0)
    test = synthetic_images(spec, spec.test_size, 1)
    return RawDataset(
        name="synthetic",
        classes=tuple(f"class{k}" for k in range(spec.num_classes)),
        input_size=spec.input_size,
        train=ArraySource(*train),
        test=ArraySource(*test),
        source={"kind": "synthetic", **{k: getattr(spec, k) for k in spec.__dataclass_fields__}},
    )


def compute_stats(images: torch.Tensor, chunk: int = 4096) -> Stats:
    """Per-channel mean and std of uint8 ``[N, 3, H, W]`` images scaled to [0, 1]."""
    if images.shape[0] == 0:
        raise ValueError("cannot compute normalisation statistics of an empty training set")
    total = torch.zeros(3, dtype=torch.float64)
    squares = torch.zeros(3, dtype=torch.float64)
    for start in range(0, images.shape[0], chunk):
        block = images[start : start + chunk].to(torch.float64) / 255.0
        total += block.sum(dim=(0, 2, 3))
        squares += (block * block).sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    std = (squares / count - mean * mean).clamp_min(1e-12).sqrt()
    return tuple(round(float(v), 6) for v in mean), tuple(round(float(v), 6) for v in std)  # type: ignore[return-value]
