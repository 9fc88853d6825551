"""Batched online early exit at a few fixed (padded) batch sizes, so that every segment can be a CUDA graph.

:func:`sdn.inference.early_exit_forward` drops the samples that exit from the batch, so every segment meets a new
batch size: fine eagerly, but no CUDA graph can be captured for it. Here the network is cut at its exits into
segments, and each segment is prepared once per *bucket* (a batch size from a small set, 1, 2, 4, ... up to the
largest batch): the rows still running are compacted to the front and padded up to the smallest bucket that holds
them. Each (segment, bucket) step is captured as a CUDA graph on a GPU (``use_graphs``), or run eagerly elsewhere
(what the tests check on a CPU).

Inside a step everything stays on the device: the exit's float64 softmax (as the offline simulation), the decision,
the scatter of the answers of the rows that exit into the result buffers, and a stable sort that moves the rows
still running to the front. Between segments the host reads one number, how many rows go on (it picks the next
bucket), and copies that many rows into the next step's input. Padding rows carry the row index ``max_batch``, a
slot of the result buffers that is never read, and never count as running.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from sdn.analysis.early_exit import check_threshold
from sdn.models.multiexit import MultiExitNet

WARMUP = 3


def default_buckets(max_batch: int) -> tuple[int, ...]:
    """Powers of two below ``max_batch``, and ``max_batch`` itself."""
    sizes = []
    size = 1
    while size < max_batch:
        sizes.append(size)
        size *= 2
    return (*sizes, max_batch)


class _Step:
    """One segment at one bucket size: static input rows and features, and the step as a graph or a function."""

    def __init__(self, owner: BucketedEarlyExit, k: int, features: torch.Tensor, use_graph: bool) -> None:
        self.owner, self.k = owner, k
        self.x = features.clone()
        self.rows = torch.full((features.shape[0],), owner.max_batch, dtype=torch.int64, device=features.device)
        self.outputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self.graph: torch.cuda.CUDAGraph | None = None
        if use_graph:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(WARMUP):
                    owner._segment(k, self.x, self.rows)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self.outputs = owner._segment(k, self.x, self.rows)
            self.graph = graph

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.graph is None:
            return self.owner._segment(self.k, self.x, self.rows)
        self.graph.replay()
        assert self.outputs is not None
        return self.outputs


class BucketedEarlyExit:
    """Confidence-policy online early exit of ``model`` (final fallback) for batches of up to ``max_batch``.

    ``runner(x)`` returns ``(predictions, exit_index)`` int64 [B] on the device, the same answers as
    :func:`sdn.inference.early_exit_forward`; ``runner.step_sizes`` records the batch size of every step run by the
    last call (each one a bucket).
    """

    @torch.no_grad()
    def __init__(
        self,
        model: MultiExitNet,
        threshold: float,
        *,
        max_batch: int,
        buckets: Sequence[int] | None = None,
        use_graphs: bool | None = None,
    ) -> None:
        self.threshold = check_threshold("confidence", threshold)
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        sizes = sorted({int(b) for b in (buckets or default_buckets(max_batch)) if 1 <= int(b) < max_batch})
        self.buckets = (*sizes, max_batch)
        self.max_batch = max_batch
        device = next(model.parameters()).device
        use_graphs = device.type == "cuda" if use_graphs is None else use_graphs
        if use_graphs and device.type != "cuda":
            raise ValueError("CUDA graphs need a model on a CUDA device; pass use_graphs=False to run eagerly")
        self.model = model.eval()
        self.device = device
        self.final = model.num_exits - 1
        blocks = list(model.blocks)
        bounds = [-1, *model.exit_positions, len(blocks) - 1]
        self.segment_blocks: list[nn.Sequential] = [
            nn.Sequential(*blocks[bounds[k] + 1 : bounds[k + 1] + 1]) for k in range(model.num_exits)
        ]
        self.predictions = torch.zeros(max_batch + 1, dtype=torch.int64, device=device)  # the last slot: padding
        self.exit_index = torch.zeros(max_batch + 1, dtype=torch.int64, device=device)
        self.step_sizes: list[int] = []
        self.steps: list[dict[int, _Step]] = []
        probe = torch.zeros(1, 3, model.input_size, model.input_size, device=device)
        for k in range(model.num_exits):
            shape = tuple(probe.shape[1:])
            self.steps.append(
                {b: _Step(self, k, torch.zeros(b, *shape, device=device), use_graphs) for b in self.buckets}
            )
            probe = self.segment_blocks[k](model.stem(probe) if k == 0 else probe)

    def _segment(
        self, k: int, x: torch.Tensor, rows: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Run segment ``k`` on ``x``; write the answers of the rows that stop here; return the features and row
        indices of the rows that go on (first, then padding) and their count (a device scalar)."""
        model = self.model
        h = self.segment_blocks[k](model.stem(x) if k == 0 else x)
        valid = rows < self.max_batch
        head = model.head if k == self.final else model.exits[k]
        probs = torch.softmax(head(h).double(), dim=1)
        pred = probs.argmax(dim=1)  # the first index on ties, like numpy
        if k == self.final:
            fired = valid
        else:
            fired = (probs.max(dim=1).values >= self.threshold) & valid
        target = torch.where(fired, rows, self.max_batch)
        self.predictions.index_copy_(0, target, pred)
        self.exit_index.index_copy_(0, target, torch.full_like(pred, k))
        keep = valid & ~fired
        order = torch.sort((~keep).to(torch.int8), stable=True).indices  # the rows going on first, in order
        return h.index_select(0, order), torch.where(keep, rows, self.max_batch)[order], keep.sum()

    def _bucket(self, n: int) -> int:
        return next(b for b in self.buckets if b >= n)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = x.shape[0]
        if not 1 <= n <= self.max_batch:
            raise ValueError(f"batch of {n} images; this runner takes 1 to {self.max_batch}")
        self.step_sizes = []
        step = self.steps[0][self._bucket(n)]
        step.x[:n].copy_(x)
        step.rows.fill_(self.max_batch)
        step.rows[:n] = torch.arange(n, device=self.device)
        for k in range(self.model.num_exits):
            self.step_sizes.append(step.x.shape[0])
            features, rows, count = step()
            if k == self.final:
                break
            going_on = int(count)  # the one host read per segment: it picks the next bucket
            if going_on == 0:
                break
            nxt = self.steps[k + 1][self._bucket(going_on)]
            size = nxt.x.shape[0]
            nxt.x.copy_(features[:size])
            nxt.rows.copy_(rows[:size])
            step = nxt
        return self.predictions[:n].clone(), self.exit_index[:n].clone()
