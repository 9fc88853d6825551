"""``sdn train``: train one network with one of the paper's recipes (cnn, ic_only, sdn)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from sdn.config import BACKBONE_MODES, RECIPE_KINDS
from sdn.device import DEVICE_CHOICES

NAME = "train"
TRACKS_ITSELF = True  # per-epoch metrics and its own artifacts
HELP = "Train a CNN, the ICs of a trained CNN (ic_only) or a whole SDN; resumes from out/last.pt."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe", required=True, choices=RECIPE_KINDS, help="training recipe")
    parser.add_argument("--arch", required=True, help="architecture name (see `sdn archs`)")
    parser.add_argument("--data", required=True, type=Path, help="prepared data folder (sdn prepare-data)")
    parser.add_argument("--out", required=True, type=Path, help="output folder: model.pt, meta.json, history.csv")
    parser.add_argument("--parent", type=Path, help="trained cnn model.pt (required by --recipe ic_only)")
    parser.add_argument(
        "--weights",
        help="torchvision/timm networks: pretrained weights, a local state-dict file of the original network or a "
        "hub name (DEFAULT, IMAGENET1K_V1, ...); with --recipe ic_only they replace --parent",
    )
    parser.add_argument(
        "--force-data-mismatch",
        action="store_true",
        help="use --parent even if it was trained with other held-out/test splits than --data's",
    )
    parser.add_argument("--epochs", type=int, help="override the epochs (milestones scale proportionally)")
    parser.add_argument("--lr", type=float, help="override the initial learning rate")
    parser.add_argument("--batch-size", type=int, help="override the batch size")
    parser.add_argument("--weight-decay", type=float, help="override the weight decay")
    parser.add_argument(
        "--milestones",
        type=_int_list,
        help="comma-separated 1-based epochs at which the lr drops x0.1 (default: the paper's, scaled to --epochs)",
    )
    parser.add_argument(
        "--clip-grad-norm",
        type=float,
        help="scale each step's gradients down to this global L2 norm (not in the paper: a remedy for a diverging "
        "run, e.g. WRN-32-4 SDN training; recorded in the recipe)",
    )
    parser.add_argument("--seed", type=int, default=1221, help="random seed, as in the paper")
    parser.add_argument("--device", default="auto", help=f"one of {', '.join(DEVICE_CHOICES)} or cuda:N")
    parser.add_argument(
        "--allow-cpu-fallback", action="store_true", help="train on the CPU with a warning if no GPU is available"
    )
    parser.add_argument("--engine", default="fast", choices=("fast", "reference"), help="data/step engine")
    parser.add_argument(
        "--exits", default="paper", help="paper | paper-original | cost:0.15,0.3,... | comma-separated block indices"
    )
    parser.add_argument(
        "--backbone-mode",
        choices=BACKBONE_MODES,
        help="ic_only: keep the frozen backbone in eval mode (default) or train mode (the original's behaviour)",
    )
    parser.add_argument(
        "--ic-input",
        choices=("post-relu", "pre-relu"),
        default="post-relu",
        help="what a ResNet IC reads: the block's output (default) or its sum before the last ReLU (the original's)",
    )
    parser.add_argument(
        "--alpha-mode",
        choices=("bounded", "original"),
        default="bounded",
        help="IC pooling mix: bounded sigmoid weight at 0.5 (default) or unconstrained, random init (the original's)",
    )
    parser.add_argument(
        "--ic-head",
        choices=("paper", "gap"),
        default="paper",
        help="IC head on convolutional maps: the paper's (mixed pooling to about 4x4, then a linear layer; default) "
        "or gap (global average pooling, then a linear layer: not the paper's, fewer ops and kernels at each exit)",
    )
    parser.add_argument(
        "--max-train-samples",
        type=int,
        help="train on a stratified subset of N training images (the same for every seed)",
    )
    parser.add_argument(
        "--channels-last", action=argparse.BooleanOptionalAction, default=None, help="default: on (fast engine)"
    )
    parser.add_argument(
        "--amp",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="bf16 autocast; default: on CUDA, off on the CPU (opt in on a CPU with bf16 instructions, e.g. "
        "AVX512-BF16: ResNet-56 trains 1.5-1.7x faster; docs/cpu-bf16.md)",
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument(
        "--cuda-graph",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="replay the training step as a CUDA graph; default: on with the fast engine on CUDA",
    )


def parse_exits(text: str) -> str | list[int]:
    """``"2,5,9"`` -> [2, 5, 9]; any other text is passed on as a named placement."""
    parts = [p.strip() for p in text.split(",")]
    if all(p.isdigit() for p in parts):
        return [int(p) for p in parts]
    return text


def recipe_overrides(args: argparse.Namespace) -> dict[str, Any]:
    names = {"epochs": "epochs", "lr": "lr", "batch_size": "batch_size", "weight_decay": "weight_decay"}
    overrides = {key: getattr(args, attr) for attr, key in names.items() if getattr(args, attr) is not None}
    if args.backbone_mode is not None:
        overrides["backbone_mode"] = args.backbone_mode
    if args.milestones is not None:
        overrides["milestones"] = tuple(args.milestones)
    if args.clip_grad_norm is not None:
        overrides["clip_grad_norm"] = args.clip_grad_norm
    return overrides


def _int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def run(args: argparse.Namespace) -> int:
    from sdn.checkpoint import read_meta
    from sdn.config import paper_recipe
    from sdn.tracking import track
    from sdn.train import train

    recipe = paper_recipe(args.recipe, args.arch).with_overrides(recipe_overrides(args))
    exits = parse_exits(args.exits)
    params = {
        "arch": args.arch,
        "data": str(args.data),
        "seed": args.seed,
        "device": args.device,
        "engine": args.engine,
        "exits": args.exits,
        "ic_input": args.ic_input,
        "alpha_mode": args.alpha_mode,
        "ic_head": args.ic_head,
        "parent": str(args.parent) if args.parent else None,
        "weights": args.weights,
        "max_train_samples": args.max_train_samples,
        **{f"recipe.{k}": v for k, v in recipe.to_dict().items()},
    }
    with track(NAME, params=params, out_dir=args.out) as tracked:
        model_path = train(
            arch=args.arch,
            recipe=recipe,
            data_dir=args.data,
            out_dir=args.out,
            seed=args.seed,
            device=args.device,
            allow_cpu_fallback=args.allow_cpu_fallback,
            parent=args.parent,
            exits=exits,
            engine=args.engine,
            max_train_samples=args.max_train_samples,
            channels_last=args.channels_last,
            amp=args.amp,
            compile_model=args.compile,
            cuda_graph=args.cuda_graph,
            ic_input=args.ic_input,
            alpha_mode=args.alpha_mode,
            ic_head=args.ic_head,
            force_data_mismatch=args.force_data_mismatch,
            weights=args.weights,
            on_epoch=lambda epoch, metrics: tracked.log_metrics(epoch_metrics(metrics), step=epoch),
        )
        meta = read_meta(model_path.parent)
        # the workflow's wildcards (already tags) win; a run by hand is named from what it trained
        by_hand = {"dataset": meta["dataset"], "arch": args.arch, "seed": args.seed, "variant": recipe.kind}
        tracked.set_tags({k: v for k, v in by_hand.items() if k not in tracked.tags})
        tracked.set_tags({"recipe": recipe.kind})
        for name in ("meta.json", "history.csv"):
            tracked.log_artifact(model_path.parent / name)
    print(model_path)
    return 0


def epoch_metrics(row: dict[str, Any]) -> dict[str, float]:
    """One history row as MLflow metrics: ``train/loss``, ``train/lr``, ... and ``holdout/top1/ic1`` .. ``final``.

    The last exit with an accuracy is the final head (a CNN's only one), so it is ``final`` in every run kind.
    """
    from sdn.tracking import metric_key

    exits = {int(k.removeprefix(HISTORY_EXIT)): v for k, v in row.items() if k.startswith(HISTORY_EXIT)}
    num_exits = max(exits, default=-1) + 1
    metrics = {f"train/{k}": float(v) for k, v in row.items() if k != "epoch" and not k.startswith(HISTORY_EXIT)}
    metrics.update({metric_key("holdout", "top1", i, num_exits): float(v) for i, v in exits.items()})
    return {k: v for k, v in metrics.items() if isinstance(v, float)}


HISTORY_EXIT = "holdout_top1_exit"  # history.csv's per-exit column prefix (sdn.train)
