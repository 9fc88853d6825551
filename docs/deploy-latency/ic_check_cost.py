"""What checking one exit costs in the one-graph ONNX early exit at batch 1, for each IC head.

    python docs/deploy-latency/ic_check_cost.py [--archs mobilenet,resnet56] [--heads paper,gap] [--calls 3000]

For each architecture and IC head (``sdn train --ic-head``): an untrained SDN (CIFAR-10 shapes, seed 0) is exported
with ``sdn.export_onnx.export`` and run by ``OnnxEarlyExit`` (one graph, one thread) at threshold 1.0, so that no
image exits and every IC is passed, alternating call by call with the plain network (``runner.cnn``). The median
extra time over the CNN, divided by the ICs, is what passing one IC costs: its head, the decision and the ``If``.
Timing only: the weights are random, so nothing here says how accurate either head is.
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


def measure(arch: str, head: str, calls: int) -> dict[str, float]:
    torch.manual_seed(0)
    model = create(arch, num_classes=10, input_size=32, ic_head=head).eval()  # type: ignore[arg-type]
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    with tempfile.TemporaryDirectory() as folder:
        export(model, folder)
        runner = OnnxEarlyExit(folder, threshold=1.0, threads=1, engine="one-graph")
        for _ in range(50):  # warm-up
            runner.cnn(x)
            runner(x)
        cnn, early_exit = [], []
        for _ in range(calls // 100):  # alternate in rounds, so that a slow spell hits both
            cnn.append(median_us(runner.cnn, x, 100))
            early_exit.append(median_us(runner, x, 100))
    cnn_us, ee_us = statistics.median(cnn), statistics.median(early_exit)
    ics = len(model.exits)
    return {"cnn_us": cnn_us, "no_exit_us": ee_us, "per_ic_us": (ee_us - cnn_us) / ics, "ics": ics}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default="mobilenet,resnet56")
    parser.add_argument("--heads", default="paper,gap")
    parser.add_argument("--calls", type=int, default=3000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("arch       head    CNN us  one graph, no exit us  per IC passed us")
    for arch in args.archs.split(","):
        for head in args.heads.split(","):
            r = measure(arch, head, args.calls)
            row = f"{arch:10s} {head:6s} {r['cnn_us']:7.0f} {r['no_exit_us']:22.0f} {r['per_ic_us']:17.1f}"
            print(row, flush=True)


if __name__ == "__main__":
    main()
