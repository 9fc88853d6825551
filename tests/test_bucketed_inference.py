"""Batched early exit at fixed padded batch sizes: the answers of the online early exit, every step at a bucket.

The steps run eagerly on a CPU (``use_graphs=False``); the CUDA test replays them as graphs.
"""

from __future__ import annotations

import pytest
import torch

from sdn.bucketed_inference import BucketedEarlyExit, default_buckets
from sdn.inference import early_exit_forward


def test_default_buckets() -> None:
    assert default_buckets(1) == (1,)
    assert default_buckets(64) == (1, 2, 4, 8, 16, 32, 64)
    assert default_buckets(48) == (1, 2, 4, 8, 16, 32, 48)


@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.6, 0.9, 1.0])
def test_answers_like_online_early_exit_at_bucket_sizes(tiny_model, threshold: float) -> None:
    model = tiny_model()
    x = torch.randn(40, 3, 8, 8)
    runner = BucketedEarlyExit(model, threshold, max_batch=32, buckets=(1, 4, 8, 16), use_graphs=False)
    for batch in (x[:32], x[32:], x[5:6], x[7:20]):
        expected_pred, expected_exit = early_exit_forward(model, batch, "confidence", threshold)
        pred, exits = runner(batch)
        assert exits.tolist() == expected_exit.tolist()
        assert pred.tolist() == expected_pred.tolist()
        assert set(runner.step_sizes) <= {1, 4, 8, 16, 32}
        counts = [int((expected_exit >= k).sum()) for k in range(model.num_exits)]
        for size, running in zip(runner.step_sizes, counts, strict=False):  # the smallest bucket holding them
            assert size == min(b for b in (1, 4, 8, 16, 32) if b >= running)


def test_exits_spread(tiny_model) -> None:
    model = tiny_model()
    x = torch.randn(40, 3, 8, 8)
    _, exits = BucketedEarlyExit(model, 0.7, max_batch=40, use_graphs=False)(x)
    assert len(set(exits.tolist())) >= 3


def test_bad_arguments(tiny_model) -> None:
    model = tiny_model()
    runner = BucketedEarlyExit(model, 0.5, max_batch=4, use_graphs=False)
    with pytest.raises(ValueError, match="batch of 5 images; this runner takes 1 to 4"):
        runner(torch.randn(5, 3, 8, 8))
    with pytest.raises(ValueError):
        BucketedEarlyExit(model, 1.5, max_batch=4, use_graphs=False)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA graphs need"):
            BucketedEarlyExit(model, 0.5, max_batch=4, use_graphs=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_graphs_answer_like_online_early_exit_on_gpu(tiny_model) -> None:
    model = tiny_model().cuda()
    x = torch.randn(64, 3, 8, 8, device="cuda")
    runner = BucketedEarlyExit(model, 0.7, max_batch=64)
    for batch in (x, x[:13], x[:1]):
        expected_pred, expected_exit = early_exit_forward(model, batch, "confidence", 0.7)
        pred, exits = runner(batch)
        assert exits.tolist() == expected_exit.tolist() and pred.tolist() == expected_pred.tolist()


def test_bench_row_compares_with_the_cnn(tiny_model) -> None:
    """The bench's CUDA-graph row, run eagerly on a CPU: full batches only, answers checked against the given ones."""
    from types import SimpleNamespace

    import numpy as np

    from sdn.bench import _bucketed_rows

    model = tiny_model()
    x = torch.randn(40, 3, 8, 8)
    pred, exits = early_exit_forward(model, x, "confidence", 0.7)
    offline = SimpleNamespace(predictions=pred.numpy(), exit_index=exits.numpy())
    costs = np.array([0.25, 0.5, 0.75, 1.0])
    (row,) = _bucketed_rows(model, x, 0.7, 16, costs, offline, repeats=1)
    assert row["num_images"] == 32 and row["batch_size"] == 16
    assert row["exit_mismatches_vs_offline"] == 0 and row["prediction_mismatches_vs_offline"] == 0
    assert row["predicted_saving"] == pytest.approx(1 - costs[exits[:32].numpy()].mean())
