"""Online early exit at a fixed batch size (batch 1: one request at a time), every segment a CUDA graph.

At batch 1 a ResNet-56 forward on a GPU is bound by kernel launches, not arithmetic: every kernel costs a few
microseconds however little it computes. The eager early-exit loop adds about a dozen small kernels and a host
synchronisation at every internal classifier, so it can be slower than the plain network although it computes less.
Here the network is cut at its exits into segments (the blocks up to an exit, that exit's classifier and its
confidence test), each captured once as a CUDA graph, and each exit is evaluated with as few kernels as the math
allows:

- mixed pooling as one ``lerp`` of the two pools with the (frozen) alpha, then the linear layer;
- the decision as one code per sample: the predicted class when its fp32 softmax probability reaches the threshold,
  else -1;
- that code copied inside the graph into pinned host memory (``host_copy=True``), so reading it costs a stream
  synchronisation but no extra copy call. Where the capture refuses the copy, the code is read from the device.

Inference replays segment after segment and stops at the first exit whose code is a class. The plain CNN, for
comparison, is captured as one graph with the same answer path. Without CUDA (``use_graphs=False``) the same
segments run eagerly, which is what the tests check on a CPU.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch.nn import functional as F

from sdn.models.exits import InternalClassifier, MixedPool, inference_pool
from sdn.models.multiexit import MultiExitNet

log = logging.getLogger(__name__)

WARMUP = 3
Segment = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class _Replayable:
    """``fn(x)`` captured as a CUDA graph on the static input ``x`` (``use_graph``), or simply called."""

    def __init__(self, fn: Segment, x: torch.Tensor, use_graph: bool) -> None:
        self.fn = fn
        self.graph: torch.cuda.CUDAGraph | None = None
        self.outputs: tuple[torch.Tensor, torch.Tensor] | None = None
        if use_graph:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(WARMUP):
                    fn(x)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self.outputs = fn(x)
            self.graph = graph

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run on ``x`` (with a graph, ``x`` must be the static input it was captured on)."""
        if self.graph is None:
            return self.fn(x)
        self.graph.replay()
        assert self.outputs is not None
        return self.outputs


def fused_exit_logits(head: InternalClassifier, alpha: torch.Tensor | None, h: torch.Tensor) -> torch.Tensor:
    """``head(h)`` in eval mode with fewer kernels: ``alpha*max + (1-alpha)*avg`` as one lerp (``alpha`` given;
    skipped where the pool's kernel is 1, ``inference_pool``).
    Other heads (token or channels-last ICs) are simply called."""
    if not isinstance(head, InternalClassifier):
        return head(h)
    pool = inference_pool(head.pool)
    if isinstance(pool, MixedPool):
        assert alpha is not None
        h = torch.lerp(pool.avg_pool(h), pool.max_pool(h), alpha)
    else:  # nn.Identity (a map of at most 4x4) or the global average pool of head="gap"
        h = pool(h)
    return F.linear(torch.flatten(h, 1), head.linear.weight, head.linear.bias)


class GraphedEarlyExit:
    """Confidence-policy early exit of ``model`` for inputs shaped like ``example``, segment by segment.

    All samples of the fixed-size batch leave at the same exit: the first where every one of them is confident.
    """

    @torch.no_grad()
    def __init__(
        self,
        model: MultiExitNet,
        example: torch.Tensor,
        threshold: float,
        *,
        use_graphs: bool | None = None,
        host_copy: bool = True,
    ) -> None:
        use_graphs = example.device.type == "cuda" if use_graphs is None else use_graphs
        if use_graphs and example.device.type != "cuda":
            raise ValueError("CUDA graphs need CUDA inputs; pass use_graphs=False to run the segments eagerly")
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"confidence threshold must be in [0, 1], got {threshold}")
        model.eval()
        self.model = model
        self.threshold = threshold
        self.use_graphs = use_graphs
        self.static_input = example.clone()
        self.alphas = [
            head.pool.alpha.detach().clone() if isinstance(getattr(head, "pool", None), MixedPool) else None
            for head in model.exits
        ]
        batch = example.shape[0]
        self.host_copy = False
        if host_copy and use_graphs:
            try:
                self._build(batch, host_copy=True)
                self.host_copy = True
            except RuntimeError as err:  # a capture that refuses the device-to-host copy: read codes on the device
                log.warning(
                    "capturing the copy of exit decisions to pinned memory failed (%s); reading them from "
                    "the device instead",
                    err,
                )
                torch.cuda.synchronize()
        if not self.host_copy:
            self._build(batch, host_copy=False)

    def _build(self, batch: int, host_copy: bool) -> None:
        model = self.model
        num_outputs = model.num_exits
        pinned = self.static_input.device.type == "cuda"
        # One code per output and sample: the class where the exit answers, -1 where it passes the sample on.
        self.host_codes = torch.full((num_outputs + 1, batch), -1, dtype=torch.int64, pin_memory=pinned)
        self.segments: list[_Replayable] = []
        start = 0
        features = self.static_input
        for k, position in enumerate(model.exit_positions):
            blocks = list(model.blocks)[start : position + 1]
            segment = _Replayable(
                self._segment(k, blocks, stem=start == 0, host_copy=host_copy), features, self.use_graphs
            )
            self.segments.append(segment)
            if segment.outputs is not None:  # a graph's next segment reads this one's static output
                features = segment.outputs[0]
            start = position + 1
        tail = list(model.blocks)[start:]
        self.final = _Replayable(
            self._tail(num_outputs - 1, tail, stem=start == 0, host_copy=host_copy), features, self.use_graphs
        )
        self.whole = _Replayable(
            self._tail(num_outputs, list(model.blocks), stem=True, host_copy=host_copy),
            self.static_input,
            self.use_graphs,
        )

    def _run_blocks(self, x: torch.Tensor, blocks: list[torch.nn.Module], stem: bool) -> torch.Tensor:
        if stem:
            x = self.model.stem(x)
        for block in blocks:
            x = block(x)
        return x

    def _publish(self, index: int, code: torch.Tensor, host_copy: bool) -> torch.Tensor:
        if host_copy:
            self.host_codes[index].copy_(code, non_blocking=True)
        return code

    def _segment(self, k: int, blocks: list[torch.nn.Module], *, stem: bool, host_copy: bool) -> Segment:
        head = self.model.exits[k]
        alpha = self.alphas[k]
        threshold = self.threshold

        def run(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            h = self._run_blocks(x, blocks, stem)
            confidence, prediction = torch.softmax(fused_exit_logits(head, alpha, h).float(), dim=1).max(dim=1)
            fires = confidence >= threshold
            if fires.shape[0] > 1:
                fires = fires.all()
            code = torch.where(fires, prediction, -1)
            return h, self._publish(k, code, host_copy)

        return run

    def _tail(self, index: int, blocks: list[torch.nn.Module], *, stem: bool, host_copy: bool) -> Segment:
        def run(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            h = self._run_blocks(x, blocks, stem)
            return h, self._publish(index, self.model.head(h).argmax(dim=1), host_copy)

        return run

    def _codes(self, index: int, code: torch.Tensor) -> torch.Tensor:
        """The codes on the host: from pinned memory after a stream synchronisation, or copied from the device."""
        if self.host_copy:
            torch.cuda.current_stream().synchronize()
            return self.host_codes[index]
        return code.cpu()

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Predictions (on the host) and the exit that answered (the same exit for the whole fixed-size batch)."""
        features = self._load(x)
        for k, segment in enumerate(self.segments):
            features, code = segment(features)
            codes = self._codes(k, code)
            if int(codes[0]) >= 0:  # all samples of the batch answer here, or none does
                return codes.clone(), k
        _, code = self.final(features)
        return self._codes(len(self.segments), code).clone(), len(self.segments)

    @torch.no_grad()
    def cnn(self, x: torch.Tensor) -> torch.Tensor:
        """The plain network's predictions (on the host), through the same answer path."""
        _, code = self.whole(self._load(x))
        return self._codes(self.model.num_exits, code).clone()

    def _load(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_graphs:
            self.static_input.copy_(x)
            return self.static_input
        return x


def time_graphed_batch1(
    model: MultiExitNet, images: torch.Tensor, threshold: float, *, host_copy: bool = True
) -> dict[str, Any]:
    """Median per-image latency of the graphed CNN and of graphed early exit, one image at a time."""
    runner = GraphedEarlyExit(model, images[:1], threshold, host_copy=host_copy)
    exits: list[int] = []
    predictions: list[int] = []

    def latency(fn: Callable[[torch.Tensor], Any], record: bool) -> float:
        times = []
        for i in range(images.shape[0]):
            torch.cuda.synchronize()
            start = time.perf_counter()
            out = fn(images[i : i + 1])
            pred = out[0] if isinstance(out, tuple) else out
            value = int(pred[0])  # the answer is on the host, as a real request needs it
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
        "host_copy": runner.host_copy,
        "cnn_median_latency_ms": cnn_ms,
        "early_exit_median_latency_ms": early_ms,
        "measured_saving": 1.0 - early_ms / cnn_ms,
        "predictions": predictions,
        "exit_index": exits,
    }
