"""``sdn bench``: images/s of training and evaluation under the reference and the fast engine."""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any

NAME = "bench"
HELP = (
    "Benchmark training/evaluation throughput of the reference engine (PIL DataLoader, eager fp32, full per-epoch "
    "evaluation) against the fast engine (device-resident data, channels_last, bf16, CUDA graph), and online early "
    "exit of a trained SDN. Writes JSON and prints a table."
)
log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--archs", default="resnet56,mobilenet,vgg16bn,wrn32_4", help="comma-separated architectures")
    parser.add_argument("--recipes", default="sdn,ic_only,cnn", help="comma-separated recipes to time")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per window")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps before timing")
    parser.add_argument("--windows", type=int, default=3, help="timed windows; the median is reported")
    parser.add_argument("--workers", type=int, default=4, help="DataLoader workers of the reference engine")
    parser.add_argument("--input-size", type=int, default=32, choices=(32, 64))
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument(
        "--amp",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="bf16 autocast in the fast engine (default: on CUDA, off on the CPU, as sdn train)",
    )
    parser.add_argument(
        "--concurrent-jobs",
        type=int,
        default=1,
        help="also time this many SDN-training processes sharing the device (the workflow's --resources gpu=N "
        "with more slots than GPUs); 1: skip",
    )
    parser.add_argument("--concurrent-seconds", type=float, default=10.0, help="timed window of the shared run")
    parser.add_argument(
        "--concurrent-archs",
        help="comma-separated architectures to time sharing the device (default: all of --archs)",
    )
    parser.add_argument("--early-exit-checkpoint", help="a trained SDN model.pt: time online early exit")
    parser.add_argument("--early-exit-data", help="prepared data folder of that checkpoint")
    parser.add_argument(
        "--early-exit-batches",
        help="comma-separated batch sizes of the early-exit timing (default: 1,64 on a CPU, 1,256 on a GPU)",
    )
    parser.add_argument("--early-exit-repeats", type=int, default=5, help="timed passes; medians are reported")
    parser.add_argument(
        "--early-exit-threshold",
        type=float,
        help="confidence threshold to time (default: the one the tolerance rule chooses on the held-out split)",
    )
    parser.add_argument("--no-onnx", action="store_true", help="skip the ONNX Runtime early-exit timing (CPU only)")
    parser.add_argument(
        "--threads",
        type=int,
        help="CPU threads of torch and ONNX Runtime (default: torch's). On a busy machine 1 thread avoids "
        "paying a scheduler wait at every parallel op",
    )
    parser.add_argument("--json-out", help="write the results here (JSON)")


def run(args: argparse.Namespace) -> int:
    import torch

    from sdn import bench, io
    from sdn.device import resolve_device

    device = resolve_device(args.device)
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    elif device.type == "cpu":
        torch.set_num_threads(max(torch.get_num_threads(), 1))
    settings = bench.BenchSettings(
        device=device,
        batch_size=args.batch_size,
        steps=args.steps,
        warmup=args.warmup,
        windows=args.windows,
        workers=args.workers,
        input_size=args.input_size,
        num_classes=args.num_classes,
        amp=args.amp,
    )
    kinds = tuple(k for k in args.recipes.split(",") if k)
    unknown = sorted(set(kinds) - set(bench.PAPER_EPOCHS))
    if unknown:
        raise ValueError(f"unknown recipe(s) {unknown} in --recipes; choose from {sorted(bench.PAPER_EPOCHS)}")
    if args.concurrent_jobs < 1:
        raise ValueError(f"--concurrent-jobs must be at least 1, got {args.concurrent_jobs}")
    if args.early_exit_checkpoint and not args.early_exit_data:
        raise ValueError("--early-exit-checkpoint needs --early-exit-data (its prepared data folder)")
    if args.early_exit_threshold is not None and not 0.0 <= args.early_exit_threshold <= 1.0:
        raise ValueError(f"--early-exit-threshold must be a confidence in [0, 1], got {args.early_exit_threshold}")
    archs = [a for a in args.archs.split(",") if a]
    shared = archs if args.concurrent_archs is None else [a for a in args.concurrent_archs.split(",") if a]
    if set(shared) - set(archs):
        raise ValueError(f"--concurrent-archs {sorted(set(shared) - set(archs))} are not among --archs {archs}")
    document: dict = {
        "environment": bench.environment(device),
        "settings": {k: str(v) for k, v in vars(settings).items()},
        "archs": [],
        "projection": None,
    }
    for arch in archs:
        concurrent_jobs = args.concurrent_jobs if arch in shared else 1
        document["archs"].append(
            bench.bench_arch(
                arch, settings, kinds, concurrent_jobs=concurrent_jobs, concurrent_seconds=args.concurrent_seconds
            )
        )
        if "sdn" in kinds:
            document["projection"] = bench.project_paper_grid(document["archs"])
        if args.json_out:  # after every architecture: a run cut short keeps what it measured
            io.write_json(args.json_out, document)
    if args.early_exit_checkpoint:
        batches = None
        if args.early_exit_batches:
            batches = tuple(int(b) for b in args.early_exit_batches.split(",") if b)
            if not batches or min(batches) < 1:
                raise ValueError(f"--early-exit-batches must list batch sizes >= 1, got {args.early_exit_batches!r}")
        document["early_exit"] = bench.early_exit_timing(
            args.early_exit_checkpoint,
            args.early_exit_data,
            device,
            batch_sizes=batches,
            repeats=args.early_exit_repeats,
            onnx=not args.no_onnx,
            threshold=args.early_exit_threshold,
        )
    print(_table(document))
    if args.json_out:
        io.write_json(args.json_out, document)
    else:
        print(json.dumps(document, indent=2, default=str))
    return 0


def _table(document: dict) -> str:
    from sdn import bench_latency

    lines = [f"device: {document['environment'].get('gpu', document['environment']['device'])}"]
    lines.append(
        f"{'arch':10s} {'recipe':8s} {'ref img/s':>10s} {'fast img/s':>11s} {'x':>6s} "
        f"{'epoch ref s':>11s} {'epoch fast s':>12s} {'x':>6s} {'TFLOP/s':>8s} graph"
    )
    for arch in document["archs"]:
        for kind, r in arch["recipes"].items():
            lines.append(
                f"{arch['arch']:10s} {kind:8s} {r['reference_train_images_per_s']:10.0f} "
                f"{r['fast_train_images_per_s']:11.0f} {r['train_speedup']:6.2f} {r['reference_epoch_s']:11.1f} "
                f"{r['fast_epoch_s']:12.1f} {r['epoch_speedup']:6.2f} {r['fast_tflops']:8.2f} {r['cuda_graph']}"
            )
    for arch in document["archs"]:
        shared = arch.get("concurrency")
        if shared and "error" in shared:
            lines.append(
                f"{arch['arch']:10s} sdn, {shared['jobs']} jobs sharing the device: failed ({shared['error']})"
            )
        elif shared:
            lines.append(
                f"{arch['arch']:10s} sdn, {shared['jobs']} jobs sharing the device: "
                f"{shared['aggregate_images_per_s']:.0f} img/s in all, x{shared['gain']:.2f} of one job"
            )
    projection = document.get("projection")
    if projection:
        lines.append(
            "paper grid (CNN+IC-only+SDN at 100/25/100 epochs, these archs): fast "
            f"{projection['serial_fast_minutes']:.1f} min serial, "
            f"{projection['projected_fast_minutes']:.1f} min with {projection['concurrency_jobs']} jobs sharing; "
            f"reference {projection['serial_reference_minutes']:.1f} min serial"
        )
    ee = document.get("early_exit")
    if ee:
        if ee["threshold_status"] != "ok":
            lines.append(f"early exit: {ee['threshold_reason']}")
        lines.append(
            f"early exit of {ee['arch']} at threshold {ee['threshold']}: online vs offline mismatches "
            f"{ee['online_prediction_mismatches']} predictions, {ee['online_exit_mismatches']} exits of "
            f"{ee['num_test']} (deploy copy: {ee['deploy_prediction_mismatches']} predictions, "
            f"{ee['deploy_exit_mismatches']} exits{_onnx_mismatches(ee)}); predicted saving (ops) "
            f"{ee['predicted_saving']:.1%}"
        )
        lines.append(bench_latency.table(ee["latency"]))
        for key in ("graphed_batch1", "graphed_batch1_device_read"):
            graphed = ee.get(key)
            if graphed:
                read = "copied to pinned memory" if graphed["host_copy"] else "read from the device"
                lines.append(
                    f"graphed early exit batch 1 (decisions {read}): "
                    f"predicted saving {graphed['predicted_saving_these_images']:.1%}, "
                    f"measured {graphed['measured_saving']:.1%} (ratio {graphed['saving_ratio']:.2f}); "
                    f"CNN {graphed['cnn_median_latency_ms']:.3f} ms, "
                    f"early exit {graphed['early_exit_median_latency_ms']:.3f} ms, "
                    f"{graphed['exit_mismatches_vs_offline']} exit mismatches vs offline"
                )
    return "\n".join(lines)


def _onnx_mismatches(ee: dict[str, Any]) -> str:
    """The ONNX engines' prediction/exit mismatches: "; ONNX segments: a/b, ONNX one graph: c/d, ..." or ""."""
    names = (("onnx", "ONNX segments"), ("onnx_graph", "ONNX one graph"), ("onnx_int8", "ONNX one graph, int8 ICs"))
    parts = []
    for key, name in names:
        if f"{key}_exit_mismatches" in ee:
            part = f"{name}: {ee[f'{key}_prediction_mismatches']}/{ee[f'{key}_exit_mismatches']}"
            if key == "onnx_int8" and f"{key}_test_accuracy" in ee:  # an approximation: its accuracy too
                part += f" (test top-1 {ee[f'{key}_test_accuracy']:.2f}%, float {ee['test_accuracy']:.2f}%)"
            parts.append(part)
    return "; " + ", ".join(parts) if parts else ""
