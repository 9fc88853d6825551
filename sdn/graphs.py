"""Replay one whole training step (forward, loss, backward, optimizer step) as a captured CUDA graph.

A ResNet-56 step at batch 128 launches over a thousand small kernels; on a fast GPU their launch overhead, not the
arithmetic, sets the pace. Capturing the step once and replaying it removes that overhead.

Semantics are those of the eager step, gradient clipping included: the loss weights live in a device tensor updated
in place between epochs; the learning rate is baked into the graph, so the step is captured again whenever it
changes (at the milestones); warm-up iterations needed before capture are undone (parameters, buffers and optimizer
state restored), so no training step is taken twice. Batches of another shape (the last, partial batch of an epoch)
run eagerly on the same parameters, gradients and optimizer state.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import nullcontext

import torch
from torch import nn
from torch.nn import functional as F

log = logging.getLogger(__name__)

WARMUP_STEPS = 3


def weighted_loss(
    outputs: Sequence[torch.Tensor], labels: torch.Tensor, weights: torch.Tensor, active: Sequence[bool]
) -> torch.Tensor:
    """Sum of ``weights[i] * CE(outputs[i])`` over the outputs marked active (fp32 cross-entropy)."""
    terms = [weights[i] * F.cross_entropy(o.float(), labels) for i, o in enumerate(outputs) if active[i]]
    return torch.stack(terms).sum()


def clip_gradients(optimizer: torch.optim.Optimizer, max_norm: float | None) -> None:
    """Scale the gradients of the optimizer's parameters down to global L2 norm ``max_norm`` (None: unchanged).

    No host synchronisation, so a captured step can hold it; a non-finite norm leaves non-finite gradients (and a
    non-finite loss, which training reports).
    """
    if max_norm is None:
        return
    params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)


class GraphedTrainStep:
    """A training step for full batches of one shape, captured as a CUDA graph on first use."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        num_outputs: int,
        active: Sequence[bool],
        amp: bool,
        channels_last: bool,
        clip_grad_norm: float | None = None,
    ) -> None:
        self.model = model
        self.clip_grad_norm = clip_grad_norm
        self.optimizer = optimizer
        self.active = list(active)
        self.amp = amp
        self.channels_last = channels_last
        device = next(p for p in model.parameters()).device
        if device.type != "cuda":
            raise ValueError("CUDA graphs need the model on a CUDA device")
        self.weights = torch.zeros(num_outputs, device=device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.captured_lr: float | None = None
        self.static_x: torch.Tensor | None = None
        self.static_y: torch.Tensor | None = None
        self.static_loss: torch.Tensor | None = None
        self.failed = False

    def set_weights(self, weights: Sequence[float]) -> None:
        if [w != 0.0 for w in weights] != self.active:
            raise ValueError("the set of outputs with non-zero loss weight changed; build a new GraphedTrainStep")
        self.weights.copy_(torch.tensor(list(weights), dtype=self.weights.dtype))

    def _autocast(self) -> object:
        if not self.amp:
            return nullcontext()
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16, cache_enabled=False)

    def _forward_backward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with self._autocast():
            outputs = self.model(x)
        loss = weighted_loss(outputs, y, self.weights, self.active)
        loss.backward()
        clip_gradients(self.optimizer, self.clip_grad_norm)
        self.optimizer.step()
        return loss

    def eager(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One ordinary step (for batches whose shape differs from the captured one)."""
        self.optimizer.zero_grad(set_to_none=False)
        return self._forward_backward(x, y).detach()

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.failed:
            return self.eager(x, y)
        lr = float(self.optimizer.param_groups[0]["lr"])
        if self.graph is None or self.captured_lr != lr:
            try:
                self._capture(x, y, lr)
            except RuntimeError as err:  # capture unsupported for this model/optimizer: stay correct, go eager
                log.warning("CUDA graph capture failed (%s); running the training step eagerly", err)
                self.failed = True
                self.graph = None
                return self.eager(x, y)
        assert self.static_x is not None and self.static_y is not None and self.static_loss is not None
        if x.shape != self.static_x.shape:
            return self.eager(x, y)
        self.static_x.copy_(x)
        self.static_y.copy_(y)
        assert self.graph is not None
        self.graph.replay()
        return self.static_loss

    def _state_tensors(self) -> list[torch.Tensor]:
        tensors = [*self.model.parameters(), *self.model.buffers()]
        for state in self.optimizer.state.values():
            tensors.extend(v for v in state.values() if isinstance(v, torch.Tensor))
        return tensors

    @torch.no_grad()
    def _snapshot(self) -> dict[int, torch.Tensor]:
        return {id(t): t.detach().clone() for t in self._state_tensors()}

    @torch.no_grad()
    def _restore(self, saved: dict[int, torch.Tensor]) -> None:
        for tensor in self._state_tensors():
            previous = saved.get(id(tensor))
            if previous is not None:
                tensor.copy_(previous)
            else:  # optimizer state created by the warm-up: a fresh state is all zeros
                tensor.zero_()

    def _capture(self, x: torch.Tensor, y: torch.Tensor, lr: float) -> None:
        saved = self._snapshot()
        self.static_x = x.detach().clone()
        self.static_y = y.detach().clone()
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(WARMUP_STEPS):
                    self.optimizer.zero_grad(set_to_none=True)
                    self._forward_backward(self.static_x, self.static_y)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            self.optimizer.zero_grad(set_to_none=True)
            with torch.cuda.graph(graph):
                self.static_loss = self._forward_backward(self.static_x, self.static_y).detach()
            torch.cuda.synchronize()
        finally:
            self._restore(saved)  # undo the warm-up steps, whether or not the capture worked
        self.graph = graph
        self.captured_lr = lr
        log.debug("captured the training step as a CUDA graph (batch %s, lr %g)", tuple(x.shape), lr)
