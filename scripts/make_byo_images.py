"""Write a tiny image folder for config/byo-example.yaml: three classes of coloured shapes, images of mixed sizes.

Usage: python scripts/make_byo_images.py [OUT] [PER_CLASS]   (default: data/byo-example, 40 train / 12 test)
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("circle", "square", "triangle")
SIZES = ((48, 40), (36, 36), (64, 52), (40, 56))


def draw(kind: str, size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    background = tuple(int(v) for v in rng.integers(0, 90, 3))
    image = Image.new("RGB", size, background)
    pen = ImageDraw.Draw(image)
    w, h = size
    r = int(min(w, h) * rng.uniform(0.25, 0.4))
    cx, cy = int(w / 2 + rng.integers(-3, 4)), int(h / 2 + rng.integers(-3, 4))
    colour = tuple(int(v) for v in rng.integers(140, 256, 3))
    if kind == "circle":
        pen.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
    elif kind == "square":
        pen.rectangle((cx - r, cy - r, cx + r, cy + r), fill=colour)
    else:
        pen.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    return image


def write(out: Path, per_class: int = 40, test_per_class: int = 12, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for split, count in (("train", per_class), ("test", test_per_class)):
        for kind in CLASSES:
            folder = out / split / kind
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                draw(kind, SIZES[i % len(SIZES)], rng).save(folder / f"{i:04d}.png")
    return out


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("data/byo-example")
    print(write(target, int(sys.argv[2]) if len(sys.argv) > 2 else 40))
