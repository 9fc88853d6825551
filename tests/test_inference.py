"""Online early exit: same answers as the offline simulation, with the batch really shrinking at each IC."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sdn.analysis import early_exit as ee
from sdn.analysis.arrays import softmax
from sdn.inference import backbone_forward, early_exit_forward, time_inference

NUM_CLASSES = 4


@pytest.fixture(scope="module")
def setup(tiny_model):
    model = tiny_model()
    x = torch.randn(48, 3, 8, 8)
    with torch.no_grad():
        logits = np.stack([out.numpy() for out in model(x)])
    labels = np.zeros(x.shape[0], dtype=np.int64)
    return model, x, softmax(logits), labels


CASES = [
    ("confidence", 0.3),
    ("confidence", 0.5),
    ("confidence", 0.7),
    ("confidence", 0.9),
    ("entropy", 0.3),
    ("entropy", 0.6),
    ("entropy", 0.85),
    ("patience", 1),
    ("patience", 2),
    ("patience", 3),
]


@pytest.mark.parametrize("fallback", ["final", "most-confident"])
@pytest.mark.parametrize(("policy", "threshold"), CASES)
def test_online_matches_offline(setup, policy, threshold, fallback):
    model, x, probs, labels = setup
    cost = np.array([0.25, 0.5, 0.75, 1.0])
    offline = ee.simulate(probs, labels, cost, policy, threshold, fallback)
    predictions, exit_index = early_exit_forward(model, x, policy, threshold, fallback)
    assert exit_index.tolist() == offline.exit_index.tolist()
    assert predictions.tolist() == offline.predictions.tolist()


def test_cases_cover_every_exit_and_both_fallback_answers(setup):
    _, _, probs, labels = setup
    cost = np.array([0.25, 0.5, 0.75, 1.0])
    seen = set()
    differs = False
    for policy, threshold in CASES:
        final = ee.simulate(probs, labels, cost, policy, threshold, "final")
        best = ee.simulate(probs, labels, cost, policy, threshold, "most-confident")
        seen |= set(final.exit_index.tolist())
        differs |= bool((final.predictions != best.predictions).any())
    assert seen == {0, 1, 2, 3}
    assert differs


def test_batch_shrinks_and_head_sees_only_survivors(setup):
    model, x, probs, labels = setup
    sizes: dict[str, int] = {}
    hooks = [
        module.register_forward_pre_hook(lambda m, args, name=name: sizes.__setitem__(name, args[0].shape[0]))
        for name, module in [*((f"block{i}", b) for i, b in enumerate(model.blocks)), ("head", model.head)]
    ]
    try:
        _, exit_index = early_exit_forward(model, x, "confidence", 0.7)
    finally:
        for hook in hooks:
            hook.remove()
    counts = np.bincount(exit_index.numpy(), minlength=4)
    assert counts[0] > 0 and counts[3] > 0
    # ICs sit after blocks 0, 1, 2: each block after an IC sees only the samples no IC has stopped yet
    assert sizes["block0"] == 48
    assert sizes["block1"] == 48 - counts[0]
    assert sizes["block2"] == 48 - counts[0] - counts[1]
    assert sizes["block3"] == sizes["head"] == counts[3]


def test_everything_exits_early_skips_the_rest(setup):
    model, x, _, _ = setup
    called = []
    hook = model.head.register_forward_pre_hook(lambda m, args: called.append(args[0].shape[0]))
    try:
        predictions, exit_index = early_exit_forward(model, x, "patience", 1)
    finally:
        hook.remove()
    assert exit_index.tolist() == [0] * 48 and called == []
    with torch.no_grad():
        assert predictions.tolist() == model(x)[0].argmax(1).tolist()


def test_restores_training_mode_and_checks_threshold(setup):
    model, x, _, _ = setup
    model.train()
    try:
        early_exit_forward(model, x[:2], "confidence", 0.5)
        assert model.training
    finally:
        model.eval()
    with pytest.raises(ValueError, match="'entropy' must lie in"):
        early_exit_forward(model, x, "entropy", 2.0)


def test_backbone_forward_is_the_final_head(setup):
    model, x, _, _ = setup
    with torch.no_grad():
        assert torch.allclose(backbone_forward(model, x), model(x)[-1])


def test_time_inference_reports_all_variants(setup):
    model, x, _, _ = setup
    result = time_inference(model, x[:10], 4, "confidence", 0.5, "cpu", repeats=1, warmup_batches=1)
    assert result["batch_size"] == 4 and result["num_images"] == 10
    for name in ("cnn", "sdn_full", "early_exit"):
        assert result[name]["median_latency_ms"] > 0 and result[name]["throughput_per_s"] > 0
    assert result["speedup_vs_cnn"] == pytest.approx(
        result["early_exit"]["throughput_per_s"] / result["cnn"]["throughput_per_s"]
    )
    with pytest.raises(ValueError, match="batch_size"):
        time_inference(model, x, 0, "confidence", 0.5)


@pytest.mark.parametrize("fallback", ["final", "most-confident"])
@pytest.mark.parametrize(("policy", "threshold"), CASES)
def test_one_sample_at_a_time_answers_like_the_batch(setup, policy, threshold, fallback):
    model, x, _, _ = setup
    x = x[:20]
    batch_pred, batch_exit = early_exit_forward(model, x, policy, threshold, fallback)
    singles = [early_exit_forward(model, x[i : i + 1], policy, threshold, fallback) for i in range(x.shape[0])]
    assert [int(p) for p, _ in singles] == batch_pred.tolist()
    assert [int(e) for _, e in singles] == batch_exit.tolist()
    assert all(p.shape == (1,) and p.dtype == torch.int64 for p, _ in singles)


@pytest.mark.parametrize("arch", ["mobilenet", "resnet56", "vgg16bn", "tiny"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_deploy_copy_computes_the_same_logits(tiny_model, arch: str, channels_last: bool) -> None:
    from torch import nn

    from sdn.inference import deploy_copy
    from sdn.models import MixedPool, create

    torch.manual_seed(0)
    if arch == "tiny":
        model, size = tiny_model(), 8
    else:
        model, size = create(arch, num_classes=10, input_size=32).eval(), 32
        for module in model.modules():  # trained-looking statistics, so the folding has something to fold
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.3, 0.3)
                module.running_var.uniform_(0.5, 2.0)
    x = torch.randn(3, 3, size, size)
    with torch.no_grad():
        expected = model(x)
        fast = deploy_copy(model, channels_last=channels_last)
        got = fast(x.contiguous(memory_format=torch.channels_last) if channels_last else x)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.blocks.modules()) or arch == "tiny"
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # the original is untouched
    assert not any(isinstance(m, MixedPool) for m in fast.modules())
    for original, deployed in zip(model.exits, fast.exits, strict=True):  # a 4x4 map's pool (kernel 1) is skipped
        unit = isinstance(original.pool, MixedPool) and original.pool.is_identity
        assert isinstance(deployed.pool, nn.Identity) == (unit or isinstance(original.pool, nn.Identity))
    for e, g in zip(expected, got, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4)


def test_inference_pool_skips_only_a_mixed_pool_of_kernel_1() -> None:
    from torch import nn

    from sdn.models.exits import MixedPool, inference_pool

    torch.manual_seed(0)
    x = torch.randn(2, 8, 4, 4)
    unit, halving = MixedPool(1), MixedPool(2)
    with torch.no_grad():
        unit.alpha_param.fill_(0.7)
    assert unit.is_identity and not halving.is_identity
    assert isinstance(inference_pool(unit), nn.Identity)
    assert inference_pool(halving) is halving
    gap = nn.AdaptiveAvgPool2d(1)
    assert inference_pool(gap) is gap
    with torch.no_grad():
        torch.testing.assert_close(inference_pool(unit)(x), unit(x), rtol=1e-6, atol=1e-6)
