"""Segment-by-segment early exit (the batch-1 latency path): same answers as the online early exit.

The segments run eagerly on a CPU (``use_graphs=False``); the CUDA test replays them as graphs.
"""

from __future__ import annotations

import pytest
import torch

from sdn.graphed_inference import GraphedEarlyExit, fused_exit_logits
from sdn.inference import early_exit_forward
from sdn.models import create
from sdn.models.exits import InternalClassifier

THRESHOLDS = [0.3, 0.5, 0.7, 0.9, 0.99]


@pytest.mark.parametrize("alpha_mode", ["bounded", "original"])
@pytest.mark.parametrize("spatial", [16, 3])  # pooled (MixedPool) and unpooled (Identity) heads
@pytest.mark.parametrize("ic_head", ["paper", "gap"])  # gap: global average pooling at any size
def test_fused_exit_logits_equal_the_head(alpha_mode: str, spatial: int, ic_head: str) -> None:
    torch.manual_seed(1)
    head = InternalClassifier(8, spatial, spatial, 5, alpha_mode=alpha_mode, head=ic_head).eval()  # type: ignore[arg-type]
    with torch.no_grad():
        if hasattr(head.pool, "alpha_param"):
            head.pool.alpha_param.fill_(0.3)
            alpha = head.pool.alpha.detach()
        else:
            alpha = None
        h = torch.randn(4, 8, spatial, spatial)
        torch.testing.assert_close(fused_exit_logits(head, alpha, h), head(h), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("threshold", THRESHOLDS)
def test_batch1_segments_answer_like_online_early_exit(tiny_model, threshold: float) -> None:
    model = tiny_model()
    x = torch.randn(40, 3, 8, 8)
    online_pred, online_exit = early_exit_forward(model, x, "confidence", threshold)
    runner = GraphedEarlyExit(model, x[:1], threshold, use_graphs=False)
    answers = [runner(x[i : i + 1]) for i in range(x.shape[0])]
    assert [int(p[0]) for p, _ in answers] == online_pred.tolist()
    assert [k for _, k in answers] == online_exit.tolist()


def test_exits_spread_and_cnn_is_the_final_head(tiny_model) -> None:
    model = tiny_model()
    x = torch.randn(40, 3, 8, 8)
    runner = GraphedEarlyExit(model, x[:1], 0.7, use_graphs=False)
    exits = {runner(x[i : i + 1])[1] for i in range(x.shape[0])}
    assert len(exits) >= 3  # the cases above are not all decided at one exit
    with torch.no_grad():
        final = model(x)[-1].argmax(1)
    assert [int(runner.cnn(x[i : i + 1])[0]) for i in range(x.shape[0])] == final.tolist()


def test_fixed_batch_leaves_where_every_sample_is_confident(tiny_model) -> None:
    model = tiny_model()
    x = torch.randn(6, 3, 8, 8)
    threshold = 0.6
    with torch.no_grad():
        outputs = model(x)
    confident = [bool((o.softmax(1).max(1).values >= threshold).all()) for o in outputs[:-1]]
    expected_exit = confident.index(True) if any(confident) else len(outputs) - 1
    pred, k = GraphedEarlyExit(model, x, threshold, use_graphs=False)(x)
    assert k == expected_exit
    assert pred.tolist() == outputs[k].argmax(1).tolist()


def test_resnet56_segments_cover_the_whole_network() -> None:
    torch.manual_seed(0)
    model = create("resnet56", num_classes=10, input_size=32, exits="paper").eval()
    x = torch.randn(8, 3, 32, 32)
    runner = GraphedEarlyExit(model, x[:1], 0.9, use_graphs=False)
    online_pred, online_exit = early_exit_forward(model, x, "confidence", 0.9)
    answers = [runner(x[i : i + 1]) for i in range(x.shape[0])]
    assert [k for _, k in answers] == online_exit.tolist()
    assert [int(p[0]) for p, _ in answers] == online_pred.tolist()
    assert runner.host_copy is False  # no graphs, nothing captured


def test_bad_arguments(tiny_model) -> None:
    model = tiny_model()
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(ValueError, match="CUDA graphs need CUDA inputs"):
        GraphedEarlyExit(model, x, 0.5, use_graphs=True)
    with pytest.raises(ValueError, match="threshold must be in"):
        GraphedEarlyExit(model, x, 1.5, use_graphs=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("host_copy", [True, False])
def test_graphs_answer_like_eager_segments_on_gpu(tiny_model, host_copy: bool) -> None:
    model = tiny_model().cuda()
    x = torch.randn(24, 3, 8, 8, device="cuda")
    graphed = GraphedEarlyExit(model, x[:1], 0.7, host_copy=host_copy)
    eager = GraphedEarlyExit(model, x[:1], 0.7, use_graphs=False)
    for i in range(x.shape[0]):
        g_pred, g_exit = graphed(x[i : i + 1])
        e_pred, e_exit = eager(x[i : i + 1])
        assert (int(g_pred[0]), g_exit) == (int(e_pred[0]), e_exit)
        assert int(graphed.cnn(x[i : i + 1])[0]) == int(eager.cnn(x[i : i + 1])[0])
