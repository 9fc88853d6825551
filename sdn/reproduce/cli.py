"""Command line of the grid runner: ``python -m sdn.reproduce.cli`` (``scripts/gpu-reproduce.sh`` calls it)."""

from __future__ import annotations

import argparse
import logging
import re
import shlex
import signal
import sys
from pathlib import Path

from sdn.config import PAPER_EPOCHS
from sdn.reproduce.grid import DEFAULT_VARIANTS, RECIPE, VARIANTS
from sdn.reproduce.runner import DEFAULT_TOP_K, DIVERGED_RETRY_ARGS, REPO, Runner, Settings, log


def _jobs(text: str) -> int:
    """``auto`` -> 0 (measure); otherwise a positive count."""
    if text == "auto":
        return 0
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"--jobs wants a positive count or 'auto', got {text!r}")
    return value


def default_archive(dataset: str) -> Path:
    """The first of .gpu/, shared/data/ (in the tree) and ../shared/data/ holding ``<dataset>-jpeg.tar.gz``."""
    name = f"{dataset}-jpeg.tar.gz"
    candidates = [REPO / ".gpu" / name, REPO / "shared" / "data" / name, REPO.parent / "shared" / "data" / name]
    return next((c for c in candidates if c.is_file()), candidates[-1])


def parse_args(argv: list[str] | None = None) -> Settings:
    p = argparse.ArgumentParser(
        prog="python -m sdn.reproduce.cli", description="Run a reproduction grid within a time budget."
    )
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--dataset", required=True, choices=("cifar10", "cifar100"))
    p.add_argument("--archs", required=True, help="comma-separated, e.g. resnet56,mobilenet,vgg16bn,wrn32_4")
    p.add_argument("--seeds", default="0", help="space- or comma-separated seeds")
    p.add_argument("--work", type=Path, help="work folder (default: <repo>/.reproduce/<dataset>)")
    p.add_argument(
        "--archive",
        type=Path,
        help="default: <dataset>-jpeg.tar.gz in <repo>/.gpu/, <repo>/shared/data/ or ../shared/data/",
    )
    p.add_argument("--device", default="cuda")
    p.add_argument(
        "--jobs",
        type=_jobs,
        default=3,
        help="jobs at once (default 3), or 'auto': measured once per grid (sdn.reproduce.concurrency)",
    )
    p.add_argument("--budget-s", type=float, default=3600.0)
    p.add_argument("--reserve-s", type=float, default=30.0, help="seconds kept for stopping and packing")
    for recipe in PAPER_EPOCHS:
        p.add_argument(
            f"--epochs-{recipe.replace('_', '-')}",
            type=int,
            default=PAPER_EPOCHS[recipe],
            help=f"epochs of the {recipe} recipe (the variants that train with it: "
            f"{', '.join(v for v in VARIANTS if RECIPE[v] == recipe)})",
        )
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument(
        "--variants",
        default=",".join(DEFAULT_VARIANTS),
        help=f"comma-separated, of {', '.join(VARIANTS)} (bd_*: the backdoor experiment, CIFAR-10 VGG-16-BN in the "
        "paper; bd_ic_only needs bd_cnn; cnn_full: the CNN recipe on all training images, held-out split from the "
        "test set, to measure what holding 5,000 out of training costs)",
    )
    p.add_argument("--prepare-args", default="", help="extra `sdn prepare-data` options (shell words)")
    p.add_argument(
        "--poison-args", default="", help="extra `sdn backdoor poison` options for the bd_* variants (shell words)"
    )
    p.add_argument("--train-args", default="", help="extra `sdn train` options, e.g. '--exits paper-original'")
    p.add_argument("--part-mib", type=float, default=16.0)
    p.add_argument("--max-files", type=int, default=8)
    p.add_argument(
        "--resume-max-mib",
        type=float,
        help="largest resume pack (default: what a device call can carry in beside the archive and the tree: "
        "64 MiB less the archive and 8 MiB)",
    )
    p.add_argument("--resume-from", type=Path, help="folder with resume.tar.NN from an earlier call")
    p.add_argument(
        "--restart",
        default="",
        help="jobs to start over, e.g. 'wrn32_4/s0/sdn' (comma-separated): their files and state are removed first, "
        "as for a diverged run retried with other --train-args",
    )
    p.add_argument(
        "--diverged-retry-args",
        default=shlex.join(DIVERGED_RETRY_ARGS),
        help="`sdn train` options added when a diverged training starts over, once (default %(default)r; '': a "
        "diverged training fails)",
    )
    p.add_argument(
        "--top-k",
        type=int,
        help="publish only the k largest logits of each row (0: all); default: 10 for cifar100, all for cifar10",
    )
    p.add_argument(
        "--grid-name",
        help="publish the grid's summary as reproduction/<dataset>/grid-<device>-<name>.json instead of "
        "grid-<device>.json (letters, digits, '.', '_', '-'): a second grid of the data set on one kind of device",
    )
    a = p.parse_args(argv)
    if a.grid_name is not None and not re.fullmatch(r"[A-Za-z0-9._-]+", a.grid_name):
        p.error(f"--grid-name {a.grid_name!r}: use letters, digits, '.', '_' and '-' only (it names a file)")
    if a.budget_s <= a.reserve_s or a.max_files < 3:
        p.error("need --budget-s > --reserve-s and --max-files >= 3")
    archs = [x for x in a.archs.replace(",", " ").split() if x]
    from sdn.models import list_archs

    unknown = [x for x in archs if x not in list_archs()]
    if not archs or unknown:
        p.error(f"--archs: unknown {unknown or 'none given'}; known: {', '.join(list_archs())}")
    try:
        seeds = [int(x) for x in a.seeds.replace(",", " ").split()]
    except ValueError:
        p.error(f"--seeds must be integers, got {a.seeds!r}")
    work = a.work or REPO / ".reproduce" / a.dataset
    archive = a.archive or default_archive(a.dataset)
    return Settings(
        out=a.out.resolve(), dataset=a.dataset, archs=archs, seeds=seeds, work=work.resolve(), archive=archive,
        device=a.device, jobs=a.jobs, budget_s=a.budget_s, reserve_s=a.reserve_s,
        epochs={r: getattr(a, f"epochs_{r}") for r in PAPER_EPOCHS}, batch_size=a.batch_size,
        variants=tuple(v for v in a.variants.split(",") if v), prepare_args=shlex.split(a.prepare_args),
        poison_args=shlex.split(a.poison_args),
        train_args=shlex.split(a.train_args), part_mib=a.part_mib, max_files=a.max_files,
        resume_max_mib=a.resume_max_mib, resume_from=a.resume_from,
        restart=[x for x in a.restart.replace(",", " ").split() if x],
        diverged_retry_args=shlex.split(a.diverged_retry_args),
        top_k=(a.top_k or None) if a.top_k is not None else DEFAULT_TOP_K.get(a.dataset),
        grid_name=a.grid_name,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="[reproduce %(asctime)s] %(message)s", datefmt="%H:%M:%S")
    settings = parse_args(argv)
    settings.out.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(settings.out / "runner.log")
    handler.setFormatter(logging.Formatter("[reproduce %(asctime)s] %(message)s", "%H:%M:%S"))
    log.addHandler(handler)
    try:
        runner = Runner(settings)
    except (FileNotFoundError, ValueError) as error:  # e.g. a broken resume pack or another data set's state
        log.error("error: %s", error)
        return 2

    def request_stop(signum: int, frame: object) -> None:
        log.info("signal %d: stopping the running jobs and packing", signum)
        runner.stop_requested = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        summary = runner.run()
    except (FileNotFoundError, RuntimeError) as error:  # the archive or data preparation; OUT is packed anyway
        log.error("error: %s", error)
        return 2
    return 0 if summary["complete"] or summary["calls"][-1].get("stopped") else 1


if __name__ == "__main__":
    sys.exit(main())
