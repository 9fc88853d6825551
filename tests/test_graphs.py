"""The CUDA-graph training step: its loss matches the eager loss; it refuses a CPU model (no GPU here)."""

import pytest
import torch
from torch import nn

from sdn.graphs import GraphedTrainStep, weighted_loss
from sdn.train import loss_fn


def test_weighted_loss_matches_eager_loss() -> None:
    gen = torch.Generator().manual_seed(0)
    outputs = [torch.randn(8, 5, generator=gen) for _ in range(3)]
    labels = torch.randint(0, 5, (8,), generator=gen)
    weights = [0.25, 0.0, 1.0]
    expected = loss_fn(outputs, labels, weights)
    got = weighted_loss(outputs, labels, torch.tensor(weights), [w != 0 for w in weights])
    torch.testing.assert_close(got, expected)


def test_graphed_step_needs_cuda() -> None:
    model = nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="CUDA"):
        GraphedTrainStep(model, optimizer, num_outputs=1, active=[True], amp=False, channels_last=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_graphed_step_equals_eager_steps_on_gpu() -> None:
    torch.manual_seed(0)
    eager_model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3)).cuda()
    graph_model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3)).cuda()
    graph_model.load_state_dict(eager_model.state_dict())
    opt_e = torch.optim.SGD(eager_model.parameters(), lr=0.1, momentum=0.9)
    opt_g = torch.optim.SGD(graph_model.parameters(), lr=0.1, momentum=0.9)

    class Wrap(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
            return [self.inner(x)]

    step = GraphedTrainStep(Wrap(graph_model), opt_g, num_outputs=1, active=[True], amp=False, channels_last=False)
    step.set_weights([1.0])
    for _ in range(5):
        x = torch.randn(4, 6, device="cuda")
        y = torch.randint(0, 3, (4,), device="cuda")
        opt_e.zero_grad()
        loss_fn([eager_model(x)], y, [1.0]).backward()
        opt_e.step()
        step(x, y)
    for a, b in zip(eager_model.parameters(), graph_model.parameters(), strict=True):
        torch.testing.assert_close(a, b)
