"""How accurate each IC head is on the same CNN: IC-only training of ``--ic-head paper`` and ``gap``, side by side.

    python docs/deploy-latency/ic_head_accuracy.py --arch mobilenet --data DATA --cnn CNN/model.pt \\
        --work .reproduce/ic-head --paper-run reproduction/cifar100/mobilenet/s0/ic_only \\
        --out docs/deploy-latency/ic-head-accuracy-cifar100-mobilenet.json [--train-args=--amp]

For each head to measure (``gap``, and ``paper`` too unless ``--paper-run`` names a run that already trained it on
this CNN, such as the published IC-only run): ``sdn train --recipe ic_only --parent CNN --ic-head HEAD`` into
WORK/HEAD (a call stopped half-way resumes from its ``last.pt``), then ``sdn evaluate``; a head whose
``outputs.npz`` exists is not trained again. Each head's outputs then go through the confidence early-exit analysis
(thresholds chosen on the held-out split, reported on the test split) and the JSON at ``--out`` gets, per head,
the per-exit top-1 on both splits, the exits' cost fractions and the parameters up to each exit (``meta.json``),
the chosen thresholds: what `docs/deploy-latency.md` ("A cheaper IC head") compares. ``--cnn`` may also be an
IC-only or SDN checkpoint: only its backbone is read.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

HEADS = ("paper", "gap")


def sdn(*args: str) -> None:
    """Run one ``sdn`` command in this interpreter's environment; stop on its failure."""
    command = [sys.executable, "-m", "sdn", *args]
    print("+", shlex.join(command), flush=True)
    subprocess.run(command, check=True)


def train_and_evaluate(head: str, args: argparse.Namespace) -> Path:
    """WORK/HEAD/outputs.npz, training and evaluating the head first where it is not there yet."""
    out = args.work / head
    outputs = out / "outputs.npz"
    if outputs.is_file():
        return out
    if not (out / "model.pt").is_file():
        sdn(
            "train", "--recipe", "ic_only", "--arch", args.arch, "--data", str(args.data), "--seed", str(args.seed),
            "--device", args.device, "--parent", str(args.cnn), "--ic-head", head, "--out", str(out),
            *shlex.split(args.train_args),
        )  # fmt: skip
    sdn("evaluate", "--checkpoint", str(out / "model.pt"), "--data", str(args.data), "--out", str(outputs),
        "--device", args.device)  # fmt: skip
    return out


def summarise(run: Path) -> dict[str, Any]:
    """Per-exit top-1, exit costs and parameters, and the confidence early exit of one IC-only run's folder."""
    from sdn.analysis.early_exit import analyze
    from sdn.checkpoint import read_meta
    from sdn.outputs import load, load_split, topk_accuracy

    arrays = load(run / "outputs.npz")
    meta = read_meta(run)
    top1 = {split: [round(a, 2) for a in topk_accuracy(*load_split(arrays, split))] for split in ("test", "holdout")}
    result = analyze(arrays, policies=["confidence"])
    rules = result["summary"]["policies"]["confidence"]
    return {
        "run": str(run),
        "ic_head": meta.get("ic_head", "paper"),
        "test_top1_per_exit": top1["test"],
        "holdout_top1_per_exit": top1["holdout"],
        "exit_cost_fraction": [round(c, 4) for c in result["summary"]["exit_cost_fraction"]],
        "params_to_exit": [exit_["params"] for exit_ in meta["cost"]["exits"]],
        "early_exit_confidence": {
            rule: {
                "threshold": entry["threshold"],
                "test_accuracy": round(entry["test_accuracy"], 2),
                "test_reduction_percent": round(entry["test_reduction_percent"], 2),
            }
            for rule, entry in rules.items()
            if entry["status"] == "ok"
        },
        "final_test_accuracy": round(result["summary"]["final_test_accuracy"], 2),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", required=True)
    parser.add_argument("--data", type=Path, required=True, help="the prepared data the CNN was trained on")
    parser.add_argument("--cnn", type=Path, required=True, help="the trained CNN's model.pt (its backbone is read)")
    parser.add_argument("--work", type=Path, required=True, help="a folder for the heads' runs (WORK/HEAD)")
    parser.add_argument("--out", type=Path, required=True, help="the JSON to write")
    parser.add_argument("--paper-run", type=Path, help="a run folder (meta.json, outputs.npz) of the paper head")
    parser.add_argument("--heads", default=",".join(HEADS), help="comma-separated, of: " + ", ".join(HEADS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--train-args", default="", help="extra sdn train options, e.g. '--amp --compile'")
    args = parser.parse_args(argv)
    args.heads = [h for h in args.heads.split(",") if h]
    unknown = sorted(set(args.heads) - set(HEADS))
    if unknown:
        parser.error(f"--heads: unknown {unknown}; choose from {', '.join(HEADS)}")
    if not args.cnn.is_file():
        parser.error(f"--cnn {args.cnn} does not exist")
    if args.paper_run is not None and not (args.paper_run / "outputs.npz").is_file():
        parser.error(f"--paper-run {args.paper_run} holds no outputs.npz")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    runs = {
        head: args.paper_run if head == "paper" and args.paper_run is not None else train_and_evaluate(head, args)
        for head in args.heads
    }
    report = {
        "what": f"IC-only training of the IC heads {', '.join(args.heads)} on the same {args.arch} CNN ({args.cnn}); "
        "confidence early exit, thresholds chosen on the held-out split, reported on the test split",
        "cnn_sha256": hashlib.sha256(args.cnn.read_bytes()).hexdigest(),
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": shlex.join([sys.executable, *sys.argv]) if argv is None else shlex.join(argv),
        "heads": {head: summarise(run) for head, run in runs.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    for head, entry in report["heads"].items():
        chosen = entry["early_exit_confidence"].get("tolerance", {})
        print(f"{head}: test top-1 per exit {entry['test_top1_per_exit']}; early exit within the tolerance: "
              f"{chosen.get('test_reduction_percent')}% less cost at {chosen.get('test_accuracy')}%")  # fmt: skip
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
