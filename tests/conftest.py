"""Shared fixtures: the tiny registered architecture, prepared data, recipes, a tiny model, and Snakemake runs.

Fixtures only; no test module imports another. (A subprocess that needs the tiny architecture registered runs
``conftest.register_tiny_arch()``, see test_resume.py.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from sdn import io
from sdn.config import Recipe
from sdn.models import ArchSpec, BackboneParts, MultiExitNet, get_spec, register

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")


# ---------------------------------------------------------------- the tiny architecture


class SlowWhenAsked(nn.Identity):
    """Identity; sleeps in training mode when SDN_TEST_SLOW is set (lets a subprocess be killed mid-epoch)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        delay = os.environ.get("SDN_TEST_SLOW")
        if delay and self.training:
            time.sleep(float(delay))
        return x


def _conv(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


def _tiny_builder(*, num_classes: int, input_size: int) -> BackboneParts:
    del input_size
    return BackboneParts(
        stem=nn.Sequential(*_conv(3, 8)),
        blocks=[
            nn.Sequential(*_conv(8, 8), SlowWhenAsked()),
            nn.Sequential(*_conv(8, 16, stride=2), nn.Dropout(0.5)),
            nn.Sequential(*_conv(16, 16)),
            nn.Sequential(*_conv(16, 16)),
        ],
        head=nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes)),
    )


class Tiny:
    """The tiny test architecture (registered as ``tiny_test``) and helpers around it."""

    ARCH = "tiny_test"
    SIZE = 8
    CLASSES = 4
    EXITS = (0, 1, 2)

    @staticmethod
    def prepared(
        folder: Path, *, n_train: int = 64, n_holdout: int = 32, n_test: int = 24, seed: int = 0, holdout: bool = True
    ) -> Path:
        """A prepared-data folder in the documented format with random 8x8 images of 4 classes."""
        gen = torch.Generator().manual_seed(seed)
        sizes = {"train": n_train, "test": n_test}
        if holdout:
            sizes["holdout"] = n_holdout
        for split, n in sizes.items():
            images = torch.randint(0, 256, (n, 3, Tiny.SIZE, Tiny.SIZE), generator=gen, dtype=torch.uint8)
            labels = torch.randint(0, Tiny.CLASSES, (n,), generator=gen)
            io.save_torch({"images": images, "labels": labels}, folder / f"{split}.pt")
        io.write_json(
            folder / "meta.json",
            {
                "dataset": "tiny",
                "num_classes": Tiny.CLASSES,
                "input_size": Tiny.SIZE,
                "mean": [0.5, 0.5, 0.5],
                "std": [0.25, 0.25, 0.25],
                "crop_padding": 1,
                "color_jitter": 0.0,
                "classes": [str(c) for c in range(Tiny.CLASSES)],
                "sizes": sizes,
                "holdout_seed": 0,
                "source": {"kind": "test"},
            },
        )
        return folder

    @staticmethod
    def recipe(kind: str = "sdn", **overrides: object) -> Recipe:
        base = {
            "kind": kind,
            "optimizer": "adam" if kind == "ic_only" else "sgd",
            "lr": 0.01 if kind == "ic_only" else 0.05,
            "epochs": 2,
            "milestones": (2,),
            "batch_size": 16,
        }
        return Recipe(**{**base, **overrides})  # type: ignore[arg-type]

    @staticmethod
    def train(data: Path, out: Path, kind: str = "sdn", *, seed: int = 3, **kwargs: object) -> Path:
        from sdn.train import train

        recipe = kwargs.pop("recipe", None) or Tiny.recipe(kind)
        return train(arch=Tiny.ARCH, recipe=recipe, data_dir=data, out_dir=out, seed=seed, device="cpu", **kwargs)

    @staticmethod
    def state(path: Path) -> dict[str, torch.Tensor]:
        """The state dict stored in a ``model.pt``."""
        return io.load_torch(path)["state_dict"]


def register_tiny_arch() -> None:
    """Register the tiny test architecture (idempotent)."""
    try:
        get_spec(Tiny.ARCH)
    except ValueError:
        register(
            ArchSpec(
                name=Tiny.ARCH,
                builder=_tiny_builder,
                paper_exits=Tiny.EXITS,
                weight_decay=5e-4,
                description="tiny test network",
                input_sizes=(Tiny.SIZE,),
            )
        )


@pytest.fixture(scope="session")
def tiny() -> type[Tiny]:
    register_tiny_arch()
    return Tiny


@pytest.fixture
def tiny_data(tiny: type[Tiny], tmp_path: Path) -> Path:
    return tiny.prepared(tmp_path / "data")


@pytest.fixture(scope="session")
def tiny_model() -> Callable[..., MultiExitNet]:
    """A factory of a 4-block, 3-IC model on 8x8 inputs (not registered), in eval mode with confident ICs."""

    def build(seed: int = 0, num_classes: int = 4) -> MultiExitNet:
        torch.manual_seed(seed)

        def block() -> nn.Module:
            return nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())

        parts = BackboneParts(
            stem=nn.Conv2d(3, 4, 3, padding=1),
            blocks=[block() for _ in range(4)],
            head=nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes)),
        )
        model = MultiExitNet(parts, num_classes=num_classes, input_size=8, exit_positions=(0, 1, 2))
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.running_mean.uniform_(-0.2, 0.2)
                    module.running_var.uniform_(0.5, 1.5)
            for scale, ic in zip((10.0, 30.0, 100.0), model.exits, strict=True):
                ic.linear.weight.mul_(scale)  # make the ICs (increasingly) confident
        return model.eval()

    return build


# ---------------------------------------------------------------- a CIFAR-shaped JPEG archive


def make_fake_cifar_archive(path: Path, train_per_class: int = 100, test_per_class: int = 20) -> None:
    """A CIFAR-10-JPEG-shaped archive (cifar10-jpeg/{train,test}/<class>/<n>.jpg) of three noisy colour classes."""
    from PIL import Image

    rng = np.random.default_rng(0)
    root = path.parent / "tree" / "cifar10-jpeg"
    for split, count in (("train", train_per_class), ("test", test_per_class)):
        for k, name in enumerate(("red", "green", "blue")):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 80, (32, 32, 3), dtype=np.uint8)
                pixels[..., k] += 150
                Image.fromarray(pixels).save(folder / f"{i:04d}.jpg")
    with tarfile.open(path, "w:gz") as tar:
        tar.add(root, arcname="cifar10-jpeg")


@pytest.fixture(scope="session")
def fake_cifar_archive() -> Callable[..., None]:
    """``make(path, train_per_class=100, test_per_class=20)``: write a CIFAR-10-JPEG-shaped archive at ``path``."""
    return make_fake_cifar_archive


def freeze_trainer(work: Path) -> None:
    """SIGSTOP the process group of the `sdn train` a reproduction runner started in ``work`` (its own session), so
    that a test can stop the call at a known epoch: a toy epoch takes a fraction of a second, and an unfrozen
    trainer may finish its run before the runner's stop reaches it (seen once on a fresh machine). The runner's
    SIGTERM then waits while the trainer is stopped, and its grace period ends in SIGKILL, which a stopped process
    obeys."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            command = (proc / "cmdline").read_bytes().split(b"\0")
            cwd = Path(os.readlink(proc / "cwd"))
            group = os.getpgid(int(proc.name))  # the trainer's, for a data loader's worker too
        except OSError:  # gone, or not ours to read
            continue
        if command[1:4] == [b"-m", b"sdn", b"train"] and cwd == work:
            os.killpg(group, signal.SIGSTOP)
            return
    raise AssertionError(f"no `sdn train` process runs in {work}")


@pytest.fixture(scope="session")
def stop_trainer() -> Callable[[Path], None]:
    """``stop_trainer(work)``: :func:`freeze_trainer`."""
    return freeze_trainer


# ---------------------------------------------------------------- the workflow


def run_snakemake(
    workdir: Path, *args: str, configfile: Path | None = None, timeout: float = 600, env: dict | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the project's Snakefile with `workdir` as working directory (results/, logs/, .snakemake/ there)."""
    command = [str(SNAKEMAKE), "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir), *args]
    if configfile is not None:  # last: --configfile takes every following word up to the next option
        command += ["--configfile", str(configfile)]
    return subprocess.run(
        command,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture(scope="session")
def repo() -> Path:
    """The repository root (Snakefile, config/, workflow/)."""
    return REPO


@pytest.fixture(scope="session")
def snakemake() -> Callable[..., subprocess.CompletedProcess[str]]:
    """``snakemake(workdir, *args, configfile=..., timeout=..., env=...)``: the project's Snakefile run in workdir."""
    return run_snakemake


@pytest.fixture(scope="session")
def snakemake_exe() -> Path:
    return SNAKEMAKE


def _stop_process_group(server: subprocess.Popen) -> None:
    """Stop a server started with ``start_new_session=True``: SIGTERM to its process group, SIGKILL after 30 s."""
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=30)


@pytest.fixture(scope="session")
def stop_server() -> Callable[[subprocess.Popen], None]:
    """The one way the tests stop a server they started (MLflow tracking server, ``mlflow models serve``)."""
    return _stop_process_group
