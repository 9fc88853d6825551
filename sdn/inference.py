"""Inference: every exit's logits over a stream of batches (:func:`collect_logits`), and online early exit.

Online early exit is a batched forward that really stops computing for the samples that have exited.

At every internal classifier the policy (see :mod:`sdn.analysis.early_exit`) is applied to the still-active rows;
those that fire get their answer and are dropped from the batch (``index_select`` of the remaining rows), so the
following blocks and exits only run on the rest. The final head runs only on samples that never exited. The
decisions use float64 softmaxes, like the offline simulation, so both give the same predictions and exit indices.
"""

from __future__ import annotations

import copy
import math
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from tqdm import tqdm

from sdn.analysis.early_exit import check_fallback, check_threshold
from sdn.models.exits import MixedPool, inference_pool
from sdn.models.multiexit import MultiExitNet

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


@torch.no_grad()
def collect_logits(
    model: nn.Module, batches: Batches, *, channels_last: bool = False, desc: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Run ``model`` in eval mode over ``batches``; return logits float32 [E, N, K] and labels int64 [N].

    The model's train/eval mode is restored afterwards.
    """
    was_training = model.training
    model.eval()
    per_batch: list[list[torch.Tensor]] = []
    labels: list[torch.Tensor] = []
    try:
        bar = tqdm(batches, desc=desc or "evaluate", leave=False, disable=not sys.stderr.isatty())
        for images, targets in bar:
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            outputs = model(images)
            per_batch.append([o.float().cpu() for o in outputs])
            labels.append(targets.cpu())
    finally:
        model.train(was_training)
    if not per_batch:
        return np.zeros((0, 0, 0), dtype=np.float32), np.zeros((0,), dtype=np.int64)
    num_exits = len(per_batch[0])
    logits = torch.stack([torch.cat([b[e] for b in per_batch]) for e in range(num_exits)])
    return logits.numpy().astype(np.float32, copy=False), torch.cat(labels).numpy().astype(np.int64, copy=False)


def _fires(probs: torch.Tensor, policy: str, threshold: float | int, run: torch.Tensor) -> torch.Tensor:
    if policy == "confidence":
        return probs.max(dim=1).values >= threshold
    if policy == "entropy":
        num_classes = probs.shape[1]
        if num_classes == 1:
            return torch.zeros(probs.shape[0], dtype=torch.float64, device=probs.device) <= threshold
        entropy = -torch.xlogy(probs, probs).sum(dim=1) / math.log(num_classes)
        return entropy.clamp(0.0, 1.0) <= threshold
    return run >= threshold


@torch.no_grad()
def early_exit_forward(
    model: MultiExitNet,
    x: torch.Tensor,
    policy: str,
    threshold: float | int,
    fallback: str = "final",
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(predictions [B], exit_index [B])`` (int64, on ``x``'s device) of early-exit inference on batch ``x``.

    The model is run in eval mode (its previous mode is restored). ``exit_index`` is E-1 for samples no IC stopped;
    their answer is the final head's (``fallback="final"``) or the most confident of all outputs
    (``"most-confident"``, ties to the earliest).
    """
    threshold = check_threshold(policy, threshold)
    check_fallback(fallback)
    was_training = model.training
    model.eval()
    try:
        return _early_exit(model, x, policy, threshold, fallback)
    finally:
        model.train(was_training)


def _early_exit(
    model: MultiExitNet, x: torch.Tensor, policy: str, threshold: float | int, fallback: str
) -> tuple[torch.Tensor, torch.Tensor]:
    if x.shape[0] == 1:
        return _early_exit_one(model, x, policy, threshold, fallback)
    return _early_exit_batch(model, x, policy, threshold, fallback)


def _exit_probs(model: MultiExitNet, ic: int | None, h: torch.Tensor) -> torch.Tensor:
    """float64 softmax of exit ``ic`` (None: the final head) on features ``h``, as the offline simulation has it."""
    logits = model.head(h) if ic is None else model.exits[ic](h)
    return torch.softmax(logits.double(), dim=1)


def _early_exit_one(
    model: MultiExitNet, x: torch.Tensor, policy: str, threshold: float | int, fallback: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """One sample: the decision state is a few Python scalars, so every exit costs its head, a softmax, an argmax
    and one read of the answer (no masks, no index bookkeeping: at batch 1 those small ops cost as much as
    the cheap layers of a MobileNet)."""
    final = model.num_exits - 1
    exit_at = dict(zip(model.exit_positions, range(final), strict=True))
    best_conf, best_pred, last_pred, run = -1.0, 0, -1, 0
    answer: tuple[int, int] | None = None
    h = model.stem(x)
    for block_index, block in enumerate(model.blocks):
        h = block(h)
        ic = exit_at.get(block_index)
        if ic is None:
            continue
        probs = _exit_probs(model, ic, h)
        pred = int(probs.argmax(dim=1))  # the first index on ties, like numpy
        conf = float(probs[0, pred])
        run = run + 1 if pred == last_pred else 1
        last_pred = pred
        if conf > best_conf:
            best_conf, best_pred = conf, pred
        if policy == "confidence":
            fired = conf >= threshold
        elif policy == "patience":
            fired = run >= threshold
        else:
            fired = bool(_fires(probs, policy, threshold, torch.tensor([run], device=h.device)))
        if fired:
            answer = (pred, ic)
            break
    if answer is None:
        probs = _exit_probs(model, None, h)
        pred = int(probs.argmax(dim=1))
        if fallback == "most-confident" and not float(probs[0, pred]) > best_conf:
            pred = best_pred
        answer = (pred, final)
    as_tensor = torch.tensor([answer], dtype=torch.int64).to(x.device)
    return as_tensor[:, 0], as_tensor[:, 1]


def _early_exit_batch(
    model: MultiExitNet, x: torch.Tensor, policy: str, threshold: float | int, fallback: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Several samples: the rows that exit are dropped from the batch (one ``index_select`` of those left, and
    none where no row exits), and only the state the policy and fallback read is carried along."""
    batch, device = x.shape[0], x.device
    final = model.num_exits - 1
    track_best = fallback == "most-confident"
    track_run = policy == "patience"
    predictions = torch.empty(batch, dtype=torch.int64, device=device)
    exit_index = torch.empty(batch, dtype=torch.int64, device=device)
    active = torch.arange(batch, device=device)  # original row of every row still in the batch
    best_conf = torch.full((batch,), -1.0, dtype=torch.float64, device=device)  # most-confident fallback state
    best_pred = torch.zeros(batch, dtype=torch.int64, device=device)
    last_pred = torch.full((batch,), -1, dtype=torch.int64, device=device)  # patience state
    run = torch.zeros(batch, dtype=torch.int64, device=device)
    exit_at = dict(zip(model.exit_positions, range(final), strict=True))
    remaining = batch

    h = model.stem(x)
    for block_index, block in enumerate(model.blocks):
        h = block(h)
        ic = exit_at.get(block_index)
        if ic is None:
            continue
        probs = _exit_probs(model, ic, h)
        conf, pred = probs.max(dim=1).values, probs.argmax(dim=1)  # argmax: first index on ties, like numpy
        if track_run:
            run = torch.where(pred == last_pred, run + 1, torch.ones_like(run))
            last_pred = pred
        if track_best:
            better = conf > best_conf
            best_conf = torch.where(better, conf, best_conf)
            best_pred = torch.where(better, pred, best_pred)
        fired = _fires(probs, policy, threshold, run)
        keep = (~fired).nonzero().squeeze(1)
        left = int(keep.numel())
        if left == remaining:  # nobody exits here: no bookkeeping, no copy
            continue
        done = fired.nonzero().squeeze(1)
        predictions[active[done]] = pred[done]
        exit_index[active[done]] = ic
        remaining = left
        if remaining == 0:
            break
        h, active = h.index_select(0, keep), active[keep]
        if track_best:
            best_conf, best_pred = best_conf[keep], best_pred[keep]
        if track_run:
            last_pred, run = last_pred[keep], run[keep]
    if remaining > 0:
        probs = _exit_probs(model, None, h)
        conf, pred = probs.max(dim=1).values, probs.argmax(dim=1)
        if track_best:
            pred = torch.where(conf > best_conf, pred, best_pred)
        predictions[active] = pred
        exit_index[active] = final
    return predictions, exit_index


@torch.no_grad()
def deploy_copy(model: MultiExitNet, *, channels_last: bool = False) -> MultiExitNet:
    """An inference-only copy of ``model`` (eval mode) that computes the same function with fewer memory passes:
    every BatchNorm2d that directly follows a Conv2d in an ``nn.Sequential`` is folded into the conv's weights,
    a ReLU right after such a conv runs in place, each exit's mixed pooling is one ``lerp`` with its trained
    weight as a constant (skipped where its kernel is 1: :func:`sdn.models.exits.inference_pool`), and
    (``channels_last``) weights are stored NHWC, which the CPU's oneDNN convolutions read without reordering (feed
    it NHWC inputs too).

    Eager PyTorch pays for every elementwise pass over a feature map, and a network's first blocks, with the
    largest maps, spend far more of the wall time than of the operations the cost model counts; folding shrinks
    that gap. The logits agree with the original's to float rounding (about 1e-6 relative), so a decision exactly
    at the threshold may in rare cases fall the other way.
    """
    copy_ = copy.deepcopy(model).eval()
    _fold(copy_)
    for head in copy_.exits:
        pool = getattr(head, "pool", None)
        if isinstance(pool, MixedPool):
            pool = inference_pool(pool)
            head.pool = _FixedMix(pool) if isinstance(pool, MixedPool) else pool
    if channels_last:
        copy_.to(memory_format=torch.channels_last)
    return copy_


class _FixedMix(nn.Module):
    """A trained :class:`MixedPool` at inference: its mix weight a constant, ``a*max + (1-a)*avg`` as one lerp
    (three kernels where the training module launches seven)."""

    def __init__(self, pool: MixedPool) -> None:
        super().__init__()
        self.max_pool, self.avg_pool = pool.max_pool, pool.avg_pool
        self.register_buffer("alpha", pool.alpha.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.lerp(self.avg_pool(x), self.max_pool(x), self.alpha)


def _fold(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.Sequential):
            layers: list[nn.Module] = []
            for layer in child:
                previous = layers[-1] if layers else None
                if isinstance(layer, nn.BatchNorm2d) and isinstance(previous, nn.Conv2d):
                    layers[-1] = fuse_conv_bn_eval(previous, layer)
                    continue
                if isinstance(layer, nn.ReLU) and isinstance(previous, nn.Conv2d):
                    layer = nn.ReLU(inplace=True)  # its input is the conv's fresh output, read by nobody else
                _fold(layer)
                layers.append(layer)
            setattr(module, name, nn.Sequential(*layers))
        else:
            _fold(child)


@torch.no_grad()
def backbone_forward(model: MultiExitNet, x: torch.Tensor) -> torch.Tensor:
    """The plain CNN's logits: stem, blocks and head, with no internal classifier evaluated."""
    h = model.stem(x)
    for block in model.blocks:
        h = block(h)
    return model.head(h)


def _time_batches(
    run_batch: Callable[[torch.Tensor], Any], batches: list[torch.Tensor], device: torch.device
) -> list[float]:
    """Seconds per batch; CUDA events on a GPU (after a synchronize), perf_counter elsewhere."""
    times = []
    for batch in batches:
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(device)
            start.record()
            run_batch(batch)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000.0)
        else:
            t0 = time.perf_counter()
            run_batch(batch)
            times.append(time.perf_counter() - t0)
    return times


@torch.no_grad()
def time_inference(
    model: MultiExitNet,
    images: torch.Tensor,
    batch_size: int,
    policy: str,
    threshold: float | int,
    device: str | torch.device = "cpu",
    repeats: int = 3,
    *,
    fallback: str = "final",
    warmup_batches: int = 3,
) -> dict[str, Any]:
    """Median latency per batch and throughput of the CNN (backbone only), the full SDN forward (all exits) and
    the early-exit forward over ``images`` (normalised float [N, C, H, W]) split into batches of ``batch_size``.

    ``images`` and ``model`` are moved to ``device`` (the model stays there, in eval mode during timing); every
    variant is warmed up on ``warmup_batches`` batches and then timed over all batches ``repeats`` times.
    Returns ``{"batch_size", "device", "num_images", "repeats", "policy", "threshold", "fallback",
    "cnn"|"sdn_full"|"early_exit": {"median_latency_ms", "throughput_per_s"}, "speedup_vs_cnn"}``.
    """
    threshold = check_threshold(policy, threshold)
    check_fallback(fallback)
    if batch_size < 1 or repeats < 1 or warmup_batches < 0:
        raise ValueError(
            f"batch_size and repeats must be >= 1 and warmup_batches >= 0, got {batch_size}, {repeats}, "
            f"{warmup_batches}"
        )
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"images must be a non-empty [N, C, H, W] tensor, got shape {tuple(images.shape)}")
    device = torch.device(device)
    was_training = model.training
    model.to(device).eval()
    batches = list(images.to(device).split(batch_size))
    variants: dict[str, Callable[[torch.Tensor], Any]] = {
        "cnn": lambda b: backbone_forward(model, b),
        "sdn_full": lambda b: model(b),
        "early_exit": lambda b: _early_exit(model, b, policy, threshold, fallback),
    }
    result: dict[str, Any] = {
        "batch_size": batch_size,
        "device": str(device),
        "num_images": int(images.shape[0]),
        "repeats": repeats,
        "policy": policy,
        "threshold": threshold,
        "fallback": fallback,
    }
    try:
        for name, run_batch in variants.items():
            warm = [batches[i % len(batches)] for i in range(warmup_batches)]
            _time_batches(run_batch, warm, device)
            times = [t for _ in range(repeats) for t in _time_batches(run_batch, batches, device)]
            total = sum(times)
            result[name] = {
                "median_latency_ms": 1000.0 * statistics.median(times),
                "throughput_per_s": repeats * int(images.shape[0]) / total if total > 0 else float("inf"),
            }
    finally:
        model.train(was_training)
    result["speedup_vs_cnn"] = result["early_exit"]["throughput_per_s"] / result["cnn"]["throughput_per_s"]
    return result
