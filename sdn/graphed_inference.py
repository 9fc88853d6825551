"""Online early exit at a fixed batch size (batch 1: one request at a time) with every segment as a CUDA graph.

At batch 1 a ResNet-56 forward on a GPU is bound by kernel launches, not arithmetic, and the eager early-exit loop
adds a dozen small kernels and a host synchronisation at every internal classifier: it can be slower than the plain
network although it computes less. Here the network is cut at its exits into segments (the blocks up to an exit,
that exit's classifier and its confidence test), each captured once as a CUDA graph. Inference replays segment after
segment and reads one flag per exit; the first exit whose top softmax probability reaches ``threshold`` answers.
The plain CNN, for comparison, is captured as one graph too.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from sdn.models.multiexit import MultiExitNet

WARMUP = 3


def _capture(fn: Callable[[], Any]) -> tuple[torch.cuda.CUDAGraph, Any]:
    """Warm ``fn`` up on a side stream, then capture it (own memory pool) and return the graph and its outputs."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(WARMUP):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph, out


class GraphedEarlyExit:
    """Confidence-policy early exit of ``model`` for inputs shaped like ``example``, segment by segment."""

    @torch.no_grad()
    def __init__(self, model: MultiExitNet, example: torch.Tensor, threshold: float) -> None:
        if example.device.type != "cuda":
            raise ValueError("GraphedEarlyExit needs CUDA inputs")
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"confidence threshold must be in [0, 1], got {threshold}")
        model.eval()
        self.model = model
        self.threshold = threshold
        self.static_input = example.clone()
        self.segments: list[tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = []
        start = 0
        features = self.static_input
        for k, position in enumerate(model.exit_positions):
            blocks = list(model.blocks)[start : position + 1]
            graph, (features, prediction, fires) = _capture(
                self._segment(features, blocks, model.exits[k], stem=start == 0)
            )
            self.segments.append((graph, prediction, fires))
            start = position + 1
        tail = list(model.blocks)[start:]
        graph, prediction = _capture(self._tail(features, tail, stem=start == 0))
        self.final = (graph, prediction)
        self.cnn_graph, self.cnn_prediction = _capture(self._tail(self.static_input, list(model.blocks), True))

    def _run_blocks(self, x: torch.Tensor, blocks: list[torch.nn.Module], stem: bool) -> torch.Tensor:
        if stem:
            x = self.model.stem(x)
        for block in blocks:
            x = block(x)
        return x

    def _segment(
        self, x: torch.Tensor, blocks: list[torch.nn.Module], exit_head: torch.nn.Module, *, stem: bool
    ) -> Callable[[], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        def run() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            h = self._run_blocks(x, blocks, stem)
            probs = torch.softmax(exit_head(h).double(), dim=1)
            confidence, prediction = probs.max(dim=1)
            return h, prediction, (confidence >= self.threshold).all()

        return run

    def _tail(self, x: torch.Tensor, blocks: list[torch.nn.Module], stem: bool) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            return self.model.head(self._run_blocks(x, blocks, stem)).argmax(dim=1)

        return run

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Predictions and the exit that answered (the same exit for the whole fixed-size batch)."""
        self.static_input.copy_(x)
        for k, (graph, prediction, fires) in enumerate(self.segments):
            graph.replay()
            if bool(fires):  # one host synchronisation per exit reached
                return prediction.clone(), k
        graph, prediction = self.final
        graph.replay()
        return prediction.clone(), len(self.segments)

    @torch.no_grad()
    def cnn(self, x: torch.Tensor) -> torch.Tensor:
        self.static_input.copy_(x)
        self.cnn_graph.replay()
        return self.cnn_prediction.clone()


def time_graphed_batch1(model: MultiExitNet, images: torch.Tensor, threshold: float) -> dict[str, Any]:
    """Median per-image latency of the graphed CNN and of graphed early exit, one image at a time."""
    runner = GraphedEarlyExit(model, images[:1], threshold)
    exits: list[int] = []
    predictions: list[int] = []

    def latency(fn: Callable[[torch.Tensor], Any], record: bool) -> float:
        times = []
        for i in range(images.shape[0]):
            torch.cuda.synchronize()
            start = time.perf_counter()
            out = fn(images[i : i + 1])
            pred = out[0] if isinstance(out, tuple) else out
            value = int(pred.item())  # the answer reaches the host, as a real request would need
            times.append(time.perf_counter() - start)
            if record:
                predictions.append(value)
                exits.append(out[1])
        return 1000.0 * statistics.median(times)

    latency(runner.cnn, False)  # warm-up
    latency(runner, False)
    cnn_ms = latency(runner.cnn, False)
    early_ms = latency(runner, True)
    return {
        "cnn_median_latency_ms": cnn_ms,
        "early_exit_median_latency_ms": early_ms,
        "measured_saving": 1.0 - early_ms / cnn_ms,
        "predictions": predictions,
        "exit_index": exits,
    }
