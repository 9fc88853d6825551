"""Decode a data set once into uint8 tensor files (train / holdout / test) plus meta.json, and read them back.

Files in a prepared folder (docs/internals.md "Prepared data"): ``{split}.pt`` =
``{"images": uint8 [N,3,H,W], "labels": int64 [N], "indices": int64 [N]}`` (``indices``: positions in the data
set's original train or test split, so the held-out images are recorded), and ``meta.json``, written last: a folder
without meta.json is never trusted.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from sdn.data.datasets import (
    DatasetInfo,
    SyntheticSpec,
    augmentation_params,
    check_name,
    compute_stats,
    load_raw,
    stats_for,
)
from sdn.data.splits import holdout_size, holdout_split, subsample
from sdn.io import CorruptFileError, load_torch, read_json, save_torch, sha256_file, verify_sha256, write_json

log = logging.getLogger(__name__)

SPLITS = ("train", "holdout", "test")
FORMAT_VERSION = 1


@dataclass
class TensorSplit:
    images: torch.Tensor  # uint8 [N, 3, H, W]
    labels: torch.Tensor  # int64 [N]
    indices: torch.Tensor | None = None  # int64 [N]: positions in the data set's original split (None: unknown)

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4 or self.images.shape[1] != 3:
            raise ValueError(f"images must be uint8 [N,3,H,W], got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"labels shape {tuple(self.labels.shape)} does not match {self.images.shape[0]} images")
        if self.indices is not None and self.indices.shape != self.labels.shape:
            raise ValueError(f"indices shape {tuple(self.indices.shape)} does not match {len(self.labels)} labels")

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class PreparedData:
    path: Path
    meta: dict[str, Any]
    info: DatasetInfo
    _cache: dict[str, TensorSplit] = field(default_factory=dict, repr=False)

    @property
    def splits(self) -> list[str]:
        """The split names present in the folder (one ``{split}.pt`` file each), sorted."""
        return sorted(p.stem for p in self.path.glob("*.pt"))

    def has_split(self, name: str) -> bool:
        return (self.path / f"{name}.pt").is_file()

    def require_splits(self, names: Sequence[str]) -> None:
        """Raise ValueError naming the splits of ``names`` the folder lacks and those it has."""
        missing = [s for s in names if not self.has_split(s)]
        if missing:
            raise ValueError(
                f"split(s) {missing} not found in {self.path}; available splits: {', '.join(self.splits) or 'none'}"
            )

    def split(self, name: str) -> TensorSplit:
        if name not in self._cache:
            file = self.path / f"{name}.pt"
            if not file.is_file():
                present = self.splits
                raise FileNotFoundError(f"no split {name!r} in {self.path} (present: {', '.join(present) or 'none'})")
            remedy = f"rerun `sdn prepare-data` (or `sdn backdoor poison`) for {self.path}, or delete that folder"
            verify_sha256(file, self.meta.get("sha256", {}).get(name), remedy)
            try:
                blob = load_torch(file)
                self._cache[name] = TensorSplit(blob["images"], blob["labels"], blob.get("indices"))
            except Exception as error:  # noqa: BLE001 - any unreadable split is reported the same way
                raise CorruptFileError(f"{file} cannot be read as a prepared split ({error}); {remedy}") from error
        return self._cache[name]

    def identity(self) -> dict[str, Any]:
        """What a checkpoint records about the data it was trained on: the name and every split's sha256."""
        recorded = self.meta.get("sha256", {})
        hashes = {s: recorded.get(s) or sha256_file(self.path / f"{s}.pt") for s in self.splits}
        return {"dataset": self.info.name, "sha256": hashes}


def data_mismatch(recorded: dict[str, Any] | None, current: dict[str, Any]) -> str | None:
    """How ``current`` (:meth:`PreparedData.identity`) differs from the data identity a checkpoint recorded.

    Compared: the dataset name and every split both hold except ``train`` (the backdoor experiment trains on
    poisoned train data and shares the clean held-out and test splits). None when they agree or nothing was
    recorded (a checkpoint older than the record).
    """
    if not recorded:
        return None
    problems = []
    if recorded.get("dataset") != current.get("dataset"):
        problems.append(f"dataset {recorded.get('dataset')!r} vs {current.get('dataset')!r}")
    before, now = recorded.get("sha256", {}), current.get("sha256", {})
    for split in sorted((before.keys() & now.keys()) - {"train"}):
        if before[split] != now[split]:
            problems.append(f"{split}.pt sha256 {before[split][:12]}... vs {now[split][:12]}...")
    return "; ".join(problems) or None


def split_hashes(folder: Path) -> dict[str, str]:
    """The sha256 of every ``{split}.pt`` in ``folder`` (recorded in meta.json, checked when a split is read)."""
    return {p.stem: sha256_file(p) for p in sorted(folder.glob("*.pt"))}


def load_prepared(path: str | os.PathLike[str]) -> PreparedData:
    folder = Path(path)
    meta_file = folder / "meta.json"
    if not meta_file.is_file():
        raise FileNotFoundError(f"no prepared data at {folder} ({meta_file.name} missing); run `sdn prepare-data`")
    try:
        meta = read_json(meta_file)
        info = DatasetInfo.from_meta(meta)
    except (ValueError, KeyError, TypeError) as error:
        raise CorruptFileError(
            f"{meta_file} is not a valid prepared-data meta.json ({error!r}); rerun `sdn prepare-data` for {folder}, "
            "or delete that folder"
        ) from error
    return PreparedData(folder, meta, info)


def prepare(
    name: str,
    *,
    data_root: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    holdout: int | float | None = None,
    seed: int = 0,
    max_train: int | None = None,
    max_test: int | None = None,
    normalization: str = "dataset",
    url: str | None = None,
    local_path: str | os.PathLike[str] | None = None,
    checksum: str | None = None,
    synthetic: SyntheticSpec | None = None,
    holdout_from: str = "train",
    image_size: int | None = None,
    test_fraction: float | None = None,
) -> Path:
    """Prepare data set ``name`` into ``out_dir`` and return ``out_dir``; reuse it when its request matches.

    ``max_train`` caps the training pool (before the held-out split is carved from it); ``max_test`` the test set;
    both subsample seeded and stratified. ``holdout``: see :func:`sdn.data.splits.holdout_size`.
    ``holdout_from="test"`` trains on the whole training pool and carves the held-out split from the test set
    instead (the reported test split is the rest of it, disjoint from the held-out images).
    ``image_size`` / ``test_fraction`` (imagefolder): resize and crop images of any size; split train/ when
    there is no test/. Every image is decoded before any file is written (an unreadable one leaves nothing).
    """
    if holdout_from not in ("train", "test"):
        raise ValueError(f"holdout_from must be 'train' or 'test', got {holdout_from!r}")
    check_name(name)
    stats_for(name, normalization)  # validates the option before any work
    out = Path(out_dir)
    request = _request(name, data_root, holdout, seed, max_train, max_test, normalization, local_path, synthetic)
    if holdout_from != "train":  # absent by default: folders prepared before the option stay current
        request["holdout_from"] = holdout_from
    for key, value in (("image_size", image_size), ("test_fraction", test_fraction)):
        if value is not None:  # absent by default, as holdout_from
            request[key] = value
    if _is_current(out, request):
        log.info("prepared data at %s is up to date", out)
        return out

    raw = load_raw(
        name,
        data_root=data_root,
        url=url,
        local_path=local_path,
        checksum=checksum,
        synthetic=synthetic,
        image_size=image_size,
        test_fraction=test_fraction,
    )
    pool = subsample(raw.train.labels, max_train, seed, stream=1)
    test_idx = subsample(raw.test.labels, max_test, seed, stream=2)
    held = raw.test if holdout_from == "test" else raw.train
    if holdout_from == "test":
        n_hold = holdout_size(len(test_idx), holdout)
        test_pos, hold_pos = holdout_split(raw.test.labels[test_idx], n_hold, seed)
        train_idx, hold_idx, test_idx = pool, test_idx[hold_pos], test_idx[test_pos]
    else:
        n_hold = holdout_size(len(pool), holdout)
        train_pos, hold_pos = holdout_split(raw.train.labels[pool], n_hold, seed)
        train_idx, hold_idx = pool[train_pos], pool[hold_pos]

    log.info("decoding %s: %d train, %d holdout, %d test", name, len(train_idx), len(hold_idx), len(test_idx))
    train_images = raw.train.load(train_idx)
    hold_images, test_images = held.load(hold_idx), raw.test.load(test_idx)  # decode all before writing any
    fixed = stats_for(name, normalization)
    mean, std = fixed if fixed is not None else compute_stats(train_images)
    crop_padding, color_jitter = augmentation_params(name, raw.input_size)

    meta_file = out / "meta.json"
    meta_file.unlink(missing_ok=True)  # the folder is untrusted until the new meta.json lands
    _save_split(out / "train.pt", train_images, raw.train.labels[train_idx], train_idx)
    del train_images
    _save_split(out / "holdout.pt", hold_images, held.labels[hold_idx], hold_idx)
    _save_split(out / "test.pt", test_images, raw.test.labels[test_idx], test_idx)
    meta = {
        "dataset": name,
        "num_classes": raw.num_classes,
        "input_size": raw.input_size,
        "mean": list(mean),
        "std": list(std),
        "normalization": normalization,
        "crop_padding": crop_padding,
        "color_jitter": color_jitter,
        "classes": list(raw.classes),
        "sizes": {"train": len(train_idx), "holdout": len(hold_idx), "test": len(test_idx)},
        "holdout_seed": seed,
        "holdout_from": holdout_from,
        "holdout_indices": f"holdout.pt['indices'] (positions in the original {holdout_from} split)",
        "source": {**raw.source, "original_sizes": {"train": len(raw.train.labels), "test": len(raw.test.labels)}},
        "request": request,
        "format_version": FORMAT_VERSION,
        "sha256": split_hashes(out),
    }
    write_json(meta_file, meta)
    return out


def _save_split(path: Path, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor) -> None:
    TensorSplit(images, labels, indices)  # validates shapes and dtypes
    save_torch({"images": images, "labels": labels.to(torch.int64), "indices": indices.to(torch.int64)}, path)


def _request(
    name: str,
    data_root: str | os.PathLike[str],
    holdout: int | float | None,
    seed: int,
    max_train: int | None,
    max_test: int | None,
    normalization: str,
    local_path: str | os.PathLike[str] | None,
    synthetic: SyntheticSpec | None,
) -> dict[str, Any]:
    """What determines the prepared content; equal requests give equal folders."""
    request: dict[str, Any] = {
        "dataset": name,
        "holdout": holdout,
        "seed": seed,
        "max_train": max_train,
        "max_test": max_test,
        "normalization": normalization,
        "format_version": FORMAT_VERSION,
    }
    if name == "imagefolder":  # the content is whatever lies under the root
        request["root"] = str(Path(local_path if local_path is not None else data_root).resolve())
    if name == "synthetic":
        request["synthetic"] = asdict(synthetic or SyntheticSpec())
    return request


def _is_current(out: Path, request: dict[str, Any]) -> bool:
    meta_file = out / "meta.json"
    if not meta_file.is_file() or not all((out / f"{s}.pt").is_file() for s in SPLITS):
        return False
    try:
        meta = read_json(meta_file)
    except ValueError:
        return False
    if meta.get("request") != request:
        return False
    recorded = meta.get("sha256", {})
    for split in SPLITS:
        if recorded.get(split) != sha256_file(out / f"{split}.pt"):
            log.warning(
                "%s does not match the sha256 in %s: rebuilding the prepared data", out / f"{split}.pt", meta_file
            )
            return False
    return True
