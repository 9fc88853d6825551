"""A synthetic published grid at the paper's sizes, for timing `make paper-report` before the real runs exist.

    python scripts/synthetic_published_grid.py OUT          # then: make paper-report PUBLISHED=OUT

The grid of issue 11: CIFAR-10 and CIFAR-100 x 4 architectures x (cnn, ic_only, sdn), seed 0, plus seeds 1 and 2
of ResNet-56 and MobileNet on CIFAR-10 (36 runs), with 5,000 held-out and 10,000 test images per run and CIFAR-100
stored as top-10 logits, as scripts/gpu-reproduce.sh publishes them. The logits are random (each exit a little more
accurate than the one before); meta.json, metrics.json and history.csv are the toy fixture's
(tests/data/reproduction-toy/), so the numbers in the report mean nothing: only its run time does.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np

from sdn.outputs import compact_outputs
from sdn.reproduce import publish

REPO = Path(__file__).resolve().parents[1]
TOY = REPO / "tests" / "data" / "reproduction-toy" / "reproduction" / "cifar10"
ARCHS = ("resnet56", "mobilenet", "vgg16bn", "wrn32_4")
SPLIT_SIZES = {"holdout": 5000, "test": 10000}
CLASSES = {"cifar10": 10, "cifar100": 100}
TOP_K = {"cifar100": 10}


def grid() -> list[tuple[str, str, int]]:
    runs = [(dataset, arch, 0) for dataset in CLASSES for arch in ARCHS]
    return runs + [("cifar10", arch, seed) for arch in ("resnet56", "mobilenet") for seed in (1, 2)]


def synthetic_outputs(template: dict[str, np.ndarray], num_classes: int) -> dict[str, np.ndarray]:
    arrays = dict(template)
    num_exits = template["test_logits"].shape[0]
    rng = np.random.default_rng(num_exits)
    for split, size in SPLIT_SIZES.items():
        # the same labels in every run of a data set
        labels = np.random.default_rng([num_classes, size]).integers(0, num_classes, size)
        logits = rng.normal(0.0, 1.0, (num_exits, size, num_classes)).astype(np.float32)
        logits[:, np.arange(size), labels] += np.linspace(1.5, 4.0, num_exits)[:, None]
        arrays[f"{split}_logits"], arrays[f"{split}_labels"] = logits, labels
    return arrays


def write_grid(root: Path) -> None:
    for dataset, arch, seed in grid():
        for variant in ("cnn", "ic_only", "sdn"):
            source, run = TOY / "resnet56" / "s0" / variant, root / dataset / arch / f"s{seed}" / variant
            shutil.copytree(source, run)
            with np.load(source / "outputs.npz") as template:
                arrays = synthetic_outputs(dict(template), CLASSES[dataset])
            np.savez_compressed(run / "outputs.npz", **compact_outputs(arrays, top_k=TOP_K.get(dataset)))
            meta = json.loads((run / "meta.json").read_text())
            meta.update(arch=arch, seed=seed, num_classes=CLASSES[dataset])
            (run / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    for dataset in CLASSES:
        shutil.copy(TOY / "grid-cpu.json", root / dataset / "grid-cpu.json")
    publish.write_manifest(root)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="a new folder (must not exist)")
    args = parser.parse_args(argv)
    if args.out.exists():
        parser.error(f"{args.out} exists: give a new folder")
    write_grid(args.out)
    size = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    print(f"{args.out}: {len(grid()) * 3} runs, {size / 1e6:.1f} MB; now: make paper-report PUBLISHED={args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
