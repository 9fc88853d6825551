"""Would cutting a batch into sub-batches make the one-graph ONNX early exit cheaper at batch 64?

    python docs/deploy-latency/sub_batch_cost.py [--archs resnet56,mobilenet,vgg16bn] [--chunks 64,16,8] [--rounds 7]

For each architecture: an untrained SDN (CIFAR-10 shapes, the paper's IC head) whose ICs' linear layers are zero, so
that no image exits and every image passes every IC (``ic_check_cost.runner_for``), exported as one graph. 64 random
images are run through the plain network (``runner.cnn``) and through the one graph, whole or cut into sub-batches
of each size in ``--chunks``, all cases alternating in rounds (ONNX Runtime, one thread). Printed per sub-batch size:
the time an image of both, and the one graph's overhead over the network: what passing the exits costs when no
image leaves, the layout conversions at each cut included. Timing only, no trained model.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable

import numpy as np
import torch
from ic_check_cost import runner_for  # this folder's script (run as a file, its folder is on sys.path)

BATCH = 64


def run_in_chunks(call: Callable[[np.ndarray], object], images: np.ndarray, chunk: int) -> None:
    for start in range(0, len(images), chunk):
        call(images[start : start + chunk])


def measure(arch: str, chunks: list[int], rounds: int) -> dict[int, tuple[float, float]]:
    """Per sub-batch size: the median ms an image of the network and of the one graph with no exit taken."""
    images = np.random.default_rng(0).standard_normal((BATCH, 3, 32, 32)).astype(np.float32)
    with tempfile.TemporaryDirectory() as folder:
        runner, ics = runner_for(arch, "paper", folder)
        if not (runner(images)[1] == ics).all():
            raise RuntimeError(f"{arch}: an image left early; the timing needs every image to pass every IC")
        cases = [(kind, chunk) for chunk in chunks for kind in ("cnn", "one_graph")]
        call_of = {"cnn": runner.cnn, "one_graph": runner}
        for kind, chunk in cases:  # warm-up
            run_in_chunks(call_of[kind], images, chunk)
        seconds: dict[tuple[str, int], list[float]] = {case: [] for case in cases}
        for _ in range(rounds):
            for kind, chunk in cases:
                start = time.perf_counter()
                run_in_chunks(call_of[kind], images, chunk)
                seconds[kind, chunk].append(time.perf_counter() - start)
    per_image = {case: 1e3 * statistics.median(times) / BATCH for case, times in seconds.items()}
    return {chunk: (per_image["cnn", chunk], per_image["one_graph", chunk]) for chunk in chunks}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default="resnet56,mobilenet,vgg16bn")
    parser.add_argument("--chunks", default="64,16,8")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)
    chunks = [int(c) for c in args.chunks.split(",")]
    if any(c < 1 or BATCH % c for c in chunks):
        parser.error(f"--chunks: each must divide {BATCH}, got {args.chunks}")
    print("arch       sub-batch  CNN ms/image  one graph, no exit ms/image  overhead")
    for arch in args.archs.split(","):
        for chunk, (cnn, one_graph) in measure(arch, chunks, args.rounds).items():
            overhead = 100 * (one_graph / cnn - 1)
            print(f"{arch:10s} {chunk:9d} {cnn:13.3f} {one_graph:28.3f} {overhead:8.1f}%", flush=True)


if __name__ == "__main__":
    main()
