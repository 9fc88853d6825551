"""``sdn prepare-data``: decode a data set once into uint8 tensor files with a seeded held-out split."""

from __future__ import annotations

import argparse

NAME = "prepare-data"
HELP = "Decode a data set into train/holdout/test uint8 tensor files plus meta.json."


def _holdout(text: str) -> int | float:
    """``500`` is a count, ``0.1`` a fraction of the training images."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--holdout wants a count or a fraction, got {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"--holdout fraction must lie in (0, 1), got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from sdn.data.datasets import KNOWN_DATASETS, NORMALIZATIONS

    parser.add_argument("--dataset", required=True, help=f"one of: {', '.join(KNOWN_DATASETS)}")
    parser.add_argument("--data-root", default="data", help="where raw data is downloaded or found")
    parser.add_argument("--out", required=True, help="output folder (e.g. results/data/<dataset>)")
    parser.add_argument(
        "--holdout", type=_holdout, default=None, help="held-out images: count or fraction (default 5000, or 10%%)"
    )
    parser.add_argument(
        "--holdout-from",
        choices=("train", "test"),
        default="train",
        help="carve the held-out split from the training set, or from the test set (train on all training images)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the held-out split and subsampling")
    parser.add_argument("--max-train", type=int, default=None, help="subsample the training pool (stratified)")
    parser.add_argument("--max-test", type=int, default=None, help="subsample the test set (stratified)")
    parser.add_argument("--normalization", choices=NORMALIZATIONS, default="dataset", help="mean/std to record")
    parser.add_argument("--url", default=None, help="tinyimagenet: download URL of the zip")
    parser.add_argument("--checksum", default=None, help="tinyimagenet: expected digest, sha256:<hex> or md5:<hex>")
    parser.add_argument(
        "--local-path", default=None, help="tinyimagenet: local zip or extracted folder; imagefolder: its root"
    )
    folder = parser.add_argument_group("imagefolder data set")
    folder.add_argument(
        "--image-size", type=int, default=None, help="scale (shorter side) and centre-crop every image to this size"
    )
    folder.add_argument(
        "--test-fraction", type=float, default=None, help="no test/ folder: this fraction of train/ becomes the test"
    )
    synthetic = parser.add_argument_group("synthetic data set")
    synthetic.add_argument("--num-classes", type=int, default=4)
    synthetic.add_argument("--input-size", type=int, default=32)
    synthetic.add_argument("--train-size", type=int, default=400)
    synthetic.add_argument("--test-size", type=int, default=100)


def run(args: argparse.Namespace) -> int:
    from sdn.data.datasets import SyntheticSpec
    from sdn.data.prepare import load_prepared, prepare

    synthetic = None
    if args.dataset == "synthetic":
        synthetic = SyntheticSpec(
            num_classes=args.num_classes,
            input_size=args.input_size,
            train_size=args.train_size,
            test_size=args.test_size,
        )
    out = prepare(
        args.dataset,
        data_root=args.data_root,
        out_dir=args.out,
        holdout=args.holdout,
        holdout_from=args.holdout_from,
        image_size=args.image_size,
        test_fraction=args.test_fraction,
        seed=args.seed,
        max_train=args.max_train,
        max_test=args.max_test,
        normalization=args.normalization,
        url=args.url,
        local_path=args.local_path,
        checksum=args.checksum,
        synthetic=synthetic,
    )
    meta = load_prepared(out).meta
    sizes = meta["sizes"]
    print(
        f"{out}: {meta['dataset']} {meta['num_classes']} classes, {meta['input_size']}px, "
        f"train {sizes['train']} / holdout {sizes['holdout']} / test {sizes['test']}"
    )
    return 0
