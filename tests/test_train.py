"""Training recipes, loss weights, lr schedule, frozen backbones, determinism, NaN and device errors."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from sdn import checkpoint, io
from sdn.checkpoint import load_checkpoint
from sdn.config import Recipe, coefficients_for, ic_loss_weights, paper_recipe
from sdn.device import resolve_device
from sdn.graphs import clip_gradients
from sdn.models import get_spec
from sdn.progress import read_progress
from sdn.train import EngineOptions, build_model, build_scheduler, seed_everything, train_one_epoch

# ---------------------------------------------------------------- recipes and schedules


@pytest.mark.parametrize(
    ("epoch", "expected"),
    [
        (1, [0.0115, 0.013, 0.0145, 0.016, 0.0175, 0.019]),
        (10, [0.025, 0.04, 0.055, 0.07, 0.085, 0.10]),
        (50, [0.085, 0.16, 0.235, 0.31, 0.385, 0.46]),
        (94, [0.15, 0.292, 0.433, 0.574, 0.715, 0.856]),
        (99, [0.15, 0.30, 0.45, 0.60, 0.75, 0.90]),
        (100, [0.15, 0.30, 0.45, 0.60, 0.75, 0.90]),
    ],
)
def test_ic_loss_weights_match_spec_table(epoch: int, expected: list[float]) -> None:
    got = ic_loss_weights(epoch, 100, (0.15, 0.30, 0.45, 0.60, 0.75, 0.90))
    assert got == pytest.approx(expected, abs=6e-4)


def test_ic_loss_weights_reject_bad_epoch_and_too_many_ics() -> None:
    with pytest.raises(ValueError, match="epoch must be in 1..100"):
        ic_loss_weights(0, 100, (0.15,))
    assert coefficients_for(2, (0.15, 0.3, 0.45)) == (0.15, 0.3)
    with pytest.raises(ValueError, match="7 internal classifiers"):
        coefficients_for(7, (0.15, 0.3, 0.45, 0.6, 0.75, 0.9))


def test_paper_recipes(tiny) -> None:
    cnn = paper_recipe("cnn", tiny.ARCH)
    assert (cnn.optimizer, cnn.lr, cnn.momentum, cnn.epochs, cnn.milestones, cnn.batch_size) == (
        "sgd",
        0.1,
        0.9,
        100,
        (35, 60, 85),
        128,
    )
    assert cnn.weight_decay == get_spec(tiny.ARCH).weight_decay
    ic = paper_recipe("ic_only", tiny.ARCH)
    assert (ic.optimizer, ic.lr, ic.epochs, ic.milestones, ic.backbone_mode) == ("adam", 1e-3, 25, (15,), "eval")
    assert paper_recipe("sdn", tiny.ARCH).ic_max_coeffs == (0.15, 0.30, 0.45, 0.60, 0.75, 0.90)


def test_with_epochs_scales_milestones() -> None:
    recipe = Recipe(kind="cnn")
    assert recipe.with_epochs(20).milestones == (7, 12, 17)
    assert recipe.with_epochs(10).milestones == (4, 6, 8)
    assert recipe.with_epochs(3).milestones == (2,)  # 1.05 and 1.8 -> 1, 2 -> keeps 2; 2.55 -> 3 dropped
    assert recipe.with_epochs(1).milestones == ()
    assert Recipe(kind="ic_only", epochs=25, milestones=(15,)).with_epochs(5).milestones == (3,)


def test_recipe_validation_names_the_key() -> None:
    with pytest.raises(ValueError, match="epochs"):
        Recipe(kind="cnn", epochs=-1, milestones=())
    with pytest.raises(ValueError, match="lr"):
        Recipe(kind="cnn").with_overrides({"lr": float("nan")})
    with pytest.raises(ValueError, match="unknown recipe key.*'lrate'"):
        Recipe.from_dict({"kind": "cnn", "lrate": 0.1})
    with pytest.raises(ValueError, match="kind must be one of"):
        Recipe(kind="dsn")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="milestones"):
        Recipe(kind="cnn", epochs=10, milestones=(5, 3))
    again = Recipe.from_dict(Recipe(kind="sdn", epochs=4, milestones=[2, 3]).to_dict())  # type: ignore[arg-type]
    assert again == Recipe(kind="sdn", epochs=4, milestones=(2, 3))
    assert Recipe(kind="cnn").with_overrides({"epochs": 10, "batch_size": 64}).milestones == (4, 6, 8)


def test_lr_per_epoch_follows_milestones() -> None:
    recipe = Recipe(kind="cnn", lr=0.1, epochs=10, milestones=(4, 7))
    optimizer = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=recipe.lr)
    scheduler = build_scheduler(optimizer, recipe)
    seen = []
    for epoch in range(1, recipe.epochs + 1):
        seen.append(optimizer.param_groups[0]["lr"])
        assert seen[-1] == pytest.approx(recipe.lr_at(epoch))
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx([0.1] * 3 + [0.01] * 3 + [0.001] * 4)
    paper = Recipe(kind="cnn")
    assert [paper.lr_at(e) for e in (1, 34, 35, 59, 60, 84, 85, 100)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 1e-3, 1e-3, 1e-4, 1e-4]
    )


# ---------------------------------------------------------------- training runs


def _split(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    backbone = {k: v for k, v in state.items() if not k.startswith("exits.")}
    exits = {k: v for k, v in state.items() if k.startswith("exits.")}
    return backbone, exits


def _initial_exits(tiny, recipe: Recipe, seed: int) -> dict[str, torch.Tensor]:
    seed_everything(seed)
    model = build_model(tiny.ARCH, recipe, num_classes=tiny.CLASSES, input_size=tiny.SIZE)
    return _split(model.state_dict())[1]


def test_cnn_training_writes_checkpoint_meta_history(tiny, tiny_data: Path, tmp_path: Path) -> None:
    recipe = tiny.recipe("cnn", epochs=3, milestones=(2, 3))
    path = tiny.train(tiny_data, tmp_path / "cnn", recipe=recipe)
    out = path.parent
    assert path.name == "model.pt" and not (out / "last.pt").exists()
    payload = io.load_torch(path)
    meta = payload["meta"]
    assert {**meta, "model_sha256": io.sha256_file(path)} == io.read_json(out / "meta.json")
    assert meta["arch"] == tiny.ARCH and meta["variant"] == "cnn" and meta["exit_positions"] == []
    assert meta["seed"] == 3 and meta["dataset"] == "tiny" and meta["recipe"]["epochs"] == 3
    assert len(meta["holdout_accuracy"]) == 1 and 0.0 <= meta["holdout_accuracy"][0] <= 100.0
    assert "cnn" in meta["cost"] and meta["device"] == "cpu"
    lines = (out / "history.csv").read_text().splitlines()
    assert lines[0].startswith("epoch,lr,loss")
    assert [float(line.split(",")[1]) for line in lines[1:]] == pytest.approx([0.05, 0.005, 0.0005])
    progress = read_progress(out)  # for schedulers (sdn.reproduce): how far, how long an epoch takes
    assert progress is not None and progress["epoch"] == progress["epochs"] == 3
    assert len(progress["epoch_wall_s"]) == 3 and all(s > 0 for s in progress["epoch_wall_s"])
    model, loaded_meta = load_checkpoint(path)
    assert loaded_meta == meta and model.num_exits == 1 and not model.training


def test_ic_only_leaves_backbone_bit_identical(tiny, tiny_data: Path, tmp_path: Path) -> None:
    parent = tiny.train(tiny_data, tmp_path / "cnn", kind="cnn", recipe=tiny.recipe("cnn", epochs=1, milestones=()))
    recipe = tiny.recipe("ic_only")
    path = tiny.train(tiny_data, tmp_path / "ic", recipe=recipe, parent=parent)
    backbone, exits = _split(tiny.state(path))
    parent_state = tiny.state(parent)
    assert backbone.keys() == parent_state.keys()
    assert any("running_mean" in k for k in backbone) and any("num_batches_tracked" in k for k in backbone)
    for key, value in backbone.items():
        assert torch.equal(value, parent_state[key]), key
    initial = _initial_exits(tiny, recipe, seed=3)
    assert exits.keys() == initial.keys()
    assert any(not torch.equal(v, initial[k]) for k, v in exits.items())


def test_ic_only_train_mode_reproduces_original_bn_drift(tiny, tiny_data: Path, tmp_path: Path) -> None:
    parent = tiny.train(tiny_data, tmp_path / "cnn", kind="cnn", recipe=tiny.recipe("cnn", epochs=1, milestones=()))
    recipe = tiny.recipe("ic_only", epochs=1, milestones=(), backbone_mode="train")
    path = tiny.train(tiny_data, tmp_path / "ic", recipe=recipe, parent=parent)
    backbone, _ = _split(tiny.state(path))
    parent_state = tiny.state(parent)
    params = dict(io.load_torch(parent)["state_dict"])
    changed = [k for k, v in backbone.items() if not torch.equal(v, parent_state[k])]
    assert changed and all("running_" in k or "num_batches_tracked" in k for k in changed)
    assert all(torch.equal(backbone[k], params[k]) for k in params if k.endswith(".weight"))


def test_ic_only_needs_parent(tiny, tiny_data: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs --parent"):
        tiny.train(tiny_data, tmp_path / "ic", kind="ic_only")
    with pytest.raises(FileNotFoundError, match="parent checkpoint"):
        tiny.train(tiny_data, tmp_path / "ic", kind="ic_only", parent=tmp_path / "missing.pt")


def test_sdn_training_changes_backbone_and_exits(tiny, tiny_data: Path, tmp_path: Path) -> None:
    recipe = tiny.recipe("sdn", epochs=1, milestones=())
    path = tiny.train(tiny_data, tmp_path / "sdn", recipe=recipe)
    backbone, exits = _split(tiny.state(path))
    seed_everything(3)
    fresh = build_model(tiny.ARCH, recipe, num_classes=tiny.CLASSES, input_size=tiny.SIZE).state_dict()
    assert any(not torch.equal(v, fresh[k]) for k, v in backbone.items() if k.endswith("weight"))
    assert any(not torch.equal(v, fresh[k]) for k, v in exits.items())
    meta = io.read_json(path.parent / "meta.json")
    assert meta["exit_positions"] == list(tiny.EXITS) and len(meta["holdout_accuracy"]) == 4


def test_same_seed_gives_bit_identical_logits(tiny, tiny_data: Path, tmp_path: Path) -> None:
    paths = [tiny.train(tiny_data, tmp_path / f"run{i}") for i in range(2)]
    x = torch.randn(5, 3, tiny.SIZE, tiny.SIZE)
    logits = []
    for path in paths:
        model, _ = load_checkpoint(path)
        with torch.no_grad():
            logits.append(torch.stack(model(x)))
    assert logits[0].shape == (4, 5, tiny.CLASSES)
    assert torch.equal(logits[0], logits[1])
    other = tiny.train(tiny_data, tmp_path / "other", seed=4)
    model, _ = load_checkpoint(other)
    with torch.no_grad():
        assert not torch.equal(torch.stack(model(x)), logits[0])


def _interrupt_after_first_epoch(tiny, data: Path, out: Path, recipe: Recipe) -> None:
    """Train until the first epoch is done, then interrupt (as a stopped job): ``out/last.pt`` holds epoch 1."""

    def stop_after_first(epoch: int, metrics: dict[str, float]) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tiny.train(data, out, recipe=recipe, on_epoch=stop_after_first)


def test_nan_loss_names_epoch_and_step_and_keeps_last_checkpoint(tiny, tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "nan"
    recipe = tiny.recipe("cnn", epochs=3, milestones=())
    _interrupt_after_first_epoch(tiny, tiny_data, out, recipe)
    last = out / "last.pt"
    state = io.load_torch(last)
    assert state["epoch"] == 1
    for group in state["optimizer"]["param_groups"]:  # poison the resumed run: a huge lr diverges at once
        group["lr"] = 1e30
    checkpoint.save_resume_state(out, state)  # through the owner, which records its sha256
    before = last.read_bytes()
    with pytest.raises(RuntimeError, match=r"non-finite or diverged loss \(above 100000\) at epoch 2 step \d+"):
        tiny.train(tiny_data, out, recipe=recipe)
    assert last.read_bytes() == before
    assert not (out / "model.pt").exists()


def test_sdn_train_exits_with_the_diverged_status(
    tiny, tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from sdn.cli import main
    from sdn.train import EXIT_DIVERGED

    monkeypatch.setenv("SDN_TRACKING", "off")
    out = tmp_path / "run"
    argv = ["train", "--recipe", "cnn", "--arch", tiny.ARCH, "--data", str(tiny_data), "--out", str(out),
            "--epochs", "1", "--batch-size", "16", "--device", "cpu", "--seed", "0"]  # fmt: skip
    assert main([*argv, "--lr", "1e30"]) == EXIT_DIVERGED == 3  # a scheduler can tell it from other failures (2)
    assert "diverged loss" in capsys.readouterr().err and not (out / "model.pt").exists()
    assert main([*argv, "--lr", "0.01", "--out", str(tmp_path / "fine")]) == 0
    assert main([*argv, "--lr", "-1"]) == 2


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_training_resumes_from_weights_without_optimizer_state(
    tiny, tiny_data: Path, tmp_path: Path, optimizer: str
) -> None:
    """The GPU runner carries a last.pt too large for its resume pack as weights only (sdn.reproduce.runner)."""
    out = tmp_path / "run"
    recipe = tiny.recipe("sdn", optimizer=optimizer, lr=0.01, epochs=3, milestones=())
    _interrupt_after_first_epoch(tiny, tiny_data, out, recipe)
    state = io.load_torch(out / "last.pt")
    assert state["optimizer"]["state"]  # momentum / moments of the first epoch
    state["optimizer"]["state"] = {}
    checkpoint.save_resume_state(out, state)
    tiny.train(tiny_data, out, recipe=recipe)
    history = (out / "history.csv").read_text().splitlines()
    assert len(history) == 1 + 3 and (out / "model.pt").is_file() and not (out / "last.pt").exists()


def test_a_finite_runaway_loss_stops_training_as_diverged() -> None:
    model = nn.Linear(4, 3)
    with torch.no_grad():
        model.weight.zero_()
        model.weight[0].fill_(1e7)  # class 0's logit about 4e7, the others about 0: cross-entropy about 1e7, finite
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    batches = [(torch.ones(2, 4), torch.tensor([0, 1])), (-torch.ones(2, 4), torch.tensor([2, 2]))]
    options = EngineOptions(device=torch.device("cpu"), channels_last=False, amp=False)
    with pytest.raises(RuntimeError, match=r"diverged loss \(above 100000\) at epoch 7 step 1 \(of 2\)"):
        train_one_epoch(lambda x: [model(x)], batches, optimizer, [1.0], options=options, epoch=7)
    with torch.no_grad():
        model.weight.fill_(1.0)
    assert train_one_epoch(lambda x: [model(x)], batches, optimizer, [1.0], options=options, epoch=7).loss < 1e5


def test_bf16_autocast_is_opt_in_on_the_cpu(tiny, tiny_data: Path, tmp_path: Path) -> None:
    """amp=True runs the convolutions in bf16 on the CPU too (the loss stays fp32); the default there is fp32."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(3))
    model(torch.zeros(1, 3, 8, 8))
    seen: list[torch.dtype] = []
    model[0].register_forward_hook(lambda module, args, output: seen.append(output.dtype))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    batches = [(torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 0]))]
    for amp, dtype in ((True, torch.bfloat16), (False, torch.float32)):
        options = EngineOptions(device=torch.device("cpu"), channels_last=False, amp=amp)
        result = train_one_epoch(lambda x: [model(x)], batches, optimizer, [1.0], options=options, epoch=1)
        assert seen.pop() == dtype and np.isfinite(result.loss)
    meta = io.read_json(tiny.train(tiny_data, tmp_path / "bf16", "cnn", amp=True).parent / "meta.json")
    default = io.read_json(tiny.train(tiny_data, tmp_path / "fp32", "cnn").parent / "meta.json")
    assert meta["amp"] is True and default["amp"] is False


def test_gradient_clipping_bounds_the_global_norm_and_is_validated() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    def gradient_norm(max_norm: float | None) -> float:
        optimizer.zero_grad()
        (100.0 * F.cross_entropy(model(torch.randn(32, 8, generator=torch.Generator().manual_seed(1))),
                                 torch.zeros(32, dtype=torch.long))).backward()  # fmt: skip
        clip_gradients(optimizer, max_norm)
        return float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()])))

    unclipped = gradient_norm(None)
    assert unclipped > 1.0
    assert gradient_norm(0.5) == pytest.approx(0.5, rel=1e-4)
    assert gradient_norm(10 * unclipped) == pytest.approx(unclipped, rel=1e-6)  # below the bound: unchanged
    assert Recipe(kind="sdn", clip_grad_norm=1.0).clip_grad_norm == 1.0
    for bad in (0.0, -1.0, float("inf")):
        with pytest.raises(ValueError, match="clip_grad_norm must be a positive finite number"):
            Recipe(kind="sdn", clip_grad_norm=bad)


def test_a_last_pt_from_before_gradient_clipping_still_resumes(tiny, tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "old"
    recipe = tiny.recipe("cnn", epochs=2, milestones=())
    _interrupt_after_first_epoch(tiny, tiny_data, out, recipe)
    state = io.load_torch(out / "last.pt")
    del state["identity"]["recipe"]["clip_grad_norm"]  # as written before the key existed
    checkpoint.save_resume_state(out, state)
    tiny.train(tiny_data, out, recipe=recipe)
    assert [line.split(",")[0] for line in (out / "history.csv").read_text().splitlines()[1:]] == ["1", "2"]


def test_cuda_request_without_gpu(tiny, tiny_data: Path, tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(RuntimeError, match=r"CUDA requested but no GPU is available.*--device cpu"):
        resolve_device("cuda", allow_cpu_fallback=False)
    with pytest.warns(RuntimeWarning, match="falling back to the CPU"):
        assert resolve_device("cuda", allow_cpu_fallback=True) == torch.device("cpu")
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    assert resolve_device("auto") == torch.device("cpu")
    from sdn.cli import main

    args = ["train", "--recipe", "cnn", "--arch", tiny.ARCH, "--data", str(tiny_data), "--epochs", "1"]
    args += ["--batch-size", "16", "--out", str(tmp_path / "cli"), "--device", "cuda"]
    assert main(args) == 2
    assert not (tmp_path / "cli" / "model.pt").exists()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main([*args, "--allow-cpu-fallback"]) == 0
    assert any("falling back to the CPU" in str(w.message) for w in caught)
    assert io.read_json(tmp_path / "cli" / "meta.json")["device"] == "cpu"


def test_cli_parses_exits_and_overrides(tiny, tiny_data: Path, tmp_path: Path) -> None:
    from sdn.cli import main
    from sdn.commands.train import parse_exits

    assert parse_exits("0,2") == [0, 2] and parse_exits("paper") == "paper"
    out = tmp_path / "cli"
    args = ["train", "--recipe", "sdn", "--arch", tiny.ARCH, "--data", str(tiny_data), "--out", str(out)]
    args += ["--epochs", "2", "--batch-size", "32", "--lr", "0.02", "--exits", "0,2", "--device", "cpu"]
    args += ["--max-train-samples", "40", "--seed", "5", "--clip-grad-norm", "2.5"]
    assert main(args) == 0
    meta = io.read_json(out / "meta.json")
    assert meta["exit_positions"] == [0, 2] and meta["train_size"] == 40 and meta["seed"] == 5
    assert meta["recipe"]["lr"] == 0.02 and meta["recipe"]["batch_size"] == 32 and meta["recipe"]["epochs"] == 2
    assert meta["recipe"]["clip_grad_norm"] == 2.5
    assert meta["recipe"]["weight_decay"] == get_spec(tiny.ARCH).weight_decay
    assert np.isfinite(meta["holdout_accuracy"]).all()


@pytest.mark.slow
def test_ic_weight_probe_reports_finite_and_diverged_training(tmp_path: Path) -> None:
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    data = tmp_path / "digits"
    subprocess.run([sys.executable, "-m", "sdn", "prepare-data", "--dataset", "digits", "--out", str(data)],
                   check=True, capture_output=True, cwd=root)  # fmt: skip
    probe = [sys.executable, str(root / "scripts" / "ic_weight_probe.py"), "--data", str(data), "--arch", "resnet56"]
    calm = subprocess.run([*probe, "--steps", "2", "--lr", "0.01"], capture_output=True, text=True, timeout=600)
    assert calm.returncode == 0 and "finite for 2 steps" in calm.stdout, calm.stdout + calm.stderr
    assert "IC loss weights of epoch 1: 0.011 0.013 " in calm.stdout
    wild = subprocess.run([*probe, "--steps", "30", "--lr", "1e6"], capture_output=True, text=True, timeout=600)
    assert wild.returncode == 1 and "diverged at step" in wild.stdout, wild.stdout + wild.stderr


def test_a_training_subset_is_stratified_not_the_first_images() -> None:
    from sdn.data import TensorSplit
    from sdn.train import training_subset

    labels = torch.arange(4).repeat_interleave(25)  # sorted by class, as prepared ImageFolder data is
    split = TensorSplit(torch.arange(100, dtype=torch.uint8).view(100, 1, 1, 1).expand(100, 3, 2, 2).clone(), labels)
    subset = training_subset(split, 20)
    assert torch.bincount(subset.labels).tolist() == [5, 5, 5, 5]
    assert torch.equal(subset.images[:, 0, 0, 0].long() // 25, subset.labels)  # images travel with their labels
    assert torch.equal(training_subset(split, 20).images, subset.images)  # the same subset every time
    assert len(training_subset(split, 500).labels) == 100
