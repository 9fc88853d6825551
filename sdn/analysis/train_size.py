"""What holding images out of training costs: two CNNs of one data set, arch and seed, one trained on the default
training set (part held out for choosing thresholds), one on every training image (``cnn_full``, its held-out split
carved from the test set instead), compared on the test images both were tested on.

The images are matched through the outputs' ``{split}_indices`` (positions in the data set's original split,
written by ``sdn evaluate``). The default run's test split is the whole test set, so an outputs file without
indices (evaluated before they were recorded) is read as holding every test image in order; the labels must agree
at every matched image, or the comparison is refused. Beside the two accuracies: McNemar's exact test on the
images one network gets right and the other wrong, which says whether the two networks differ on these images;
it says nothing of how much another seed would move either (that needs more seeds).
"""

from __future__ import annotations

from collections.abc import Mapping
from math import comb
from typing import Any

import numpy as np

from sdn.outputs import load_split


def split_positions(
    outputs: Mapping[str, np.ndarray], labels: np.ndarray, split: str = "test", *, required: bool = False
) -> np.ndarray:
    """Positions of ``split``'s images (``labels``, from :func:`sdn.outputs.load_split`) in the data set's original
    split: ``{split}_indices``, else (unless ``required``: ValueError) 0..N-1, the whole split in order."""
    indices = outputs.get(f"{split}_indices")
    if indices is None and required:
        raise ValueError(
            f"outputs have no {split}_indices (which images the split holds): re-evaluate the run with this version "
            "of `sdn evaluate`"
        )
    if indices is None:
        return np.arange(len(labels), dtype=np.int64)
    positions = np.asarray(indices, dtype=np.int64)
    if positions.shape != labels.shape:
        raise ValueError(f"{split}_indices has shape {positions.shape}, the labels {labels.shape}")
    return positions


def mcnemar_exact_p(only_first: int, only_second: int) -> float:
    """Two-sided exact McNemar p-value: the chance of a split at least this uneven of the discordant images."""
    n = only_first + only_second
    if n == 0:
        return 1.0
    low = min(only_first, only_second)
    tail = sum(comb(n, k) for k in range(low + 1)) / 2.0**n
    return min(1.0, 2.0 * tail)


def compare(
    default: Mapping[str, np.ndarray],
    full: Mapping[str, np.ndarray],
    *,
    train_images: tuple[int | None, int | None] = (None, None),
    split: str = "test",
) -> dict[str, Any]:
    """Final-exit top-1 (percent) of the ``default`` and ``full`` CNNs on the ``split`` images both hold.

    ``train_images``: how many images each trained on (from their meta.json), recorded as given. ValueError when
    no image is shared or the labels of a shared image differ (the runs are not of one data set).
    """
    runs = {"default": default, "full": full}
    labels, predictions, positions = {}, {}, {}
    for name, arrays in runs.items():
        logits, labels[name] = load_split(arrays, split)
        predictions[name] = logits[-1].argmax(axis=1)  # the final head's
        positions[name] = split_positions(arrays, labels[name], split, required=name == "full")
    common, at_default, at_full = np.intersect1d(
        positions["default"], positions["full"], assume_unique=True, return_indices=True
    )
    if common.size == 0:
        raise ValueError(f"the two runs share no {split} image (their {split}_indices do not overlap)")
    if not np.array_equal(labels["default"][at_default], labels["full"][at_full]):
        wrong = int((labels["default"][at_default] != labels["full"][at_full]).sum())
        raise ValueError(
            f"{wrong} of the {common.size} shared {split} images have different labels in the two runs: they are "
            "not of one data set (or one was evaluated before its outputs recorded the images' positions)"
        )
    hits = {name: predictions[name] == labels[name] for name in runs}  # each on its own whole split
    right = {"default": hits["default"][at_default], "full": hits["full"][at_full]}  # on the shared images
    only_default = int((right["default"] & ~right["full"]).sum())
    only_full = int((right["full"] & ~right["default"]).sum())
    top1 = {name: 100.0 * float(shared.mean()) for name, shared in right.items()}
    own = {name: 100.0 * float(hits[name].mean()) for name in runs}
    return {
        "split": split,
        "images": int(common.size),
        "default": {"train_images": train_images[0], "top1": top1["default"], "top1_own_split": own["default"],
                    "split_images": int(len(labels["default"]))},
        "full": {"train_images": train_images[1], "top1": top1["full"], "top1_own_split": own["full"],
                 "split_images": int(len(labels["full"]))},
        "gain_points": top1["full"] - top1["default"],
        "only_default_right": only_default,
        "only_full_right": only_full,
        "mcnemar_p": mcnemar_exact_p(only_default, only_full),
    }  # fmt: skip
