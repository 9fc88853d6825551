"""``sdn backdoor poison|analyze``: BadNets-poisoned data, then the backdoored CNN vs its IC-only SDN."""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

NAME = "backdoor"
HELP = "Backdoor experiment: 'poison' writes BadNets-poisoned prepared data, 'analyze' measures the SDN's defence."

DEFAULT_TRIGGER = (5, 26, 26)  # size, x, y for 32x32 images


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from sdn.analysis.early_exit import DEFAULT_TOLERANCE, FALLBACKS, POLICIES

    sub = parser.add_subparsers(dest="backdoor_command", metavar="STEP", required=True)
    formatter = argparse.ArgumentDefaultsHelpFormatter

    poison = sub.add_parser(
        "poison", help="write a poisoned copy of a prepared data folder", formatter_class=formatter
    )
    poison.add_argument("--data", required=True, help="clean prepared data folder (sdn prepare-data)")
    poison.add_argument("--out", required=True, help="folder for the poisoned prepared data")
    poison.add_argument("--target", type=int, default=5, help="class the trigger flips to")
    poison.add_argument("--rate", type=float, default=0.1, help="fraction of the training split poisoned")
    poison.add_argument(
        "--trigger-size", type=int, default=None, help="side in pixels (default 5, scaled from 32x32 images)"
    )
    poison.add_argument("--trigger-x", type=int, default=None, help="left column (default 26, scaled from 32x32)")
    poison.add_argument("--trigger-y", type=int, default=None, help="top row (default 26, scaled from 32x32)")
    poison.add_argument("--trigger-value", type=int, default=255, help="uint8 value of the square on every channel")
    poison.add_argument("--seed", type=int, default=0, help="seed choosing the poisoned samples")
    poison.set_defaults(_backdoor=run_poison)

    analyze = sub.add_parser(
        "analyze", help="clean accuracy, attack success, per-exit and early-exit accuracy", formatter_class=formatter
    )
    analyze.add_argument("--cnn-outputs", required=True, help="outputs.npz of the backdoored CNN (sdn evaluate)")
    analyze.add_argument("--sdn-outputs", required=True, help="outputs.npz of its IC-only SDN (sdn evaluate)")
    analyze.add_argument("--out", required=True, help="folder for summary.json, per_exit.csv, backdoor.{png,pdf}")
    analyze.add_argument("--target", type=int, default=5, help="the backdoor's target class")
    analyze.add_argument("--policy", choices=POLICIES, default="confidence", help="early-exit policy")
    analyze.add_argument("--fallback", choices=FALLBACKS, default="final", help="answer when no IC exits")
    analyze.add_argument(
        "--tolerance",
        type=float,
        default=DEFAULT_TOLERANCE,
        help="threshold rule: clean holdout accuracy >= final head's minus this many points",
    )
    analyze.set_defaults(_backdoor=run_analyze)


def run(args: argparse.Namespace) -> int:
    return int(args._backdoor(args))


def resolve_trigger(input_size: int, size: int | None, x: int | None, y: int | None, value: int) -> Any:
    """The default trigger scaled to ``input_size``; any of size/x/y given explicitly is used as is."""
    from sdn.analysis.backdoor import Trigger

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
    trigger: Any,
    target: int,
    rate: float,
    seed: int,
) -> Path:
    """Write the poisoned prepared-data folder (format of docs/internals.md); meta.json is written last."""
    from sdn.analysis.backdoor import poison, triggered_split
    from sdn.data import load_prepared
    from sdn.io import atomic_path, load_torch, save_torch, write_json

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

    meta = dict(clean.meta)
    meta["sizes"] = {**meta.get("sizes", {}), "test_triggered": len(triggered)}
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
    }
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


def run_poison(args: argparse.Namespace) -> int:
    from sdn.data import load_prepared

    info = load_prepared(args.data).info
    trigger = resolve_trigger(
        int(info.input_size), args.trigger_size, args.trigger_x, args.trigger_y, args.trigger_value
    )
    write_poisoned(args.data, args.out, trigger=trigger, target=args.target, rate=args.rate, seed=args.seed)
    return 0


def load_outputs(path: str | Path) -> dict[str, np.ndarray]:
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"no outputs file {file}; run `sdn evaluate` with splits holdout,test,test_triggered")
    from sdn.analysis.arrays import load_outputs as load_arrays  # widens published float16 logits

    return load_arrays(file)


def write_analysis(result: Any, out_dir: str | Path) -> list[Path]:
    """summary.json, per_exit.csv and backdoor.{png,pdf} of a :class:`BackdoorResult` under ``out_dir``."""
    from sdn.analysis.backdoor import backdoor_figure
    from sdn.io import write_json, write_text
    from sdn.report.plots import savefig

    out = Path(out_dir)
    write_json(out / "summary.json", result.summary())
    write_text(out / "per_exit.csv", pd.DataFrame(result.per_exit_rows()).to_csv(index=False))
    figures = savefig(backdoor_figure(result), out / "backdoor")
    return [out / "summary.json", out / "per_exit.csv", *figures]


def run_analyze(args: argparse.Namespace) -> int:
    from sdn.analysis.backdoor import analyze

    result = analyze(
        load_outputs(args.cnn_outputs),
        load_outputs(args.sdn_outputs),
        target=args.target,
        policy=args.policy,
        tolerance=args.tolerance,
        fallback=args.fallback,
    )
    write_analysis(result, args.out)
    log.info(
        "CNN: clean %.2f%%, triggered %.2f%%, attack success %.2f%%; early exit on triggered: %.2f%% (q=%g)",
        result.cnn_clean_accuracy,
        result.cnn_triggered_accuracy,
        result.cnn_attack_success,
        result.early_exit_triggered.accuracy,
        result.threshold,
    )
    return 0
