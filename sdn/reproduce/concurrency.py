"""How many jobs to run at once on one device (``JOBS=auto``): measured, then chosen.

``python -m sdn.reproduce.concurrency --arch resnet56 --device cuda --candidates 1,2,3 --json-out F`` trains the
SDN recipe on synthetic data in 1, 2, 3 processes at once (``sdn.bench.concurrent_train_rate``: each warms up and
captures its graph, then all count images in the same window) and writes the aggregate images/s per job count and
the choice: the smallest count whose aggregate no larger count beats by ``min_gain``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

MIN_GAIN = 0.05


def choose_jobs(rates: Mapping[int, float], min_gain: float = MIN_GAIN) -> int:
    """The job count to use: walk up the counts, moving on only when the aggregate rate grows by ``min_gain``."""
    if not rates:
        raise ValueError("no measured rates to choose from")
    counts = sorted(rates)
    best = counts[0]
    for count in counts[1:]:
        if rates[count] >= rates[best] * (1.0 + min_gain):
            best = count
    return best


def measure_rates(
    arch: str, device: str, candidates: Sequence[int], seconds: float, batch_size: int = 128
) -> dict[int, float]:
    """Aggregate SDN-training images/s for each number of concurrent jobs in ``candidates``."""
    import torch

    from sdn.bench import BenchSettings, concurrent_train_rate

    settings = BenchSettings(device=torch.device(device), batch_size=batch_size, steps=5, warmup=3, windows=1)
    return {
        jobs: concurrent_train_rate(arch, "sdn", settings, jobs, seconds)["aggregate_images_per_s"]
        for jobs in candidates
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sdn.reproduce.concurrency", description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--candidates", default="1,2,3", help="comma-separated job counts")
    parser.add_argument("--seconds", type=float, default=6.0, help="timed window per job count")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--json-out", type=Path, required=True)
    args = parser.parse_args(argv)
    candidates = sorted({int(c) for c in args.candidates.split(",") if c.strip()})
    if not candidates or candidates[0] < 1:
        parser.error(f"--candidates must be positive job counts, got {args.candidates!r}")
    rates = measure_rates(args.arch, args.device, candidates, args.seconds, args.batch_size)
    doc = {"arch": args.arch, "device": args.device, "rates": rates, "chosen": choose_jobs(rates)}
    args.json_out.write_text(json.dumps(doc, indent=2))
    print(json.dumps(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
