"""The three training recipes (cnn, ic_only, sdn), the training loop, and resume after interruption.

The pieces an engine needs are separate functions (:func:`build_model`, :func:`build_optimizer`,
:func:`build_scheduler`, :func:`loss_fn`, :func:`train_one_epoch`) so a second data engine can reuse them; only the
batches differ. :func:`train` ties them together with per-epoch holdout evaluation and checkpointing (the files
themselves are :mod:`sdn.checkpoint`'s).
"""

from __future__ import annotations

import logging
import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from sdn import checkpoint
from sdn.config import Recipe, coefficients_for, ic_loss_weights
from sdn.graphs import clip_gradients
from sdn.inference import collect_logits
from sdn.models import MultiExitNet, create
from sdn.models.registry import DEFAULT_IC_INPUT
from sdn.outputs import topk_accuracy
from sdn.progress import write_progress

log = logging.getLogger(__name__)

EpochHook = Callable[[int, dict[str, float]], None]
Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]
ENGINES = ("fast", "reference")
HOLDOUT_BATCH = 512
# Settings a resumed run must share with the run that wrote last.pt.
RESUME_KEYS = (
    "arch",
    "dataset",
    "recipe",
    "seed",
    "exit_positions",
    "max_train_samples",
    "parent",
    "weights",
    "ic_input",
    "alpha_mode",
    "ic_head",
)
RESUME_DEFAULTS = {
    "ic_input": DEFAULT_IC_INPUT,
    "alpha_mode": "bounded",
    "weights": None,
    "ic_head": "paper",
}  # what a last.pt without the key used


# A training loss above this has diverged: cross-entropy at chance is ln(classes) per output (about 4.6 for 100
# classes), so even a loss summed over many exits stays far below. It is checked, like a non-finite loss, at the end
# of each epoch, so a diverged run stops instead of training on at chance accuracy (WRN-32-4 SDN training with
# large IC loss weights at lr 0.1 reaches 1e6 within four steps).
DIVERGED_LOSS = 1e5
# `sdn train` exits with this status when training diverged (TrainingDiverged), so that a scheduler (the reproduction
# grid runner) can tell a diverged run, worth retrying with other options, from any other failure (status 2)
EXIT_DIVERGED = 3
# max_train_samples takes a stratified subset, the same for every training seed (seed 0 of this stream), not the
# first images: prepared ImageFolder data is sorted by class, so the first 2,000 CIFAR-10 images are all airplanes
TRAIN_SUBSET_STREAM = 3


class TrainingDiverged(RuntimeError):
    """A training loss was not finite or above :data:`DIVERGED_LOSS`; the last good checkpoint is unchanged."""

    exit_status = EXIT_DIVERGED  # what `sdn train` exits with (sdn.cli)


@dataclass(frozen=True)
class EngineOptions:
    """How the steps run: on which device, memory format, bf16 autocast, torch.compile."""

    device: torch.device
    channels_last: bool
    amp: bool
    compile: bool = False
    cuda_graph: bool = False


@dataclass
class EpochResult:
    loss: float
    steps: int
    images: int
    seconds: float


# ---------------------------------------------------------------- model, optimizer, loss


def training_subset(split: Any, size: int) -> Any:
    """A stratified subset of ``size`` images of the training split (a TensorSplit), the same for every training
    seed; the whole split when it is not larger."""
    from sdn.data import TensorSplit
    from sdn.data.splits import subsample

    chosen = subsample(split.labels, size, seed=0, stream=TRAIN_SUBSET_STREAM)
    return TensorSplit(split.images[chosen], split.labels[chosen])


def build_model(
    arch: str,
    recipe: Recipe,
    *,
    num_classes: int,
    input_size: int,
    exits: str | Sequence[int] = "paper",
    ic_input: str = DEFAULT_IC_INPUT,
    alpha_mode: str = "bounded",
    weights: str | None = None,
    ic_head: str = "paper",
) -> MultiExitNet:
    """The network for ``recipe``: the plain CNN for ``cnn``, the backbone with exits otherwise; ``weights``
    (torchvision/timm networks) are loaded into the backbone."""
    if recipe.kind == "cnn":
        exits = "none"
    model = create(
        arch,
        num_classes=num_classes,
        input_size=input_size,
        exits=exits,
        ic_input=ic_input,
        alpha_mode=alpha_mode,
        weights=weights,
        ic_head=ic_head,
    )
    if recipe.kind != "cnn" and model.num_exits < 2:
        raise ValueError(f"recipe {recipe.kind!r} needs internal classifiers, but exits={exits!r} gives none")
    return model


def load_parent(
    model: MultiExitNet,
    parent: str | os.PathLike[str],
    arch: str,
    data: Any = None,
    force_data_mismatch: bool = False,
) -> dict[str, Any]:
    """Load a trained CNN checkpoint's backbone into ``model`` (IC-only training); return the parent's meta.

    With ``data`` (the PreparedData being trained on), a parent trained with other held-out/test splits is refused
    unless ``force_data_mismatch``.
    """
    from sdn.data.prepare import data_mismatch

    path = Path(parent)
    if not path.is_file():
        raise FileNotFoundError(f"parent checkpoint {path} does not exist (ic_only needs a trained cnn model.pt)")
    state_dict, meta = checkpoint.read(path)
    if meta.get("arch") not in (None, arch):
        raise ValueError(f"parent checkpoint {path} is a {meta.get('arch')!r}, not a {arch!r}")
    mismatch = data_mismatch(meta.get("data"), data.identity()) if data is not None else None
    if mismatch and not force_data_mismatch:
        raise ValueError(
            f"parent checkpoint {path} was trained on other data than {data.path} ({mismatch}; parent first, data "
            "second): train on the parent's data, retrain the parent, or pass --force-data-mismatch"
        )
    if mismatch:
        log.warning("parent %s was trained on other data than %s: %s (forced)", path, data.path, mismatch)
    model.load_backbone_state(state_dict)
    return meta


def freeze_backbone(model: MultiExitNet) -> None:
    for p in model.backbone_parameters():
        p.requires_grad_(False)


def trainable_parameters(model: MultiExitNet, recipe: Recipe) -> list[nn.Parameter]:
    """Exit parameters only for ``ic_only``; every parameter otherwise."""
    return model.exit_parameters() if recipe.kind == "ic_only" else list(model.parameters())


def build_optimizer(params: list[nn.Parameter], recipe: Recipe, device: torch.device) -> torch.optim.Optimizer:
    """SGD (momentum, coupled weight decay) or Adam (coupled L2 weight decay, as the original); fused on CUDA."""
    fast = {"fused": True} if device.type == "cuda" else {"foreach": True}
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay, **fast
        )
    # capturable keeps Adam's step counters on the device, so the step can be replayed as a CUDA graph
    capturable = {"capturable": True} if device.type == "cuda" else {}
    return torch.optim.Adam(params, lr=recipe.lr, weight_decay=recipe.weight_decay, **fast, **capturable)


def build_scheduler(optimizer: torch.optim.Optimizer, recipe: Recipe) -> torch.optim.lr_scheduler.MultiStepLR:
    """Stepped once after each epoch: 1-based milestone ``m`` means the reduced rate applies from epoch ``m``."""
    return torch.optim.lr_scheduler.MultiStepLR(
        optimizer, milestones=[m - 1 for m in recipe.milestones], gamma=recipe.gamma
    )


def exit_weights(recipe: Recipe, epoch: int, num_exits: int) -> list[float]:
    """Loss weight of every output (final last) at 1-based ``epoch``.

    cnn: [1]; ic_only: 1 for each IC and 0 for the final head; sdn: tau_i(epoch) for the ICs and 1 for the final.
    """
    if recipe.kind == "cnn":
        return [1.0] * num_exits
    num_ics = num_exits - 1
    if recipe.kind == "ic_only":
        return [1.0] * num_ics + [0.0]
    coeffs = coefficients_for(num_ics, recipe.ic_max_coeffs)
    return [*ic_loss_weights(epoch, recipe.epochs, coeffs), 1.0]


def loss_fn(outputs: Sequence[torch.Tensor], labels: torch.Tensor, weights: Sequence[float]) -> torch.Tensor:
    """Weighted sum of each output's cross-entropy (computed in fp32); zero-weight outputs are skipped."""
    if len(outputs) != len(weights):
        raise ValueError(f"{len(outputs)} outputs but {len(weights)} loss weights")
    terms = [w * F.cross_entropy(o.float(), labels) for o, w in zip(outputs, weights, strict=True) if w != 0.0]
    return torch.stack(terms).sum()


def set_train_mode(model: MultiExitNet, recipe: Recipe) -> None:
    """Train mode; for ``ic_only`` with ``backbone_mode="eval"`` the frozen backbone stays in eval mode."""
    model.train()
    if recipe.kind == "ic_only" and recipe.backbone_mode == "eval":
        for module in model.backbone_modules():
            module.eval()


def train_one_epoch(
    model: nn.Module,
    batches: Batches,
    optimizer: torch.optim.Optimizer,
    weights: Sequence[float],
    *,
    options: EngineOptions,
    epoch: int,
    progress: bool = False,
    step_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    clip_grad_norm: float | None = None,
) -> EpochResult:
    """One pass over ``batches``; raises :class:`TrainingDiverged` naming epoch and step if a loss is not finite or
    above :data:`DIVERGED_LOSS`.

    Finiteness is tracked on the device and checked once at the end of the epoch (no per-step synchronisation);
    the caller must not checkpoint a failed epoch. ``step_fn(x, y) -> loss`` replaces the eager step (e.g. a
    :class:`sdn.graphs.GraphedTrainStep`); it must apply the same ``weights`` and ``clip_grad_norm`` (the largest
    global gradient norm, None: no clipping).
    """
    device = options.device
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16) if options.amp else None
    total = torch.zeros((), dtype=torch.float64, device=device)
    first_bad = torch.full((), -1, dtype=torch.int64, device=device)
    images = steps = 0
    start = time.perf_counter()
    for step, (x, y) in enumerate(tqdm(batches, desc=f"epoch {epoch}", leave=False, disable=not progress), 1):
        if step_fn is not None:
            detached = step_fn(x, y)
        else:
            if options.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast or nullcontext():
                outputs = model(x)
            loss = loss_fn(outputs, y, weights)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            clip_gradients(optimizer, clip_grad_norm)
            optimizer.step()
            detached = loss.detach()
        bad = ~torch.isfinite(detached) | (detached > DIVERGED_LOSS)
        first_bad = torch.where(bad & (first_bad < 0), torch.full_like(first_bad, step), first_bad)
        total += detached.double() * y.shape[0]
        images += int(y.shape[0])
        steps = step
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    bad_step = int(first_bad.item())
    if bad_step >= 0:
        raise TrainingDiverged(
            f"non-finite or diverged loss (above {DIVERGED_LOSS:g}) at epoch {epoch} step {bad_step} (of {steps}); "
            "training stopped, the last good checkpoint (last.pt from the previous epoch, if any) is unchanged. "
            "Try a lower --lr, or --clip-grad-norm 1 (not in the paper; recorded in the recipe): with short "
            "schedules the internal classifiers' loss weights grow fast, and deep networks whose ICs read large "
            "features then diverge (SDN training on digits at batch 32: vgg16bn and wrn32_4 diverge at lr 0.05; "
            "vgg16bn trains at 0.01; wrn32_4 stays unstable even at 0.005, but its CNN trains at 0.05 and "
            "--recipe ic_only converts it)"
        )
    return EpochResult(loss=float(total.item()) / max(images, 1), steps=steps, images=images, seconds=seconds)


# ---------------------------------------------------------------- reproducibility


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int) -> int:
    """Seed of epoch ``epoch``'s shuffling and augmentation: a pure function, so resuming needs no loader state."""
    return (seed * 1_000_003 + epoch) % 2**63


# ---------------------------------------------------------------- the training run


def resolve_engine(
    engine: str,
    device: torch.device,
    channels_last: bool | None,
    amp: bool | None,
    compile_model: bool,
    cuda_graph: bool | None = None,
) -> EngineOptions:
    """Defaults: the fast engine uses channels_last (CPU and CUDA), and on CUDA bf16 autocast and the training step
    replayed as a CUDA graph (not together with torch.compile); the reference engine uses none of them. bf16 autocast
    on the CPU is opt-in (``amp=True``): on a CPU with bf16 instructions (AVX512-BF16, AMX) it trains ResNet-56
    1.5-1.7x faster, MobileNet about 1.1x (``sdn bench --device cpu --amp``); its accuracy cost is measured in
    docs/cpu-bf16.md."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {list(ENGINES)}, got {engine!r}")
    fast = engine == "fast"
    if fast and device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return EngineOptions(
        device=device,
        channels_last=fast if channels_last is None else channels_last,
        amp=(fast and device.type == "cuda") if amp is None else amp,
        compile=compile_model,
        cuda_graph=(fast and device.type == "cuda" and not compile_model) if cuda_graph is None else cuda_graph,
    )


def epoch_batches(
    engine: str, split: Any, info: Any, *, batch_size: int, seed: int, device: torch.device
) -> Callable[[int], Batches]:
    """A function giving epoch ``e``'s augmented, shuffled training batches; a pure function of (seed, e).

    Because the batches depend only on the seed and the epoch, resuming needs no loader state.
    """
    if engine == "reference":
        from sdn.reference import reference_loader

        def reference_epoch(epoch: int) -> Batches:
            loader = reference_loader(
                split, info, batch_size=batch_size, augment=True, shuffle=True, seed=epoch_seed(seed, epoch)
            )
            return ((x.to(device, non_blocking=True), y.to(device, non_blocking=True)) for x, y in loader)

        return reference_epoch
    from sdn.data import DeviceLoader

    loader = DeviceLoader(split, info, batch_size=batch_size, shuffle=True, augment=True, device=device, seed=seed)

    def fast_epoch(epoch: int) -> Batches:
        loader.set_epoch(epoch)
        return loader

    return fast_epoch


def holdout_loader(split: Any, info: Any, device: torch.device) -> Batches | None:
    """Plain (unaugmented, unshuffled) batches of the holdout split; None when there is no holdout."""
    from sdn.data import DeviceLoader

    if split is None or len(split.labels) == 0:
        return None
    return DeviceLoader(split, info, batch_size=HOLDOUT_BATCH, shuffle=False, augment=False, device=device, seed=0)


def holdout_accuracy(model: nn.Module, batches: Batches | None, options: EngineOptions) -> list[float | None]:
    """Top-1 of every exit in percent, in eval mode; [] without holdout batches."""
    if batches is None:
        return []
    with torch.autocast(device_type=options.device.type, dtype=torch.bfloat16) if options.amp else nullcontext():
        logits, labels = collect_logits(model, batches, channels_last=options.channels_last, desc="holdout")
    return topk_accuracy(logits, labels, 1)


def train(
    *,
    arch: str,
    recipe: Recipe,
    data_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    seed: int,
    device: str | torch.device = "auto",
    parent: str | os.PathLike[str] | None = None,
    exits: str | Sequence[int] = "paper",
    engine: str = "fast",
    max_train_samples: int | None = None,
    on_epoch: EpochHook | None = None,
    channels_last: bool | None = None,
    amp: bool | None = None,
    compile_model: bool = False,
    allow_cpu_fallback: bool = False,
    cuda_graph: bool | None = None,
    ic_input: str = DEFAULT_IC_INPUT,
    alpha_mode: str = "bounded",
    force_data_mismatch: bool = False,
    weights: str | None = None,
    ic_head: str = "paper",
) -> Path:
    """Train ``arch`` with ``recipe`` on the prepared data in ``data_dir``; return ``out_dir/model.pt``.

    ``weights`` (torchvision/timm networks): pretrained backbone weights, a local state-dict file or a hub name;
    with ``ic_only`` they replace ``parent`` (the paper's off-the-shelf conversion: the backbone stays frozen).

    Writes ``out_dir/last.pt`` and ``out_dir/progress.json`` (:mod:`sdn.progress`) after every epoch and resumes
    from ``last.pt`` when present (same arch/recipe/seed/..., else ValueError). At the end writes ``model.pt``,
    ``meta.json`` and ``history.csv`` and removes ``last.pt`` (``progress.json`` stays).
    ``on_epoch(epoch, metrics)`` is called after each epoch's checkpoint.
    """
    from sdn.data import load_prepared
    from sdn.device import resolve_device

    if recipe.kind == "ic_only" and parent is None and weights is None:
        raise ValueError(
            "recipe 'ic_only' needs --parent (the trained cnn model.pt whose backbone it freezes) or, for a "
            "torchvision/timm network, --weights (pretrained backbone weights)"
        )
    if parent is not None and weights is not None:
        raise ValueError("give --parent or --weights, not both (the parent's backbone would replace the weights)")
    if recipe.kind != "ic_only" and parent is not None:
        raise ValueError(f"--parent is only used by the ic_only recipe, not {recipe.kind!r}")
    if max_train_samples is not None and max_train_samples < 1:
        raise ValueError(f"max_train_samples must be a positive integer, got {max_train_samples}")
    target = device if isinstance(device, torch.device) else resolve_device(device, allow_cpu_fallback)
    options = resolve_engine(engine, target, channels_last, amp, compile_model, cuda_graph)
    if options.cuda_graph and target.type != "cuda":
        raise ValueError(f"cuda_graph needs a CUDA device, but training runs on {target}")
    out = Path(out_dir)

    data = load_prepared(data_dir)
    info = data.info
    train_split = data.split("train")
    if max_train_samples is not None:
        train_split = training_subset(train_split, max_train_samples)
    holdout = data.split("holdout") if data.has_split("holdout") else None
    holdout_batches = holdout_loader(holdout, info, target)
    batches_for = epoch_batches(engine, train_split, info, batch_size=recipe.batch_size, seed=seed, device=target)

    code_commit = checkpoint.git_commit()  # the code this call runs: HEAD may move while it trains for hours
    seed_everything(seed)
    model = build_model(
        arch,
        recipe,
        num_classes=info.num_classes,
        input_size=info.input_size,
        exits=exits,
        ic_input=ic_input,
        alpha_mode=alpha_mode,
        weights=weights,
        ic_head=ic_head,
    )
    if parent is not None:
        load_parent(model, parent, arch, data, force_data_mismatch)
    if recipe.kind == "ic_only":
        freeze_backbone(model)
    model.to(target)
    if options.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(trainable_parameters(model, recipe), recipe, target)
    scheduler = build_scheduler(optimizer, recipe)
    identity = {
        "arch": arch,
        "dataset": info.name,
        "recipe": recipe.to_dict(),
        "seed": seed,
        "exit_positions": list(model.exit_positions),
        "max_train_samples": max_train_samples,
        "parent": str(parent) if parent is not None else None,
        "weights": weights,
        "ic_input": ic_input,
        "alpha_mode": alpha_mode,
        "ic_head": ic_head,
        "data": data.identity(),
    }
    history: list[dict[str, float]] = []
    start_epoch = 1
    state = checkpoint.load_resume_state(out, target)
    last_path = out / checkpoint.LAST
    if state is not None and not _same_data(state["identity"], identity, last_path):
        state = None  # trained on other data: start fresh (last.pt is replaced after the first epoch)
    if state is not None:
        _check_resume(state["identity"], identity, last_path)
        model.load_state_dict(state["model"], strict=True)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history = list(state["history"])
        start_epoch = int(state["epoch"]) + 1
        checkpoint.set_rng_state(state["rng"])
        log.info("resuming %s from %s after epoch %d", recipe.kind, last_path, state["epoch"])
    step_model: nn.Module = torch.compile(model) if options.compile else model
    graph_step = _graph_step(model, optimizer, recipe, options) if options.cuda_graph else None

    progress = sys.stderr.isatty()
    epochs = tqdm(range(start_epoch, recipe.epochs + 1), desc=f"train {recipe.kind}", disable=not progress)
    epoch_wall_s: list[float] = []
    for epoch in epochs:
        epoch_started = time.monotonic()
        lr = optimizer.param_groups[0]["lr"]
        weights = exit_weights(recipe, epoch, model.num_exits)
        set_train_mode(model, recipe)
        if graph_step is not None:
            graph_step.set_weights(weights)
        result = train_one_epoch(
            step_model,
            batches_for(epoch),
            optimizer,
            weights,
            options=options,
            epoch=epoch,
            progress=progress,
            step_fn=graph_step,
            clip_grad_norm=recipe.clip_grad_norm,
        )
        scheduler.step()
        accuracy = holdout_accuracy(model, holdout_batches, options)
        row: dict[str, float] = {
            "epoch": epoch,
            "lr": lr,
            "loss": result.loss,
            "seconds": result.seconds,
            "images_per_s": result.images / result.seconds if result.seconds > 0 else math.nan,
        }
        row.update({f"holdout_top1_exit{i}": a for i, a in enumerate(accuracy) if a is not None})
        history.append(row)
        checkpoint.save_resume_state(
            out,
            {
                "identity": identity,
                "epoch": epoch,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": checkpoint.get_rng_state(),
                "history": history,
            },
        )
        epoch_wall_s.append(time.monotonic() - epoch_started)
        write_progress(out, epoch, recipe.epochs, epoch_wall_s)
        _report_epoch(row, accuracy, recipe.epochs, epochs if progress else None)
        if on_epoch is not None:
            on_epoch(epoch, dict(row))

    meta = {
        **identity,
        "variant": recipe.kind,
        "num_classes": info.num_classes,
        "input_size": info.input_size,
        "preprocess": {
            "mean": list(info.mean),
            "std": list(info.std),
            "classes": list(info.classes),
            "resize": data.meta.get("request", {}).get("image_size") is not None,  # imagefolder --image-size
        },
        "exits_spec": exits if isinstance(exits, str) else list(exits),
        "alpha_mode": _alpha_mode(model),
        "cost": checkpoint.cost_record(model, info.input_size),
        "holdout_accuracy": [r for k, r in history[-1].items() if k.startswith("holdout_top1_exit")]
        if history
        else [],
        "epochs": recipe.epochs,
        "train_size": int(len(train_split.labels)),
        "git_commit": code_commit,
        "engine": engine,
        "device": str(target),
        "channels_last": options.channels_last,
        "amp": options.amp,
        "cuda_graph": options.cuda_graph,
        "torch": str(torch.__version__),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    return checkpoint.save(out, model, meta, history)


def _graph_step(model: MultiExitNet, optimizer: torch.optim.Optimizer, recipe: Recipe, options: EngineOptions) -> Any:
    from sdn.graphs import GraphedTrainStep

    active = [w != 0.0 for w in exit_weights(recipe, 1, model.num_exits)]
    return GraphedTrainStep(
        model,
        optimizer,
        num_outputs=model.num_exits,
        active=active,
        amp=options.amp,
        channels_last=options.channels_last,
        clip_grad_norm=recipe.clip_grad_norm,
    )


def _same_data(saved: dict[str, Any], current: dict[str, Any], path: Path) -> bool:
    """Whether ``path`` (last.pt) was trained on the same prepared splits; if not, say so (the run starts fresh)."""
    before, now = saved.get("data"), current["data"]
    if before == now:
        return True
    changed = sorted(
        s
        for s in {*(before or {}).get("sha256", {}), *now["sha256"]}
        if (before or {}).get("sha256", {}).get(s) != now["sha256"].get(s)
    )
    log.warning(
        "not resuming from %s: it was trained on other data (%s; changed split files: %s); starting fresh",
        path,
        "no data identity recorded" if before is None else f"dataset {before.get('dataset')!r}",
        ", ".join(changed) or "none",
    )
    return False


def _check_resume(saved: dict[str, Any], current: dict[str, Any], path: Path) -> None:
    for key in RESUME_KEYS:
        before = saved.get(key, RESUME_DEFAULTS.get(key))
        if key == "recipe" and isinstance(before, dict):  # keys added since (clip_grad_norm) take their defaults
            before = Recipe.from_dict(before).to_dict()
        if before != current.get(key):
            raise ValueError(
                f"{path} was written by a run with {key}={before!r}, but this run has "
                f"{key}={current.get(key)!r}; rerun with the same settings to resume, or delete {path} to start over"
            )


def _alpha_mode(model: MultiExitNet) -> str:
    for module in model.modules():
        mode = getattr(module, "alpha_mode", None)
        if isinstance(mode, str):
            return mode
    return "bounded"


def exit_accuracy_text(accuracy: list[float | None]) -> str:
    """``IC1 41.2 IC2 55.0 final 80.3`` (``-`` for an exit not trained); ``n/a`` without holdout."""
    if not accuracy:
        return "n/a"
    names = [f"IC{i + 1}" for i in range(len(accuracy) - 1)] + ["final"]
    return " ".join(f"{name} {'-' if a is None else f'{a:.1f}'}" for name, a in zip(names, accuracy, strict=True))


def _report_epoch(row: dict[str, float], accuracy: list[float | None], epochs: int, bar: Any) -> None:
    acc = " ".join("-" if a is None else f"{a:.1f}" for a in accuracy) or "n/a"
    if bar is not None:
        bar.set_postfix_str(f"loss {row['loss']:.4f} lr {row['lr']:.2g} holdout top-1 {exit_accuracy_text(accuracy)}")
        return
    log.info(
        "epoch %d/%d loss %.4f lr %.3g holdout top-1 per exit [%s] %.0f img/s",
        row["epoch"],
        epochs,
        row["loss"],
        row["lr"],
        acc,
        row["images_per_s"],
    )
