"""What checking one exit costs in the one-graph ONNX early exit at batch 1, for each IC head.

    python docs/deploy-latency/ic_check_cost.py [--archs mobilenet,resnet56] [--heads paper,gap] [--calls 3000] \
        [--classes 10,100] [--ic-weights float32,int8]

For each architecture, IC head (``sdn train --ic-head``), number of classes and storage of the ICs' weights
(``sdn export --ic-weights``): an untrained SDN (32x32 inputs, seed 0) whose ICs'
linear layers are zero (every IC's softmax is uniform, so no image exits and every IC is passed: with random weights
an untrained ResNet-56's logits are so large that its float64 softmax reaches 1.0 at the first IC) is exported with
``sdn.export_onnx.export`` and run by ``OnnxEarlyExit`` (one graph, one thread), alternating in rounds with the
plain network (``runner.cnn``). The median extra time over the CNN, divided by the ICs, is what passing one IC
costs: its head, the decision and the ``If``. Timing only: nothing here says how accurate either head is.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np
import torch

from sdn.export_onnx import OnnxEarlyExit, export
from sdn.models import create


def median_us(call, x: np.ndarray, calls: int) -> float:
    times = []
    for _ in range(calls):
        start = time.perf_counter_ns()
        call(x)
        times.append(time.perf_counter_ns() - start)
    return statistics.median(times) / 1e3


def runner_for(arch: str, variant: str, folder: str) -> tuple[OnnxEarlyExit, int]:
    """The exported one-graph runner of an untrained ``arch`` SDN of ``variant`` ("HEAD/CLASSES/IC_WEIGHTS") whose
    ICs' linear layers are zero."""
    head, classes, ic_weights = variant.split("/")
    torch.manual_seed(0)
    model = create(arch, num_classes=int(classes), input_size=32, ic_head=head).eval()  # type: ignore[arg-type]
    with torch.no_grad():
        for ic in model.exits:
            ic.linear.weight.zero_()
            ic.linear.bias.zero_()
    export(model, folder, ic_weights=ic_weights)
    return OnnxEarlyExit(folder, threshold=0.5, threads=1, engine="one-graph"), len(model.exits)


def measure(arch: str, heads: list[str], calls: int) -> dict[str, dict[str, float]]:
    """Per variant ("HEAD/CLASSES/IC_WEIGHTS", ``heads``): the CNN's and the no-exit one graph's median us and the
    cost of an IC passed; every variant's two graphs timed in the same rounds, so that the machine's slow spells
    hit each alike."""
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    with tempfile.TemporaryDirectory() as root:
        runners = {}
        for head in heads:
            folder = f"{root}/{head}"
            runner, ics = runner_for(arch, head, folder)
            exit_index = int(runner(x)[1][0])
            if exit_index != ics:
                raise RuntimeError(f"{arch}/{head}: the image left at exit {exit_index}; the timing needs it to pass")
            runners[head] = (runner, ics)
        calls_of = {(h, kind): r.cnn if kind == "cnn" else r for h, (r, _) in runners.items()
                    for kind in ("cnn", "early_exit")}  # fmt: skip
        for call in calls_of.values():  # warm-up
            for _ in range(50):
                call(x)
        rounds: dict[tuple[str, str], list[float]] = {key: [] for key in calls_of}
        for _ in range(calls // 100):
            for key, call in calls_of.items():
                rounds[key].append(median_us(call, x, 100))
    result = {}
    for head, (_, ics) in runners.items():
        cnn, early_exit = statistics.median(rounds[head, "cnn"]), statistics.median(rounds[head, "early_exit"])
        result[head] = {"cnn_us": cnn, "no_exit_us": early_exit, "per_ic_us": (early_exit - cnn) / ics}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default="mobilenet,resnet56")
    parser.add_argument("--heads", default="paper,gap")
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--classes", default="10", help="comma-separated numbers of classes")
    parser.add_argument("--ic-weights", default="float32", help="comma-separated: float32, int8")
    args = parser.parse_args()
    torch.set_num_threads(1)
    variants = [
        f"{head}/{classes}/{weights}"
        for head in args.heads.split(",")
        for classes in args.classes.split(",")
        for weights in args.ic_weights.split(",")
    ]
    print("arch       head/classes/IC weights  CNN us  one graph, no exit us  per IC passed us")
    for arch in args.archs.split(","):
        for variant, r in measure(arch, variants, args.calls).items():
            row = f"{arch:10s} {variant:23s} {r['cnn_us']:7.0f} {r['no_exit_us']:22.0f} {r['per_ic_us']:17.1f}"
            print(row, flush=True)


if __name__ == "__main__":
    main()
