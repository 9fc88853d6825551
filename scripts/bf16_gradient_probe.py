"""How far do one batch's gradients in bf16 autocast (and in fp32) stray from fp64? A probe on the CPU or a GPU.

    python scripts/bf16_gradient_probe.py --data PREPARED --arch resnet56 [--checkpoint last.pt] [--recipe cnn]

Builds ``--arch`` for ``--recipe`` (freshly initialised, or with the weights of ``--checkpoint``: a ``model.pt`` or a
``last.pt``), takes one augmented training batch of ``PREPARED`` (a folder from ``sdn prepare-data``) and computes the
recipe's loss gradient three times from the same weights: in fp64 (the reference), in fp32 and under bf16 autocast
(what the fast engine trains with on a GPU, and ``sdn train --amp`` on a CPU). It prints, for fp32 and bf16, the
relative L2 error of the first layer's, a middle layer's and the last layer's weight gradient and of the whole
gradient, and the cosine between the whole gradient and fp64's. docs/cpu-bf16.md reads these numbers.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sdn import io  # noqa: E402
from sdn.config import paper_recipe  # noqa: E402
from sdn.data import load_prepared  # noqa: E402
from sdn.device import resolve_device  # noqa: E402
from sdn.train import build_model, epoch_batches, exit_weights, loss_fn, seed_everything  # noqa: E402


def gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor, weights: list[float], *, dtype: torch.dtype,
              bf16: bool) -> dict[str, torch.Tensor]:  # fmt: skip
    """Each parameter's gradient (as fp64) of the weighted loss, computed in ``dtype`` or under bf16 autocast."""
    model = copy.deepcopy(model).to(dtype).train()
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
        outputs = model(x.to(dtype))
    loss_fn([o.double() for o in outputs], y, weights).backward()
    return {n: p.grad.double() for n, p in model.named_parameters() if p.grad is not None}


def relative_error(reference: torch.Tensor, other: torch.Tensor) -> float:
    return float((reference - other).norm() / reference.norm().clamp_min(1e-300))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, type=Path, help="a prepared data folder (sdn prepare-data)")
    parser.add_argument("--arch", default="resnet56")
    parser.add_argument("--recipe", default="cnn", choices=("cnn", "sdn"))
    parser.add_argument("--checkpoint", type=Path, help="a model.pt or last.pt of that arch and recipe")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0, help="the initialisation and the batch")
    args = parser.parse_args()

    device = resolve_device(args.device, False)
    data = load_prepared(args.data)
    recipe = paper_recipe(args.recipe, args.arch)
    seed_everything(args.seed)
    model = build_model(args.arch, recipe, num_classes=data.info.num_classes, input_size=data.info.input_size)
    if args.checkpoint is not None:
        payload = io.load_torch(args.checkpoint)
        state = payload.get("state_dict", payload.get("model"))
        if state is None:
            raise SystemExit(f"error: {args.checkpoint} holds no state_dict (model.pt) or model (last.pt)")
        model.load_state_dict(state)
    model = model.to(device)
    batches = epoch_batches("fast", data.split("train"), data.info, batch_size=recipe.batch_size, seed=args.seed,
                            device=device)  # fmt: skip
    x, y = next(iter(batches(1)))
    weights = exit_weights(recipe, 1, model.num_exits)
    reference = gradients(model, x, y, weights, dtype=torch.float64, bf16=False)
    names = [n for n in reference if n.endswith("weight") and reference[n].dim() > 1]  # conv and linear weights
    picked = {"first": names[0], "middle": names[len(names) // 2], "last": names[-1]}
    whole = torch.cat([g.flatten() for g in reference.values()])
    state = "trained: " + args.checkpoint.name if args.checkpoint else f"initialised (seed {args.seed})"
    print(f"{args.arch} {args.recipe}, {state}; batch of {len(y)}; relative L2 error against fp64")
    print("       " + "  ".join(f"{k} ({v})" for k, v in picked.items()))
    for label, bf16 in (("fp32", False), ("bf16", True)):
        grads = gradients(model, x, y, weights, dtype=torch.float32, bf16=bf16)
        parts = "  ".join(f"{k} {relative_error(reference[v], grads[v]):.4f}" for k, v in picked.items())
        other = torch.cat([grads[n].flatten() for n in reference])
        cosine = float(torch.nn.functional.cosine_similarity(whole, other, dim=0))
        print(f"{label}:  {parts}  whole {relative_error(whole, other):.4f}  cosine {cosine:.4f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
