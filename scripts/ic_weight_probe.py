"""Is SDN training stable at a given point of the paper's IC loss-weight schedule? A probe on the CPU or a GPU.

    python scripts/ic_weight_probe.py --data PREPARED --arch wrn32_4 --at-epoch 10 --steps 60

Trains ``--arch`` from scratch with the paper's SDN recipe (SGD, lr 0.1, momentum, the arch's weight decay, batch
128) for ``--steps`` steps, holding the IC loss weights at those of epoch ``--at-epoch`` of the 100-epoch schedule
(tau_i = 0.01 + e * C_i / 100). It prints the weighted loss, each exit's cross-entropy and largest |logit| every few
steps and stops early when the loss diverges (non-finite or above sdn.train.DIVERGED_LOSS, as ``sdn train`` does).
From scratch is harsher than the schedule itself, which raises the weights while the network trains; a network that
stays finite here is safe at that epoch's weights, one that diverges here may or may not diverge in the real run.
``PREPARED`` is a folder from ``sdn prepare-data`` (for instance of the CIFAR-10 JPEG archive). ``--clip-grad-norm``
tries the remedy ``sdn train --clip-grad-norm`` offers.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sdn.config import paper_recipe  # noqa: E402
from sdn.data import load_prepared  # noqa: E402
from sdn.device import resolve_device  # noqa: E402
from sdn.graphs import clip_gradients  # noqa: E402
from sdn.train import (  # noqa: E402
    DIVERGED_LOSS,
    build_model,
    build_optimizer,
    epoch_batches,
    exit_weights,
    seed_everything,
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, type=Path, help="a prepared data folder (sdn prepare-data)")
    parser.add_argument("--arch", default="wrn32_4")
    parser.add_argument("--at-epoch", type=int, default=1, help="hold the IC loss weights of this epoch (1-100)")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--alpha-mode", default="bounded", choices=("bounded", "original"))
    parser.add_argument("--clip-grad-norm", type=float, help="clip each step's gradients to this global L2 norm")
    parser.add_argument("--lr", type=float, help="another learning rate than the paper's 0.1")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--every", type=int, default=10, help="print every N steps (and each of the first 5)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    device = resolve_device(args.device, False)
    data = load_prepared(args.data)
    recipe = paper_recipe("sdn", args.arch)
    if args.lr is not None:
        recipe = recipe.with_overrides({"lr": args.lr})
    seed_everything(args.seed)
    model = build_model(
        args.arch, recipe, num_classes=data.info.num_classes, input_size=data.info.input_size,
        alpha_mode=args.alpha_mode,
    ).to(device)  # fmt: skip
    optimizer = build_optimizer(list(model.parameters()), recipe, device)
    batches = epoch_batches("fast", data.split("train"), data.info, batch_size=recipe.batch_size, seed=args.seed,
                            device=device)  # fmt: skip
    weights = exit_weights(recipe, args.at_epoch, model.num_exits)
    print(f"{args.arch}: IC loss weights of epoch {args.at_epoch}: {' '.join(f'{w:.3f}' for w in weights[:-1])}; "
          f"lr {recipe.lr}; gradient clipping {args.clip_grad_norm or 'none'}", flush=True)  # fmt: skip
    model.train()
    step, started = 0, time.monotonic()
    for epoch in range(1, 1000):
        for x, y in batches(epoch):
            outputs = model(x)
            losses = [F.cross_entropy(o.float(), y) for o in outputs]
            loss = sum(w * c for w, c in zip(weights, losses, strict=True))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            clip_gradients(optimizer, args.clip_grad_norm)
            optimizer.step()
            step += 1
            value = float(loss.detach())
            diverged = not math.isfinite(value) or value > DIVERGED_LOSS
            if step <= 5 or step % args.every == 0 or diverged or step == args.steps:
                ces = " ".join(f"{float(c.detach()):.3g}" for c in losses)
                peaks = " ".join(f"{float(o.detach().abs().max()):.3g}" for o in outputs)
                print(f"step {step:4d} {time.monotonic() - started:6.0f} s  loss {value:.3g}  CE per exit [{ces}]  "
                      f"max |logit| [{peaks}]", flush=True)  # fmt: skip
            if diverged:
                print(f"diverged at step {step}")
                return 1
            if step >= args.steps:
                print(f"finite for {step} steps")
                return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
