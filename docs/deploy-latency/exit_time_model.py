"""What an early exit's wall time would be under a simple time model, and what a subset of the exits would gain.

    python docs/deploy-latency/exit_time_model.py [OUTPUTS_NPZ] [--seg0-time 0.215] [--ic-us 32] [--cnn-us 950]

The model (docs/deploy-latency.md, "Why the one graph stops near 0.8"): each segment of the network takes its share
of the CNN's ops in time, except segment 0, which takes ``--seg0-time`` of it (measured: 21.5% of the time for 16.8%
of the ops, MobileNet, ONNX Runtime, one thread, batch 1), and every IC an image passes, its exit included, costs
``--ic-us`` microseconds beside a whole network of ``--cnn-us`` (measured: about 23 us an IC and 9 us an `If`, 950
us the network). It replays the confidence early exit with ``sdn.analysis.early_exit.simulate`` on the published
logits, for every subset of the ICs, and reports the modelled time saving over the ops-predicted one of all ICs.
A model, not a measurement: its figure for all ICs is checked against `sdn bench` in the doc.
"""

from __future__ import annotations

import argparse
import itertools

import numpy as np

from sdn.analysis.arrays import softmax
from sdn.analysis.early_exit import simulate
from sdn.outputs import load


def segment_time(cost: np.ndarray, seg0_time: float) -> np.ndarray:
    """Each segment's time in units of the CNN's: segment 0 as given, the others by their ops, in all what the ops
    count for the whole SDN (``cost[-1]``, the CNN's ops and the ICs', just over 1)."""
    ops = np.diff(np.concatenate([[0.0], cost]))
    rest = ops[1:] / ops[1:].sum() * (cost[-1] - seg0_time)
    return np.concatenate([[seg0_time], rest])


def modelled(probs, labels, cost, times, ics: tuple[int, ...], threshold: float, ic_time: float):
    """(accuracy %, ops saving, modelled time saving) of the early exit through ``ics`` and the final head."""
    final = len(cost) - 1
    kept = [*ics, final]
    result = simulate(probs[kept], labels, cost[kept], "confidence", threshold)
    exit_at = np.asarray(kept)[result.exit_index]
    passed = np.searchsorted(np.asarray(ics), exit_at, side="right")  # ICs evaluated up to and including the exit
    time = np.cumsum(times)[exit_at] + ic_time * passed
    return result.accuracy, 1.0 - result.avg_cost_fraction, 1.0 - float(time.mean())


def ratio(time: float, ops: float) -> float:
    return time / ops if ops > 0 else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("outputs", nargs="?", default="reproduction/cifar10/mobilenet/s0/sdn/outputs.npz")
    parser.add_argument("--thresholds", default="0.86,0.93")
    parser.add_argument("--seg0-time", type=float, default=0.215)
    parser.add_argument("--ic-us", type=float, default=32.0)
    parser.add_argument("--cnn-us", type=float, default=950.0)
    parser.add_argument("--accuracy-slack", type=float, default=0.2, help="points below all ICs' held-out accuracy")
    args = parser.parse_args()
    outputs = load(args.outputs)
    cost = np.asarray(outputs["exit_fraction"], dtype=np.float64)
    times = segment_time(cost, args.seg0_time)
    ics = tuple(range(len(cost) - 1))
    split = {
        name: (softmax(outputs[f"{name}_logits"]), np.asarray(outputs[f"{name}_labels"]))
        for name in ("holdout", "test")
    }
    for threshold in (float(q) for q in args.thresholds.split(",")):
        # the held-out accuracy of all ICs (the same at any IC cost)
        baseline = modelled(*split["holdout"], cost, times, ics, threshold, 0.0)[0]
        for ic_us in (args.ic_us, args.ic_us / 2, 0.0):
            ic_time = ic_us / args.cnn_us
            accuracy, ops, time = modelled(*split["test"], cost, times, ics, threshold, ic_time)
            line = (
                f"threshold {threshold}, {ic_us:.0f} us an IC: all ICs: test {accuracy:.2f}%, ops saving {ops:.3f}, "
            )
            line += f"modelled time saving {time:.3f} (ratio {ratio(time, ops):.2f})"
            candidates = []
            for size in range(1, len(ics) + 1):
                for subset in itertools.combinations(ics, size):
                    held = modelled(*split["holdout"], cost, times, subset, threshold, ic_time)
                    if held[0] >= baseline - args.accuracy_slack:
                        candidates.append((held[2], subset))
            best = max(candidates)[1]
            accuracy_b, _, time_b = modelled(*split["test"], cost, times, best, threshold, ic_time)
            print(f"{line}; best subset on held-out {best}: test {accuracy_b:.2f}%, ratio {ratio(time_b, ops):.2f}")


if __name__ == "__main__":
    main()
