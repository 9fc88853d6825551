"""``sdn evaluate``: one pass storing every exit's logits on the held-out and test splits."""

from __future__ import annotations

import argparse
from pathlib import Path

from sdn.device import DEVICE_CHOICES

NAME = "evaluate"
TRACKS_ITSELF = True  # per-epoch metrics and its own artifacts
HELP = "Cache every exit's logits (outputs.npz) and per-exit top-1/top-5 (metrics.json) for a checkpoint."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, type=Path, help="model.pt written by `sdn train`")
    parser.add_argument("--data", required=True, type=Path, help="prepared data folder")
    parser.add_argument("--out", required=True, type=Path, help="outputs.npz to write (metrics.json goes beside it)")
    parser.add_argument("--splits", default="holdout,test", help="comma-separated split names")
    parser.add_argument("--device", default="auto", help=f"one of {', '.join(DEVICE_CHOICES)} or cuda:N")
    parser.add_argument("--allow-cpu-fallback", action="store_true", help="use the CPU with a warning if no GPU")
    parser.add_argument("--batch-size", type=int, default=512, help="evaluation batch size")
    parser.add_argument(
        "--force-data-mismatch",
        action="store_true",
        help="evaluate even if the checkpoint was trained with other held-out/test splits than --data's",
    )


def run(args: argparse.Namespace) -> int:
    from sdn.checkpoint import read_meta
    from sdn.evaluate import evaluate
    from sdn.tracking import metric_key, track

    splits = tuple(s.strip() for s in args.splits.split(",") if s.strip())
    params = {"checkpoint": str(args.checkpoint), "data": str(args.data), "splits": ",".join(splits)}
    with track(NAME, params=params, out_dir=args.out.parent) as tracked:
        metrics = evaluate(
            args.checkpoint,
            args.data,
            args.out,
            splits=splits,
            device=args.device,
            batch_size=args.batch_size,
            allow_cpu_fallback=args.allow_cpu_fallback,
            force_data_mismatch=args.force_data_mismatch,
        )
        for split, values in metrics["splits"].items():
            for kind in ("top1", "top5"):
                num_exits = len(values[kind])
                tracked.log_metrics(
                    {metric_key(split, kind, i, num_exits): v for i, v in enumerate(values[kind]) if v is not None}
                )
        try:
            meta = read_meta(args.checkpoint.parent)
        except (OSError, ValueError):
            meta = {}
        by_hand = {key: meta.get(key) for key in ("dataset", "arch", "seed", "variant")}
        tracked.set_tags({k: v for k, v in by_hand.items() if v is not None and k not in tracked.tags})
        tracked.log_artifact(args.out.parent / "metrics.json")
    print(args.out)
    return 0
