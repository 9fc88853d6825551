"""Your own image folder: any image size (scaled and cropped), a test split carved from train/, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from sdn.data.prepare import load_prepared, prepare

SIZES = [(20, 14), (9, 9), (31, 40)]


def _tree(root: Path, classes: tuple[str, ...] = ("ant", "bee"), per_class: int = 10, test: bool = True) -> Path:
    for split in ("train", "test") if test else ("train",):
        for k, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.new("RGB", SIZES[i % len(SIZES)], (40 + 150 * k, 90, 10 * i)).save(folder / f"{i}.png")
    return root


def test_images_of_any_size_are_scaled_and_cropped(tmp_path: Path) -> None:
    root = _tree(tmp_path / "tree")
    data = load_prepared(prepare("imagefolder", data_root=root, out_dir=tmp_path / "o", image_size=16, holdout=4))
    assert data.info.input_size == 16 and data.meta["request"]["image_size"] == 16
    assert data.split("train").images.shape[1:] == (3, 16, 16)
    assert data.meta["sizes"] == {"train": 16, "holdout": 4, "test": 20}
    with pytest.raises(ValueError, match=r"square and all the same size, or set image_size"):
        prepare("imagefolder", data_root=root, out_dir=tmp_path / "o2")


def test_test_split_carved_from_train(tmp_path: Path) -> None:
    root = _tree(tmp_path / "tree", test=False)
    with pytest.raises(FileNotFoundError, match="test_fraction"):
        prepare("imagefolder", data_root=root, out_dir=tmp_path / "o", image_size=8)
    out = prepare("imagefolder", data_root=root, out_dir=tmp_path / "o", image_size=8, test_fraction=0.2, holdout=2)
    assert load_prepared(out).meta["sizes"] == {"train": 14, "holdout": 2, "test": 4}


def test_one_class_folder_is_refused(tmp_path: Path) -> None:
    root = _tree(tmp_path / "tree", classes=("ant",))
    with pytest.raises(ValueError, match=r"train has one class folder \(ant\).*at least two"):
        prepare("imagefolder", data_root=root, out_dir=tmp_path / "o", image_size=8)
    assert not (tmp_path / "o").exists()


def test_unreadable_image_is_named_and_nothing_is_written(tmp_path: Path) -> None:
    root = _tree(tmp_path / "tree")
    bad = root / "test" / "bee" / "broken.jpg"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match=rf"cannot read image {bad}"):
        prepare("imagefolder", data_root=root, out_dir=tmp_path / "o", image_size=8, holdout=2)
    assert not any((tmp_path / "o").glob("*.pt")) and not (tmp_path / "o" / "meta.json").exists()
