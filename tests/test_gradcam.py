"""Grad-CAM of IC1 vs the final head on a tiny hand-built model whose exits look at known quadrants."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from sdn.analysis.gradcam import exit_target_layer, grad_cam, gradcam_figure, select_destructive
from sdn.models.multiexit import BackboneParts, MultiExitNet

SIZE = 8
HALF = SIZE // 2


class QuadrantSplit(nn.Module):
    """Channel mean of the image (a 1x1 conv), copied to channel 0 on the top-left quadrant only and to channel 1
    on the bottom-right quadrant only."""

    def __init__(self) -> None:
        super().__init__()
        self.mix = nn.Conv2d(3, 1, kernel_size=1, bias=False)
        nn.init.constant_(self.mix.weight, 1.0 / 3.0)
        top_left = torch.zeros(1, 1, SIZE, SIZE)
        top_left[..., :HALF, :HALF] = 1
        bottom_right = torch.zeros(1, 1, SIZE, SIZE)
        bottom_right[..., HALF:, HALF:] = 1
        self.register_buffer("masks", torch.cat([top_left, bottom_right], dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mix(x) * self.masks


def quadrant_model() -> MultiExitNet:
    """IC1 (after block 0) decides from the bottom-right quadrant, the final head from the top-left one."""
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 2))
    model = MultiExitNet(
        BackboneParts(stem=nn.Identity(), blocks=[QuadrantSplit(), nn.ReLU()], head=head),
        num_classes=2,
        input_size=SIZE,
        exit_positions=[0],
    )
    with torch.no_grad():
        head[2].weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))  # final: channel 0 (top-left) only
        head[2].bias.zero_()
        ic = model.exits[0].linear  # features: 16 of channel 0 then 16 of channel 1 (4x4 after pooling)
        per_channel = ic.in_features // 2
        row = torch.cat([torch.zeros(per_channel), torch.ones(per_channel)])
        ic.weight.copy_(torch.stack([row, -row]))
        ic.bias.zero_()
    return model


def images(n: int = 3) -> torch.Tensor:
    return torch.rand(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0)) + 0.1


def quadrant_mean(x: torch.Tensor) -> np.ndarray:
    return x.mean(dim=1).numpy()


def test_target_layers_are_the_blocks_feeding_each_exit() -> None:
    model = quadrant_model()
    assert exit_target_layer(model, 0) is model.blocks[0]
    assert exit_target_layer(model, -1) is model.blocks[1]
    assert exit_target_layer(model, 1) is model.blocks[1]
    with pytest.raises(ValueError, match="out of range"):
        exit_target_layer(model, 2)


def test_final_cam_highlights_only_the_quadrant_the_head_uses() -> None:
    x = images()
    cams = grad_cam(quadrant_model(), x, exit_index=-1, target_classes=[0, 0, 0])
    assert cams.shape == (3, SIZE, SIZE)
    assert cams.min() >= 0.0 and cams.max() <= 1.0
    expected = np.zeros_like(cams)
    mean = quadrant_mean(x)
    expected[:, :HALF, :HALF] = mean[:, :HALF, :HALF]
    expected /= expected.max(axis=(1, 2), keepdims=True)  # ReLU(w0 * A0), min-max normalised
    np.testing.assert_allclose(cams, expected, atol=1e-5)


def test_first_ic_cam_highlights_its_own_quadrant() -> None:
    cams = grad_cam(quadrant_model(), images(), exit_index=0, target_classes=[0, 0, 0])
    assert np.all(cams[:, :HALF, :] == 0.0)
    assert np.all(cams[:, :, :HALF] == 0.0)
    assert np.all(cams[:, HALF:, HALF:] > 0.0)
    np.testing.assert_allclose(cams.max(axis=(1, 2)), 1.0, atol=1e-6)


def test_default_target_is_the_exit_prediction_and_negative_evidence_gives_an_empty_map() -> None:
    model = quadrant_model()
    x = images()
    predicted = grad_cam(model, x, exit_index=-1)  # positive inputs: the final head predicts class 0
    explicit = grad_cam(model, x, exit_index=-1, target_classes=[0, 0, 0])
    np.testing.assert_allclose(predicted, explicit)
    against = grad_cam(model, x, exit_index=-1, target_classes=[1, 1, 1])  # class 1 has only negative weights
    np.testing.assert_allclose(against, 0.0)


def test_grad_cam_rejects_bad_inputs() -> None:
    model = quadrant_model()
    with pytest.raises(ValueError, match="float tensor"):
        grad_cam(model, torch.zeros(1, 3, SIZE, SIZE, dtype=torch.uint8), exit_index=0)
    with pytest.raises(ValueError, match="target classes"):
        grad_cam(model, images(2), exit_index=0, target_classes=[0])


def test_select_destructive_prefers_ic1_right_final_wrong() -> None:
    labels = np.array([0, 1, 0, 1])
    # exits: IC1, IC2, final; one-hot-ish logits with the predicted class
    preds = np.array(
        [
            [0, 1, 1, 0],  # IC1: right on 0, wrong on 1 and 2, wrong on 3
            [1, 1, 0, 1],  # IC2: right on 1, 2, 3
            [1, 1, 1, 0],  # final: wrong on 0, right on 1, wrong on 2, wrong on 3
        ]
    )
    logits = np.eye(2)[preds] * 5.0
    chosen = select_destructive(logits, labels, max_samples=8)
    assert chosen.rule == "ic1_right_final_wrong"
    np.testing.assert_array_equal(chosen.indices, [0])

    preds[0, 0] = 1  # IC1 now wrong everywhere that matters: fall back to any IC right & final wrong
    chosen = select_destructive(np.eye(2)[preds] * 5.0, labels, max_samples=1)
    assert chosen.rule == "any_ic_right_final_wrong"
    np.testing.assert_array_equal(chosen.indices, [2])  # IC2 right on 2 and 3, final wrong: first one only


def test_select_destructive_errors() -> None:
    labels = np.array([0, 1])
    with pytest.raises(ValueError, match="single exit"):
        select_destructive(np.zeros((1, 2, 2)), labels, 4)
    all_right = np.eye(2)[np.array([[0, 1], [0, 1]])]
    with pytest.raises(ValueError, match="no sample"):
        select_destructive(all_right, labels, 4)


def test_gradcam_figure_grid(tmp_path) -> None:
    from sdn.report.plots import savefig

    pictures = (np.arange(2 * 3 * SIZE * SIZE) % 256).astype(np.uint8).reshape(2, 3, SIZE, SIZE)
    cams = np.random.default_rng(0).random((2, SIZE, SIZE))
    fig = gradcam_figure(pictures, cams, cams, ["a", "b"])
    assert len(fig.axes) == 6 + 1  # the panels and the colour bar
    written = savefig(fig, tmp_path / "gradcam")
    assert [p.name for p in written] == ["gradcam.png", "gradcam.pdf"]
    with pytest.raises(ValueError, match="same non-zero number"):
        gradcam_figure(pictures, cams, cams, ["a"])


def test_cli_gradcam_on_a_tiny_checkpoint(tiny, tmp_path) -> None:
    import csv

    from sdn.cli import main
    from sdn.io import save_torch
    from sdn.models import create

    data = tiny.prepared(tmp_path / "data")
    model = create(tiny.ARCH, num_classes=tiny.CLASSES, input_size=tiny.SIZE, exits="paper")
    meta = {
        "arch": tiny.ARCH,
        "num_classes": tiny.CLASSES,
        "input_size": tiny.SIZE,
        "exit_positions": list(model.exit_positions),
    }
    save_torch({"state_dict": model.state_dict(), "meta": meta}, tmp_path / "model.pt")
    labels = torch.load(data / "test.pt")["labels"].numpy()
    n, num_exits = labels.shape[0], model.num_exits
    preds = np.tile(labels, (num_exits, 1))
    preds[-1] = (labels + 1) % tiny.CLASSES  # final always wrong
    preds[0, :2] = (labels[:2] + 1) % tiny.CLASSES  # IC1 wrong on the first two samples
    np.savez(tmp_path / "outputs.npz", test_logits=np.eye(tiny.CLASSES)[preds].astype(np.float32), test_labels=labels)
    out = tmp_path / "gradcam"
    args = ["gradcam", "--checkpoint", str(tmp_path / "model.pt"), "--data", str(data)]
    assert main([*args, "--outputs", str(tmp_path / "outputs.npz"), "--out", str(out), "--max-samples", "3"]) == 0
    assert (out / "gradcam.png").is_file() and (out / "gradcam.pdf").is_file()
    rows = list(csv.DictReader((out / "samples.csv").open()))
    assert [int(r["index"]) for r in rows] == [2, 3, 4]
    assert all(r["rule"] == "ic1_right_final_wrong" for r in rows)
    assert [int(r["final_prediction"]) for r in rows] == [int(p) for p in preds[-1, 2:5]]
    assert n > 5
    assert main([*args, "--outputs", str(tmp_path / "missing.npz"), "--out", str(out)]) == 2


def test_cli_gradcam_without_a_destructive_sample_writes_an_empty_figure(tiny, tmp_path) -> None:
    """Whether a trained model has such samples is a property of the model: the job reports it and succeeds."""
    import csv

    from sdn.cli import main
    from sdn.io import save_torch
    from sdn.models import create

    data = tiny.prepared(tmp_path / "data")
    model = create(tiny.ARCH, num_classes=tiny.CLASSES, input_size=tiny.SIZE, exits="paper")
    meta = {"arch": tiny.ARCH, "num_classes": tiny.CLASSES, "input_size": tiny.SIZE}
    save_torch({"state_dict": model.state_dict(), "meta": {**meta, "exit_positions": list(model.exit_positions)}},
               tmp_path / "model.pt")  # fmt: skip
    labels = torch.load(data / "test.pt")["labels"].numpy()
    preds = np.tile(labels, (model.num_exits, 1))  # every exit right: nothing is destructive
    np.savez(tmp_path / "outputs.npz", test_logits=np.eye(tiny.CLASSES)[preds].astype(np.float32), test_labels=labels)
    out = tmp_path / "gradcam"
    args = ["gradcam", "--checkpoint", str(tmp_path / "model.pt"), "--data", str(data)]
    assert main([*args, "--outputs", str(tmp_path / "outputs.npz"), "--out", str(out)]) == 0
    assert (out / "gradcam.png").stat().st_size > 0 and (out / "gradcam.pdf").is_file()
    with (out / "samples.csv").open() as f:
        reader = csv.DictReader(f)
        assert list(reader) == [] and reader.fieldnames == ["row", "index", "label", "label_name", "ic1_prediction",
                                                            "final_prediction", "rule"]  # fmt: skip
