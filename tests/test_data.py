"""Data sets, preparation, held-out split and the device loader (small and CPU-only)."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from sdn.data import DatasetInfo, DeviceLoader, SyntheticSpec, TensorSplit, dataset_shape, load_prepared, prepare
from sdn.data.datasets import compute_stats
from sdn.data.loader import color_jitter, crop_flip
from sdn.data.splits import holdout_size, holdout_split, stratified_choice, subsample

SMALL = SyntheticSpec(num_classes=3, input_size=16, train_size=90, test_size=30)


def _info(*, padding: int = 4, jitter: float = 0.0, size: int = 8, classes: int = 10) -> DatasetInfo:
    return DatasetInfo("t", classes, size, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), padding, jitter, ())


def _loader(split: TensorSplit, info: DatasetInfo, **kw: object) -> DeviceLoader:
    args: dict[str, object] = {"batch_size": 7, "shuffle": True, "augment": False, "device": "cpu", "seed": 0}
    args.update(kw)
    return DeviceLoader(split, info, **args)  # type: ignore[arg-type]


# --- preparation --------------------------------------------------------------------------------------------


def test_digits_prepare_shapes_meta_and_reuse(tmp_path: Path) -> None:
    out = prepare("digits", data_root=tmp_path / "raw", out_dir=tmp_path / "digits")
    data = load_prepared(out)
    meta = data.meta
    assert meta["sizes"] == {"train": 1293, "holdout": 144, "test": 360}  # 20% test, then 10% of 1437 held out
    assert (meta["num_classes"], meta["input_size"], meta["crop_padding"], meta["color_jitter"]) == (10, 32, 4, 0.0)
    assert meta["classes"] == [str(d) for d in range(10)]
    train = data.split("train")
    assert train.images.dtype == torch.uint8 and train.images.shape == (1293, 3, 32, 32)
    assert train.labels.dtype == torch.int64 and set(train.labels.tolist()) == set(range(10))
    assert torch.equal(train.images[:, 0], train.images[:, 2])  # grey repeated to RGB
    mean, std = compute_stats(train.images)
    assert meta["mean"] == pytest.approx(mean) and meta["std"] == pytest.approx(std)
    assert 0.1 < meta["mean"][0] < 0.5
    assert data.info.num_classes == 10 and data.info.mean == tuple(meta["mean"])
    stamp = (out / "train.pt").stat().st_mtime_ns
    assert prepare("digits", data_root=tmp_path / "raw", out_dir=out) == out
    assert (out / "train.pt").stat().st_mtime_ns == stamp  # same request: not redone
    prepare("digits", data_root=tmp_path / "raw", out_dir=out, holdout=100)
    assert load_prepared(out).meta["sizes"]["holdout"] == 100  # different request: redone


def test_digits_test_split_is_independent_of_run_seed(tmp_path: Path) -> None:
    a = load_prepared(prepare("digits", data_root=tmp_path, out_dir=tmp_path / "a", seed=0)).split("test")
    b = load_prepared(prepare("digits", data_root=tmp_path, out_dir=tmp_path / "b", seed=5)).split("test")
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)


def test_synthetic_holdout_disjoint_and_seeded(tmp_path: Path) -> None:
    def indices(seed: int, name: str) -> tuple[list[int], list[int]]:
        out = prepare("synthetic", data_root=tmp_path, out_dir=tmp_path / name, seed=seed, synthetic=SMALL)
        train = torch.load(out / "train.pt", weights_only=True)["indices"].tolist()
        hold = torch.load(out / "holdout.pt", weights_only=True)["indices"].tolist()
        return train, hold

    train, hold = indices(0, "s0")
    assert len(hold) == 9 and len(train) == 81
    assert not set(train) & set(hold) and sorted(train + hold) == list(range(90))
    assert indices(0, "s0b") == (train, hold)
    assert indices(1, "s1")[1] != hold
    meta = load_prepared(tmp_path / "s0").meta
    assert meta["num_classes"] == 3 and meta["input_size"] == 16 and meta["crop_padding"] == 2
    held = load_prepared(tmp_path / "s0").split("holdout")
    assert torch.bincount(held.labels, minlength=3).tolist() == [3, 3, 3]  # stratified


def test_holdout_from_test_trains_on_every_training_image(tmp_path: Path) -> None:
    out = prepare(
        "synthetic", data_root=tmp_path, out_dir=tmp_path / "o", synthetic=SMALL, holdout=0.5, holdout_from="test"
    )
    data = load_prepared(out)
    train = torch.load(out / "train.pt", weights_only=True)["indices"].tolist()
    hold = torch.load(out / "holdout.pt", weights_only=True)["indices"].tolist()
    test = torch.load(out / "test.pt", weights_only=True)["indices"].tolist()
    assert sorted(train) == list(range(SMALL.train_size))  # every training image
    assert not set(hold) & set(test) and sorted(hold + test) == list(range(SMALL.test_size))  # disjoint halves
    assert data.meta["holdout_from"] == "test" and "original test split" in data.meta["holdout_indices"]
    assert data.meta["sizes"] == {"train": len(train), "holdout": len(hold), "test": len(test)}
    with pytest.raises(ValueError, match="holdout_from must be 'train' or 'test'"):
        prepare("synthetic", data_root=tmp_path, out_dir=tmp_path / "bad", synthetic=SMALL, holdout_from="val")


def test_prepare_max_train_max_test_and_normalization(tmp_path: Path) -> None:
    spec = SyntheticSpec(num_classes=4, input_size=8, train_size=200, test_size=80)
    out = prepare(
        "synthetic",
        data_root=tmp_path,
        out_dir=tmp_path / "o",
        synthetic=spec,
        max_train=40,
        max_test=20,
        holdout=8,
        normalization="imagenet",
    )
    meta = load_prepared(out).meta
    assert meta["sizes"] == {"train": 32, "holdout": 8, "test": 20}
    assert meta["mean"] == [0.485, 0.456, 0.406] and meta["std"] == [0.229, 0.224, 0.225]
    test = load_prepared(out).split("test")
    assert torch.bincount(test.labels, minlength=4).tolist() == [5, 5, 5, 5]


def test_synthetic_is_learnable_by_nearest_class_mean(tmp_path: Path) -> None:
    data = load_prepared(prepare("synthetic", data_root=tmp_path, out_dir=tmp_path / "o", synthetic=SMALL))
    train, test = data.split("train"), data.split("test")
    x = train.images.flatten(1).float()
    centres = torch.stack([x[train.labels == k].mean(0) for k in range(3)])
    predicted = torch.cdist(test.images.flatten(1).float(), centres).argmin(1)
    assert (predicted == test.labels).float().mean() > 0.9


def test_cifar_stats_and_shapes() -> None:
    assert dataset_shape("cifar10") == (10, 32) and dataset_shape("tinyimagenet") == (200, 64)
    assert dataset_shape("cifar100") == (100, 32) and dataset_shape("digits") == (10, 32)
    with pytest.raises(ValueError, match="no fixed shape"):
        dataset_shape("imagefolder")


def test_unknown_dataset_lists_known(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="known: cifar10, cifar100, tinyimagenet, imagefolder, digits, synthetic"):
        prepare("mnist", data_root=tmp_path, out_dir=tmp_path / "o")
    with pytest.raises(ValueError, match="normalization"):
        prepare("digits", data_root=tmp_path, out_dir=tmp_path / "o", normalization="foo")


def test_offline_cifar10_explains_local_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from torchvision import datasets

    monkeypatch.setattr(datasets.CIFAR10, "url", "http://127.0.0.1:9/cifar-10-python.tar.gz")
    with pytest.raises(FileNotFoundError) as err:
        prepare("cifar10", data_root=tmp_path / "raw", out_dir=tmp_path / "o")
    message = str(err.value)
    assert str(tmp_path / "raw") in message and "cifar-10-python.tar.gz" in message and "imagefolder" in message
    assert not (tmp_path / "o").exists()


def test_load_prepared_missing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="meta.json"):
        load_prepared(tmp_path)


# --- imagefolder --------------------------------------------------------------------------------------------

COLOURS = {"cat": (200, 30, 30), "dog": (30, 200, 30), "emu": (30, 30, 200)}


def _write_tree(root: Path, per_class: dict[str, int]) -> None:
    from PIL import Image

    for split, count in per_class.items():
        for name, colour in COLOURS.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (12, 12), colour).save(folder / f"{i}.png")


def test_imagefolder_tiny_tree(tmp_path: Path) -> None:
    _write_tree(tmp_path / "tree", {"train": 10, "test": 2})
    data = load_prepared(prepare("imagefolder", data_root=tmp_path / "tree", out_dir=tmp_path / "o"))
    assert data.meta["classes"] == ["cat", "dog", "emu"] and data.meta["input_size"] == 12
    assert data.meta["sizes"] == {"train": 27, "holdout": 3, "test": 6}
    assert data.meta["crop_padding"] == 1
    for split in ("train", "holdout", "test"):
        s = data.split(split)
        expected = torch.tensor([COLOURS[data.meta["classes"][k]] for k in s.labels.tolist()], dtype=torch.uint8)
        assert torch.equal(s.images[:, :, 5, 5], expected)


def test_imagefolder_errors_name_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        prepare("imagefolder", data_root=missing, out_dir=tmp_path / "o")
    _write_tree(tmp_path / "tree", {"train": 1})
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "tree" / "test")):
        prepare("imagefolder", data_root=tmp_path / "tree", out_dir=tmp_path / "o")
    assert not (tmp_path / "o").exists()


@pytest.mark.realdata
def test_real_cifar10_jpeg_imagefolder(tmp_path: Path) -> None:
    archive = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.tar.gz"
    if not archive.is_file():
        archive = Path("/work/shared/data/cifar10-jpeg.tar.gz")
    if not archive.is_file():
        pytest.skip("cifar10-jpeg.tar.gz not found under ../shared/data")

    def first_files(members: list[tarfile.TarInfo]) -> list[tarfile.TarInfo]:
        # only the first images of each class, enough for max_train 500 / max_test 200
        keep = []
        for m in members:
            parts = m.name.split("/")
            if m.isdir() or (len(parts) == 4 and int(parts[3].split(".")[0]) < (100 if parts[1] == "train" else 40)):
                keep.append(m)
        return keep

    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path, members=first_files(tar.getmembers()), filter="data")
    out = prepare(
        "imagefolder", data_root=tmp_path / "cifar10-jpeg", out_dir=tmp_path / "o", max_train=500, max_test=200
    )
    data = load_prepared(out)
    assert data.meta["num_classes"] == 10 and data.meta["classes"][0] == "airplane"
    assert data.meta["sizes"] == {"train": 450, "holdout": 50, "test": 200}
    assert data.split("train").images.shape == (450, 3, 32, 32)


# --- splits -------------------------------------------------------------------------------------------------


def test_holdout_sizes() -> None:
    assert holdout_size(50000, None) == 5000 and holdout_size(100000, None) == 5000
    assert holdout_size(1437, None) == 144 and holdout_size(1000, 0.25) == 250 and holdout_size(1000, 30) == 30
    with pytest.raises(ValueError, match="leaves no training data"):
        holdout_size(10, 10)
    with pytest.raises(ValueError, match="fraction"):
        holdout_size(10, 1.5)


def test_stratified_choice_proportions() -> None:
    labels = torch.tensor([0] * 60 + [1] * 30 + [2] * 10)
    chosen = stratified_choice(labels, 20, np.random.default_rng(0))
    assert np.bincount(labels[chosen].numpy()).tolist() == [12, 6, 2]
    assert len(set(chosen.tolist())) == 20
    assert subsample(labels, None, 0, 1).tolist() == list(range(100))
    train, held = holdout_split(labels, 10, seed=3)
    assert len(train) == 90 and not set(train.tolist()) & set(held.tolist())


# --- loader -------------------------------------------------------------------------------------------------


def _label_images(n: int, size: int = 8) -> TensorSplit:
    labels = torch.arange(n) % 10
    images = ((labels + 1) * 20).to(torch.uint8).view(n, 1, 1, 1).expand(n, 3, size, size).contiguous()
    return TensorSplit(images, labels)


def test_augment_keeps_labels_aligned_and_varies() -> None:
    split = _label_images(50)
    loader = _loader(split, _info(padding=1), augment=True)  # 1 in 9 crops is the unshifted window
    saw_padding = saw_full = False
    for _ in range(3):
        for x, y in loader:
            expected = ((y + 1) * 20).float() / 255.0
            values = x.flatten(1)
            ok = (values == 0) | torch.isclose(values, expected[:, None])
            assert bool(ok.all())
            zeros = (values == 0).sum(1)
            saw_padding |= bool((zeros > 0).any())
            saw_full |= bool((zeros == 0).any())
    assert saw_padding and saw_full


def test_crops_and_flips_vary_and_are_exact() -> None:
    gradient = torch.arange(8, dtype=torch.uint8).repeat(8, 1) * 10 + 10  # columns 10..80
    images = gradient.expand(40, 3, 8, 8).contiguous()
    split = TensorSplit(images, torch.zeros(40, dtype=torch.int64))
    loader = _loader(split, _info(padding=2), augment=True, shuffle=False, batch_size=40)
    x1 = next(iter(loader))[0]
    x2 = next(iter(loader))[0]
    assert not torch.equal(x1, x2)  # a new epoch draws new crops/flips
    rows = (x1[:, 0, 4] * 255).round()
    flipped = (rows[:, 2] > rows[:, 5]).sum()
    assert 0 < flipped < 40
    # exact semantics of one crop: offset (2, 0) = shift right by 2 columns, no flip; (2, 4) flipped
    one = images[:2]
    out = crop_flip(one, 2, torch.tensor([[2, 0], [2, 4]]), torch.tensor([False, True]))
    assert out[0, 0, 0].tolist() == [0, 0, 10, 20, 30, 40, 50, 60]
    assert out[1, 0, 0].tolist() == [0, 0, 80, 70, 60, 50, 40, 30]


def test_loader_covers_each_sample_once_per_epoch() -> None:
    n = 53
    split = TensorSplit(torch.zeros(n, 3, 4, 4, dtype=torch.uint8), torch.arange(n))
    loader = _loader(split, _info(padding=1, size=4))
    assert len(loader) == 8
    epochs = [torch.cat([y for _, y in loader]) for _ in range(2)]
    for seen in epochs:
        assert sorted(seen.tolist()) == list(range(n))
    assert epochs[0].tolist() != list(range(n)) and epochs[0].tolist() != epochs[1].tolist()
    assert len(_loader(split, _info(padding=1, size=4), drop_last=True)) == 7
    assert sum(len(y) for _, y in _loader(split, _info(padding=1, size=4), drop_last=True)) == 49


def test_loader_deterministic_per_seed() -> None:
    split = _label_images(30)

    def run(seed: int) -> list[torch.Tensor]:
        loader = _loader(split, _info(padding=4, jitter=0.2), augment=True, seed=seed)
        return [x for x, _ in loader] + [y.float() for _, y in loader]

    a, b, c = run(1), run(1), run(2)
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    assert not all(torch.equal(u, v) for u, v in zip(a, c, strict=True))
    loader = _loader(split, _info(), seed=1, augment=True)
    first = [x for x, _ in loader]
    loader.set_epoch(0)
    assert all(torch.equal(u, v) for u, v in zip(first, [x for x, _ in loader], strict=True))


def test_no_augment_normalises_exactly() -> None:
    split = _label_images(12)
    info = DatasetInfo("t", 10, 8, (0.5, 0.25, 0.0), (0.5, 0.25, 2.0), 4, 0.0, ())
    x, y = next(iter(_loader(split, info, shuffle=False, batch_size=12)))
    raw = split.images.float() / 255
    assert torch.allclose(x[:, 0], (raw[:, 0] - 0.5) / 0.5) and torch.allclose(x[:, 2], raw[:, 2] / 2.0)
    assert torch.equal(y, split.labels)


def test_color_jitter_factors() -> None:
    images = torch.rand(4, 3, 5, 5)
    assert torch.allclose(color_jitter(images, torch.ones(4, 3)), images, atol=1e-6)
    darker = color_jitter(images, torch.tensor([[0.5, 1.0, 1.0]] * 4))
    assert torch.allclose(darker, images * 0.5, atol=1e-6)
    grey = color_jitter(images, torch.tensor([[1.0, 1.0, 0.0]] * 4))
    assert torch.allclose(grey[:, 0], grey[:, 1]) and torch.allclose(grey[:, 1], grey[:, 2])
    split = _label_images(10)
    plain = next(iter(_loader(split, _info(padding=0), augment=True, shuffle=False, batch_size=10)))[0]
    jittered = next(iter(_loader(split, _info(padding=0, jitter=0.2), augment=True, shuffle=False, batch_size=10)))[0]
    assert not torch.allclose(plain, jittered) and float(jittered.min()) >= 0.0


def test_channels_last_and_dtype() -> None:
    loader = _loader(_label_images(9), _info(), channels_last=True, dtype=torch.bfloat16)
    x, _ = next(iter(loader))
    assert x.dtype == torch.bfloat16 and x.is_contiguous(memory_format=torch.channels_last)


def test_cli_prepare_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from sdn.cli import main

    out = tmp_path / "syn"
    args = ["prepare-data", "--dataset", "synthetic", "--data-root", str(tmp_path), "--out", str(out)]
    assert main([*args, "--num-classes", "3", "--train-size", "60", "--test-size", "12", "--holdout", "0.2"]) == 0
    assert load_prepared(out).meta["sizes"] == {"train": 48, "holdout": 12, "test": 12}
    assert "train 48 / holdout 12 / test 12" in capsys.readouterr().out
    assert main(["prepare-data", "--dataset", "nope", "--data-root", str(tmp_path), "--out", str(out)]) == 2
    assert "known: cifar10" in capsys.readouterr().err
