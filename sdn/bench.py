"""``sdn bench``: training and evaluation throughput of the reference engine against the fast engine.

Both engines run the same model, loss and optimizer in one process, one after the other:

- reference: the original's way — torchvision-style ``DataLoader`` over PIL images with the standard transforms in
  worker processes, eager fp32, and after every epoch an evaluation of the test set and of the whole training set;
- fast: the uint8 split resident on the device, augmentation there in batch, channels_last, bf16 autocast and the
  training step replayed as a CUDA graph on a GPU (bf16 on the CPU with ``--amp``); after every epoch only the
  held-out split is evaluated.

Images/s are medians over timed windows after a warm-up. An epoch's time is projected from the measured rates
with CIFAR-10's sizes, which is what the paper grid's projection uses. Optionally several fast-engine SDN-training
processes also run at once on the device (what the workflow does with more ``gpu`` slots than GPUs), and their
aggregate rate against one job's is the concurrency gain the projection credits.

Somewhat over 500 lines: the reference and fast measurements sit side by side on purpose, so that what differs
between the two engines is visible in one file.
"""

from __future__ import annotations

import itertools
import logging
import platform
import queue
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, replace
from typing import Any

import torch

from sdn.config import PAPER_EPOCHS, Recipe, paper_recipe
from sdn.data import DatasetInfo, DeviceLoader, TensorSplit
from sdn.device import cpu_model
from sdn.graphs import GraphedTrainStep
from sdn.models import MultiExitNet
from sdn.models.cost import profile_model
from sdn.reference import reference_loader
from sdn.train import (
    build_model,
    build_optimizer,
    exit_weights,
    freeze_backbone,
    loss_fn,
    set_train_mode,
    trainable_parameters,
)

log = logging.getLogger(__name__)

# CIFAR-10 with a 5,000-image held-out split (the fast engine's per-epoch evaluation), and the original's
# per-epoch evaluation of the 10,000 test images and the 50,000 training images.
EPOCH_SIZES = {"train": 45_000, "holdout": 5_000, "reference_eval": 60_000}


@dataclass(frozen=True)
class BenchSettings:
    device: torch.device
    batch_size: int = 128
    steps: int = 30
    warmup: int = 5
    windows: int = 3
    eval_batch: int = 512
    workers: int = 4
    input_size: int = 32
    num_classes: int = 10
    cpu_threads: int | None = None  # torch threads of each concurrent worker on a CPU (None: torch's default)
    amp: bool | None = None  # the fast engine's bf16 autocast; None: on CUDA only (as `sdn train`)

    @property
    def use_amp(self) -> bool:
        return self.device.type == "cuda" if self.amp is None else self.amp

    def autocast(self) -> Any:
        """The fast engine's autocast context (bf16 where :attr:`use_amp`), a no-op context otherwise."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.use_amp else nullcontext()


def synthetic_split(n: int, settings: BenchSettings, seed: int = 0) -> tuple[TensorSplit, DatasetInfo]:
    gen = torch.Generator().manual_seed(seed)
    size = settings.input_size
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, settings.num_classes, (n,), generator=gen)
    info = DatasetInfo(
        name="synthetic-bench",
        num_classes=settings.num_classes,
        input_size=size,
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        crop_padding=4 if size == 32 else 8,
        color_jitter=0.0,
        classes=tuple(str(i) for i in range(settings.num_classes)),
    )
    return TensorSplit(images, labels), info


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cycle(
    make: Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]],
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    while True:
        yield from make()


def timed_rate(
    step: Callable[[torch.Tensor, torch.Tensor], Any],
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
    settings: BenchSettings,
) -> float:
    """Median images/s over ``windows`` windows of ``steps`` full batches each, after ``warmup`` batches."""
    for x, y in itertools.islice(batches, settings.warmup):
        step(x, y)
    rates = []
    for _ in range(settings.windows):
        _sync(settings.device)
        start = time.perf_counter()
        images = 0
        for x, y in itertools.islice(batches, settings.steps):
            step(x, y)
            images += int(y.shape[0])
        _sync(settings.device)
        rates.append(images / (time.perf_counter() - start))
    return statistics.median(rates)


def _prepare_model(arch: str, recipe: Recipe, settings: BenchSettings, channels_last: bool) -> MultiExitNet:
    torch.manual_seed(0)
    model = build_model(arch, recipe, num_classes=settings.num_classes, input_size=settings.input_size)
    if recipe.kind == "ic_only":
        freeze_backbone(model)
    model.to(settings.device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def reference_train_rate(arch: str, recipe: Recipe, split: TensorSplit, info: DatasetInfo, s: BenchSettings) -> float:
    model = _prepare_model(arch, recipe, s, channels_last=False)
    params = trainable_parameters(model, recipe)
    optimizer = torch.optim.SGD(params, lr=1e-3, momentum=0.9)  # eager, per-parameter loops
    weights = exit_weights(recipe, 1, model.num_exits)
    set_train_mode(model, recipe)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        x, y = x.to(s.device, non_blocking=True), y.to(s.device, non_blocking=True)
        optimizer.zero_grad()
        loss = loss_fn(model(x), y, weights)
        loss.backward()
        optimizer.step()

    def epoch() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return iter(
            reference_loader(split, info, batch_size=s.batch_size, augment=True, shuffle=True, workers=s.workers)
        )

    return timed_rate(step, _cycle(epoch), s)


def fast_train_step(
    arch: str, recipe: Recipe, split: TensorSplit, info: DatasetInfo, s: BenchSettings, seed: int = 0
) -> tuple[
    Callable[[torch.Tensor, torch.Tensor], Any], Iterator[tuple[torch.Tensor, torch.Tensor]], Callable[[], bool]
]:
    """The fast engine's training step, an endless stream of its batches, and whether the CUDA graph is in use."""
    cuda = s.device.type == "cuda"
    model = _prepare_model(arch, recipe, s, channels_last=True)
    optimizer = build_optimizer(trainable_parameters(model, recipe), recipe, s.device)
    weights = exit_weights(recipe, 1, model.num_exits)
    set_train_mode(model, recipe)
    loader = DeviceLoader(
        split, info, batch_size=s.batch_size, shuffle=True, augment=True, device=s.device, seed=seed, drop_last=True
    )
    batches = _cycle(lambda: iter(loader))
    if cuda:
        try:
            graph_step = GraphedTrainStep(
                model,
                optimizer,
                num_outputs=model.num_exits,
                active=[w != 0 for w in weights],
                amp=s.use_amp,
                channels_last=True,
            )
            graph_step.set_weights(weights)
            return graph_step, batches, lambda: graph_step.graph is not None and not graph_step.failed
        except RuntimeError as err:  # capture unsupported here: measure the eager fast step instead
            log.warning("CUDA graph capture failed (%s); measuring the eager fast step", err)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        with s.autocast():
            outputs = model(x.contiguous(memory_format=torch.channels_last))
        loss_fn(outputs, y, weights).backward()
        optimizer.step()

    return step, batches, lambda: False


def fast_train_rate(
    arch: str, recipe: Recipe, split: TensorSplit, info: DatasetInfo, s: BenchSettings
) -> tuple[float, bool]:
    """Images/s of the fast engine, and whether the CUDA graph was used."""
    step, batches, graphed = fast_train_step(arch, recipe, split, info, s)
    rate = timed_rate(step, batches, s)
    return rate, graphed()


def _concurrent_worker(
    arch: str, kind: str, s: BenchSettings, seconds: float, seed: int, barrier: Any, results: Any
) -> None:
    """One of several processes training at once: warm up, wait for the others, count images for ``seconds``."""
    try:
        if s.cpu_threads:
            torch.set_num_threads(s.cpu_threads)
        split, info = synthetic_split(s.batch_size * (s.warmup + 2), s, seed=seed)
        step, batches, graphed = fast_train_step(arch, paper_recipe(kind, arch), split, info, s, seed=seed)
        for x, y in itertools.islice(batches, s.warmup):
            step(x, y)
        _sync(s.device)
        barrier.wait(timeout=600)
        start = time.perf_counter()
        images = 0
        while time.perf_counter() - start < seconds:
            x, y = next(batches)
            step(x, y)
            images += int(y.shape[0])
        _sync(s.device)
        results.put({"images": images, "seconds": time.perf_counter() - start, "cuda_graph": graphed()})
    except BaseException as err:  # report, then let the parent fail with the message
        barrier.abort()
        results.put({"error": f"{type(err).__name__}: {err}"})


def concurrent_train_rate(arch: str, kind: str, s: BenchSettings, jobs: int, seconds: float) -> dict[str, Any]:
    """Aggregate fast-engine images/s of ``jobs`` processes training ``arch`` at the same time on one device.

    This is what ``--resources gpu=N`` with more slots than GPUs does: independent jobs sharing a device. Each
    process warms up (and captures its graph), all start together, and each counts the images it trains in the
    same wall-clock window.
    """
    import multiprocessing as mp

    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    context = mp.get_context("spawn")
    barrier = context.Barrier(jobs)
    results = context.Queue()
    worker_settings = s
    if s.device.type == "cpu":  # the cores are shared among the jobs as the workflow shares them
        worker_settings = replace(s, cpu_threads=max(1, torch.get_num_threads() // jobs))
    processes = [
        context.Process(
            target=_concurrent_worker, args=(arch, kind, worker_settings, seconds, seed, barrier, results)
        )
        for seed in range(jobs)
    ]
    for p in processes:
        p.start()
    reports: list[dict[str, Any]] = []
    try:
        while len(reports) < jobs:
            try:
                reports.append(results.get(timeout=5))
            except queue.Empty:
                crashed = [p.exitcode for p in processes if p.exitcode not in (None, 0)]
                if crashed:  # died without a word (a segfault, the OOM killer)
                    raise RuntimeError(
                        f"concurrent benchmark of {arch} {kind}: a worker exited with code {crashed[0]}"
                    ) from None
    finally:
        for p in processes:
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()
    errors = [r["error"] for r in reports if "error" in r]
    if errors:
        raise RuntimeError(f"concurrent benchmark of {arch} {kind} failed: {errors[0]}")
    per_job = [r["images"] / r["seconds"] for r in reports]
    return {
        "jobs": jobs,
        "seconds": seconds,
        "per_job_images_per_s": per_job,
        "aggregate_images_per_s": sum(per_job),
        "cuda_graph": all(r["cuda_graph"] for r in reports),
    }


@torch.inference_mode()
def eval_rate(arch: str, split: TensorSplit, info: DatasetInfo, s: BenchSettings, engine: str) -> float:
    recipe = paper_recipe("sdn", arch)
    fast = engine == "fast"
    model = _prepare_model(arch, recipe, s, channels_last=fast).eval()
    if fast:
        loader: Any = DeviceLoader(
            split,
            info,
            batch_size=s.eval_batch,
            shuffle=False,
            augment=False,
            device=s.device,
            seed=0,
            drop_last=True,
            channels_last=True,
        )
        autocast: Any = s.autocast()
        batches = _cycle(lambda: iter(loader))
    else:
        autocast = nullcontext()
        batches = _cycle(
            lambda: iter(
                reference_loader(
                    split, info, batch_size=s.batch_size, augment=False, shuffle=False, workers=s.workers
                )
            )
        )

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        del y
        with autocast:
            model(x.to(s.device, non_blocking=True))

    return timed_rate(step, batches, s)


def bench_arch(
    arch: str,
    settings: BenchSettings,
    kinds: tuple[str, ...],
    *,
    concurrent_jobs: int = 1,
    concurrent_seconds: float = 10.0,
) -> dict[str, Any]:
    """Training rates of both engines for each recipe in ``kinds``, evaluation rates, and (``concurrent_jobs`` > 1)
    the aggregate rate of that many SDN-training jobs sharing the device."""
    n = settings.batch_size * (settings.steps + settings.warmup + 1)
    split, info = synthetic_split(max(n, settings.eval_batch * (settings.steps + settings.warmup + 1)), settings)
    sdn_model = build_model(
        arch, paper_recipe("sdn", arch), num_classes=settings.num_classes, input_size=settings.input_size
    )
    cost = profile_model(sdn_model, settings.input_size)
    forward_macs = float(cost.exits[-1].macs)
    train_flops_per_image = 3 * 2 * forward_macs  # forward + backward ~ 3x the forward's 2*MACs
    result: dict[str, Any] = {"arch": arch, "forward_macs_per_image": forward_macs, "recipes": {}}
    # The SDN's evaluation rate stands for every recipe's per-epoch evaluation (the CNN's is a few percent faster).
    evals = {engine: eval_rate(arch, split, info, settings, engine) for engine in ("reference", "fast")}
    result["eval_images_per_s"] = evals
    for kind in kinds:
        recipe = paper_recipe(kind, arch)
        ref = reference_train_rate(arch, recipe, split, info, settings)
        fast, graphed = fast_train_rate(arch, recipe, split, info, settings)
        ref_epoch = EPOCH_SIZES["train"] / ref + EPOCH_SIZES["reference_eval"] / evals["reference"]
        fast_epoch = EPOCH_SIZES["train"] / fast + EPOCH_SIZES["holdout"] / evals["fast"]
        result["recipes"][kind] = {
            "reference_train_images_per_s": ref,
            "fast_train_images_per_s": fast,
            "train_speedup": fast / ref,
            "cuda_graph": graphed,
            "reference_epoch_s": ref_epoch,
            "fast_epoch_s": fast_epoch,
            "epoch_speedup": ref_epoch / fast_epoch,
            "fast_tflops": fast * train_flops_per_image / 1e12,
            "reference_tflops": ref * train_flops_per_image / 1e12,
        }
        log.info(
            "%s %s: reference %.0f img/s, fast %.0f img/s (x%.2f), epoch %.1fs -> %.1fs",
            arch,
            kind,
            ref,
            fast,
            fast / ref,
            ref_epoch,
            fast_epoch,
        )
    if concurrent_jobs > 1 and "sdn" in result["recipes"]:
        try:
            shared = concurrent_train_rate(arch, "sdn", settings, concurrent_jobs, concurrent_seconds)
        except RuntimeError as err:  # keep the rest of the benchmark
            log.warning("%s", err)
            result["concurrency"] = {"jobs": concurrent_jobs, "error": str(err)}
            return result
        single = result["recipes"]["sdn"]["fast_train_images_per_s"]
        shared["single_job_images_per_s"] = single
        shared["gain"] = shared["aggregate_images_per_s"] / single
        result["concurrency"] = shared
        log.info(
            "%s sdn: %d jobs at once %.0f img/s in all (x%.2f of one job)",
            arch,
            concurrent_jobs,
            shared["aggregate_images_per_s"],
            shared["gain"],
        )
    return result


def _epoch_s(recipes: dict[str, Any], kind: str, engine: str) -> float:
    return recipes.get(kind, recipes["sdn"])[f"{engine}_epoch_s"]


def project_paper_grid(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Wall time of CNN + IC-only + SDN training at the paper's epochs for every benchmarked architecture.

    Per-epoch times are the measured ones (a recipe not measured borrows the SDN's: the CNN's epoch is a few percent
    shorter). Serial: one job at a time. Shared: where several jobs sharing the device were measured (``concurrency``
    in an architecture's result), its jobs are credited with the measured aggregate gain, as if the workflow kept
    that many jobs of the architecture running together; unmeasured architectures get no credit.
    """
    per_arch = {}
    for r in results:
        recipes = r["recipes"]
        fast_s = sum(epochs * _epoch_s(recipes, kind, "fast") for kind, epochs in PAPER_EPOCHS.items())
        shared = r.get("concurrency", {})
        # Credit at most the number of jobs (more is noise); a loss from sharing is avoided by not sharing.
        gain = min(max(shared.get("gain", 1.0), 1.0), shared.get("jobs", 1))
        per_arch[r["arch"]] = {
            "fast_s": fast_s,
            "reference_s": sum(
                epochs * _epoch_s(recipes, kind, "reference") for kind, epochs in PAPER_EPOCHS.items()
            ),
            "measured_recipes": sorted(k for k in PAPER_EPOCHS if k in recipes),
            "concurrency_gain": gain,
            "shared_fast_s": fast_s / gain,
        }
    return {
        "per_arch": per_arch,
        "serial_fast_minutes": sum(v["fast_s"] for v in per_arch.values()) / 60,
        "serial_reference_minutes": sum(v["reference_s"] for v in per_arch.values()) / 60,
        "concurrency_jobs": max((r.get("concurrency", {}).get("jobs", 1) for r in results), default=1),
        "projected_fast_minutes": sum(v["shared_fast_s"] for v in per_arch.values()) / 60,
    }


def environment(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "cpu_threads": torch.get_num_threads(),
        "cpu": cpu_model(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def early_exit_timing(
    checkpoint: str,
    data_dir: str,
    device: torch.device,
    *,
    tolerance: float = 0.5,
    batch_sizes: tuple[int, ...] | None = None,
    repeats: int = 5,
    onnx: bool = True,
    threshold: float | None = None,
) -> dict[str, Any]:
    """Online early exit of a trained SDN against its full network, at the threshold chosen on the held-out split.

    Reports the measured latency saving beside the saving the op counts predict for the same exits
    (:mod:`sdn.bench_latency`): PyTorch at every batch size (default: 1 and 64 on a CPU, 1 and 256 on a GPU),
    ONNX Runtime on the CPU where it is installed, and on a GPU batch 1 through CUDA graphs. When no threshold keeps
    the held-out accuracy within ``tolerance`` of the final exit's, the most accurate threshold of the grid is timed
    instead and ``threshold_status`` says ``"none"`` (with the reason); the command does not fail. A given
    ``threshold`` (in [0, 1]) is timed instead of the chosen one, with ``threshold_status`` ``"given"``.
    """
    import numpy as np

    from sdn import bench_latency
    from sdn.analysis.arrays import softmax
    from sdn.analysis.early_exit import check_threshold, choose_by_tolerance_or_best, simulate, sweep
    from sdn.checkpoint import load_checkpoint
    from sdn.data import load_prepared
    from sdn.inference import backbone_forward, collect_logits, deploy_copy, early_exit_forward
    from sdn.outputs import exit_cost_arrays

    if batch_sizes is None:
        batch_sizes = (1, 256) if device.type == "cuda" else (1, 64)
    model, meta = load_checkpoint(checkpoint, device)
    model.eval()
    data = load_prepared(data_dir)
    costs = exit_cost_arrays(meta["cost"], model.num_exits)["exit_fraction"]

    def logits_of(split_name: str) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
        split = data.split(split_name)
        loader = DeviceLoader(split, data.info, batch_size=512, shuffle=False, augment=False, device=device, seed=0)
        images = torch.cat([x for x, _ in loader])
        logits, labels = collect_logits(model, loader)
        return logits, labels, images

    hold_logits, hold_labels, _ = logits_of("holdout")
    test_logits, test_labels, test_images = logits_of("test")
    hold_probs = softmax(hold_logits)
    table = sweep(hold_probs, hold_labels, costs, "confidence")
    final_acc = float((hold_logits[-1].argmax(1) == hold_labels).mean() * 100)
    if threshold is None:
        choice = choose_by_tolerance_or_best(table, final_acc, tolerance)
        threshold = choice.threshold
        chosen = {**choice.record(), "holdout_accuracy": float(choice.row["accuracy"])}
    else:
        threshold = check_threshold("confidence", threshold)
        given = simulate(hold_probs, hold_labels, costs, "confidence", threshold)
        chosen = {
            "threshold_status": "given",
            "threshold_reason": f"threshold {threshold:g} given, not chosen by the tolerance rule",
            "holdout_accuracy": given.accuracy,
        }
    offline = simulate(softmax(test_logits), test_labels, costs, "confidence", threshold)
    online_pred, online_exit = early_exit_forward(model, test_images, "confidence", threshold)
    prediction_mismatches = int((online_pred.cpu().numpy() != offline.predictions).sum())
    exit_mismatches = int((online_exit.cpu().numpy() != offline.exit_index).sum())
    cnn_ops = float(meta["cost"]["cnn"]["ops"])
    result: dict[str, Any] = {
        "checkpoint": str(checkpoint),
        "arch": meta["arch"],
        "threshold": threshold,
        **chosen,
        "tolerance": tolerance,
        "final_holdout_accuracy": final_acc,
        "final_exit_cost_fraction": float(costs[-1]),
        "test_accuracy": offline.accuracy,
        "final_test_accuracy": float((test_logits[-1].argmax(1) == test_labels).mean() * 100),
        "avg_cost_fraction": offline.avg_cost_fraction,
        "predicted_saving": 1.0 - offline.avg_cost_fraction,
        "online_matches_offline": prediction_mismatches == 0 and exit_mismatches == 0,
        "online_prediction_mismatches": prediction_mismatches,
        "online_exit_mismatches": exit_mismatches,
        "num_test": int(len(test_labels)),
        "cnn_ops": cnn_ops,
        "repeats": repeats,
        "batches": {},
        "latency": [],
    }
    # "pytorch": the checkpoint's model as trained; "pytorch-deploy": its inference copy (BatchNorm folded into the
    # convolutions), NHWC above batch 1 (oneDNN's convolutions read it without reordering; at batch 1 the reorders
    # are cheap and the exits' small NHWC tensors are not)
    deployed = {False: deploy_copy(model), True: deploy_copy(model, channels_last=True)}

    def engines(batch: int) -> dict[str, dict[str, Callable[[torch.Tensor], Any]]]:
        nhwc = batch > 1
        fast = deployed[nhwc]
        memory = torch.channels_last if nhwc else torch.contiguous_format
        return {
            "pytorch": {
                "cnn": lambda b: backbone_forward(model, b).argmax(dim=1).cpu(),
                "early_exit": lambda b: early_exit_forward(model, b, "confidence", threshold)[0].cpu(),
            },
            "pytorch-deploy": {
                "cnn": lambda b: backbone_forward(fast, b.contiguous(memory_format=memory)).argmax(dim=1).cpu(),
                "early_exit": lambda b: early_exit_forward(
                    fast, b.contiguous(memory_format=memory), "confidence", threshold
                )[0].cpu(),
            },
        }

    result["deploy_prediction_mismatches"] = result["deploy_exit_mismatches"] = 0
    for nhwc, copy_ in deployed.items():  # the worse of the two copies
        memory = torch.channels_last if nhwc else torch.contiguous_format
        pred, exits = early_exit_forward(copy_, test_images.contiguous(memory_format=memory), "confidence", threshold)
        for key, got, want in (("prediction", pred, offline.predictions), ("exit", exits, offline.exit_index)):
            count = int((got.cpu().numpy() != want).sum())
            result[f"deploy_{key}_mismatches"] = max(result[f"deploy_{key}_mismatches"], count)
    onnx_runners = _onnx_runners(model, threshold, result) if onnx and device.type == "cpu" else {}
    for engine, onnx_runner in onnx_runners.items():
        # in chunks: ONNX Runtime's arena keeps a pass's peak memory, a few GB for 10,000 images in one call
        onnx_images = test_images.cpu().numpy()
        answers = [onnx_runner(onnx_images[i : i + ONNX_CHUNK]) for i in range(0, len(onnx_images), ONNX_CHUNK)]
        onnx_pred, onnx_exit = (np.concatenate(parts) for parts in zip(*answers, strict=True))
        key = ONNX_MISMATCH_KEYS[engine]
        result[f"{key}_prediction_mismatches"] = int((onnx_pred != offline.predictions).sum())
        result[f"{key}_exit_mismatches"] = int((onnx_exit != offline.exit_index).sum())
        result[f"{key}_test_accuracy"] = float((onnx_pred == test_labels).mean() * 100)
    for batch in batch_sizes:
        n = min(len(test_labels), 256 if batch == 1 else 4096)
        predicted = bench_latency.predicted_saving(costs, offline.exit_index[:n])
        for engine, variants in engines(batch).items():
            timing = bench_latency.compare(variants, test_images[:n], batch, device, repeats=repeats)
            row = bench_latency.saving_row(engine, device, batch, timing, predicted, n)
            result["latency"].append(row)
            if engine == "pytorch":
                result["batches"][str(batch)] = row
        for engine, onnx_runner in onnx_runners.items():
            onnx_variants = {
                "cnn": lambda b, r=onnx_runner: r.cnn(b.numpy()),
                "early_exit": lambda b, r=onnx_runner: r(b.numpy()),
            }
            timing = bench_latency.compare(onnx_variants, test_images[:n].cpu(), batch, device, repeats=repeats)
            result["latency"].append(bench_latency.saving_row(engine, device, batch, timing, predicted, n))
    if device.type == "cuda":  # batches above 1: compacted at padded bucket sizes, every step a CUDA graph
        for batch in (b for b in batch_sizes if b > 1):
            result["latency"].extend(_bucketed_rows(model, test_images, threshold, batch, costs, offline, repeats))
    if device.type == "cuda":  # batch 1 with every segment replayed as a CUDA graph; both ways to read decisions
        from sdn.graphed_inference import time_graphed_batch1

        n = min(len(test_labels), 256)
        predicted = 1.0 - float(costs[offline.exit_index[:n]].mean())  # the saving ops predict for these images
        for key, host_copy in (("graphed_batch1", True), ("graphed_batch1_device_read", False)):
            graphed = time_graphed_batch1(model, test_images[:n], threshold, host_copy=host_copy)
            graphed["prediction_mismatches_vs_offline"] = int(
                (np.array(graphed.pop("predictions")) != offline.predictions[:n]).sum()
            )
            graphed["exit_mismatches_vs_offline"] = int(
                (np.array(graphed.pop("exit_index")) != offline.exit_index[:n]).sum()
            )
            graphed["predicted_saving_these_images"] = predicted
            graphed["saving_ratio"] = graphed["measured_saving"] / predicted
            result[key] = graphed
    return result


ONNX_CHUNK = 500  # images per ONNX Runtime call when the whole test split is decided
# the result's key prefix of each ONNX engine's mismatch counts against the offline simulation
ONNX_MISMATCH_KEYS = {"onnxruntime": "onnx", "onnxruntime-graph": "onnx_graph", "onnxruntime-graph-int8": "onnx_int8"}


def _onnx_runners(model: MultiExitNet, threshold: float, result: dict[str, Any]) -> dict[str, Any]:
    """ONNX Runtime early-exit runners of ``model`` (exported to temporary folders) by engine name:
    ``onnxruntime`` (the segment graphs in a Python loop), ``onnxruntime-graph`` (the one graph that stops at the
    exit) and ``onnxruntime-graph-int8`` (the same with the ICs' linear layers in int8, ``sdn export --ic-weights
    int8``: an approximation, its mismatches counted); none, with the reason in ``result["onnx"]``, where
    onnx/onnxruntime are not installed."""
    import tempfile

    try:
        from sdn import export_onnx

        runners = {}
        with tempfile.TemporaryDirectory(prefix="sdn-onnx-") as root:  # the sessions hold the graphs in memory
            for ic_weights, engines in (
                ("float32", (("onnxruntime", "segments"), ("onnxruntime-graph", "one-graph"))),
                ("int8", (("onnxruntime-graph-int8", "one-graph"),)),
            ):
                folder = f"{root}/{ic_weights}"
                export_onnx.export(model.cpu(), folder, ic_weights=ic_weights)
                for name, engine in engines:
                    runners[name] = export_onnx.OnnxEarlyExit(folder, threshold=threshold, engine=engine)
    except ImportError as err:
        result["onnx"] = f"not timed: {err} (pip install 'sdn[onnx]')"
        return {}
    result["onnx"] = (
        "onnxruntime: segment graphs; onnxruntime-graph: one graph with If nodes; onnxruntime-graph-int8: the one "
        f"graph with int8 IC weights; opset {export_onnx.OPSET}, ONNX Runtime {runners['onnxruntime'].version}"
    )
    return runners


def _bucketed_rows(
    model: MultiExitNet, images: torch.Tensor, threshold: float, batch: int, costs: Any, offline: Any, repeats: int
) -> list[dict[str, Any]]:
    """CUDA graphs at ``batch``: the CNN as one graph against :class:`sdn.bucketed_inference.BucketedEarlyExit`
    (full batches of the test set only). A capture that fails is reported in the row, not raised."""
    import numpy as np

    from sdn import bench_latency
    from sdn.bucketed_inference import BucketedEarlyExit
    from sdn.graphed_inference import GraphedEarlyExit

    n = (min(len(images), 4096) // batch) * batch
    if n == 0:
        return [{"engine": "cuda-graphs", "batch_size": batch, "error": f"fewer than {batch} test images"}]
    try:
        whole = GraphedEarlyExit(model, images[:batch], threshold)
        bucketed = BucketedEarlyExit(model, threshold, max_batch=batch)
        predictions, exits = zip(*(bucketed(b) for b in images[:n].split(batch)), strict=True)
        variants = {"cnn": whole.cnn, "early_exit": lambda b: bucketed(b)[0].cpu()}
        timing = bench_latency.compare(variants, images[:n], batch, images.device, repeats=repeats)
    except RuntimeError as err:
        return [{"engine": "cuda-graphs", "batch_size": batch, "error": f"{type(err).__name__}: {err}"}]
    predicted = bench_latency.predicted_saving(costs, offline.exit_index[:n])
    row = bench_latency.saving_row("cuda-graphs", images.device, batch, timing, predicted, n)
    row["exit_mismatches_vs_offline"] = int((torch.cat(exits).cpu().numpy() != offline.exit_index[:n]).sum())
    row["prediction_mismatches_vs_offline"] = int(
        (torch.cat(predictions).cpu().numpy() != np.asarray(offline.predictions[:n])).sum()
    )
    return [row]
