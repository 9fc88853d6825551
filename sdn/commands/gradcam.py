"""``sdn gradcam``: Grad-CAM of the first IC vs the final classifier on destructive samples (a figure grid)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from sdn.device import DEVICE_CHOICES

log = logging.getLogger(__name__)

NAME = "gradcam"
HELP = "Grad-CAM of IC1 vs the final classifier on samples IC1 gets right and the final head gets wrong."
SAMPLE_COLUMNS = ("row", "index", "label", "label_name", "ic1_prediction", "final_prediction", "rule")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="SDN model.pt (with internal classifiers)")
    parser.add_argument("--data", required=True, help="prepared data folder the outputs were computed on")
    parser.add_argument("--outputs", required=True, help="outputs.npz of the same model (sdn evaluate)")
    parser.add_argument("--out", required=True, help="folder for gradcam.{png,pdf} and samples.csv")
    parser.add_argument("--split", default="test", help="split to draw samples from")
    parser.add_argument("--max-samples", type=int, default=8, help="rows of the figure")
    parser.add_argument("--device", default="auto", help=f"one of {', '.join(DEVICE_CHOICES)} or cuda:N")


def run(args: argparse.Namespace) -> int:
    from sdn.device import resolve_device

    make_gradcam(
        args.checkpoint,
        args.data,
        args.outputs,
        args.out,
        split=args.split,
        max_samples=args.max_samples,
        device=str(resolve_device(args.device, allow_cpu_fallback=True)),
    )
    return 0


def make_gradcam(
    checkpoint: str | Path,
    data_dir: str | Path,
    outputs: str | Path,
    out_dir: str | Path,
    *,
    split: str = "test",
    max_samples: int = 8,
    device: str = "cpu",
) -> pd.DataFrame:
    """Select destructive samples from the cached outputs, compute both CAMs, write the figure and samples.csv."""
    import torch

    from sdn.analysis.gradcam import NoDestructiveSampleError, grad_cam, gradcam_figure, select_destructive
    from sdn.checkpoint import load_checkpoint
    from sdn.data import DeviceLoader, TensorSplit, load_prepared
    from sdn.io import write_text
    from sdn.outputs import load, load_split
    from sdn.report.labels import label_of_outputs
    from sdn.report.plots import new_figure, savefig

    outputs_file = Path(outputs)
    logits, labels = load_split(load(outputs_file), split)
    data = load_prepared(data_dir)
    samples = data.split(split)
    if not np.array_equal(samples.labels.numpy(), labels):
        raise ValueError(f"{outputs_file} was not computed on the {split!r} split of {data_dir}: labels differ")
    model, meta = load_checkpoint(checkpoint, device)
    if model.num_exits < 2:
        raise ValueError(f"{checkpoint} has no internal classifier: Grad-CAM compares IC1 with the final head")
    if logits.shape[0] != model.num_exits:
        raise ValueError(f"{outputs_file} holds {logits.shape[0]} exits but {checkpoint} has {model.num_exits}")

    out = Path(out_dir)
    try:
        chosen = select_destructive(logits, labels, max_samples)
    except NoDestructiveSampleError as err:  # a property of the model: report it, do not fail the job
        log.warning("Grad-CAM: %s in the %s split of %s; writing an empty figure", err, split, outputs_file)
        fig, ax = new_figure(figsize=(6, 1.5))
        ax.axis("off")
        ax.text(0.5, 0.5, f"Grad-CAM: {err}\n({split} split)", ha="center", va="center", wrap=True)
        savefig(fig, out / "gradcam")
        table = pd.DataFrame(columns=SAMPLE_COLUMNS)
        write_text(out / "samples.csv", table.to_csv(index=False))
        return table
    index = torch.from_numpy(chosen.indices)
    subset = TensorSplit(images=samples.images[index], labels=samples.labels[index])
    loader = DeviceLoader(
        subset, data.info, batch_size=len(subset), shuffle=False, augment=False, device=device, seed=0
    )
    inputs, _ = next(iter(loader))
    predictions = logits[:, chosen.indices].argmax(axis=-1)  # [E, n]
    first_pred, final_pred = predictions[0].tolist(), predictions[-1].tolist()
    cams_first = grad_cam(model, inputs, exit_index=0, target_classes=first_pred)
    cams_final = grad_cam(model, inputs, exit_index=-1, target_classes=final_pred)

    classes = list(data.info.classes)
    table = pd.DataFrame(
        {  # the columns of SAMPLE_COLUMNS
            "row": np.arange(len(subset)),
            "index": chosen.indices,
            "label": subset.labels.numpy(),
            "label_name": [classes[int(c)] for c in subset.labels],
            "ic1_prediction": first_pred,
            "final_prediction": final_pred,
            "rule": chosen.rule,
        }
    )
    titles = [
        f"#{i}: true {classes[t]}\nIC1 {classes[a]} / final {classes[b]}"
        for i, t, a, b in zip(chosen.indices, table["label"], first_pred, final_pred, strict=True)
    ]
    label = label_of_outputs(outputs_file)
    savefig(gradcam_figure(subset.images.numpy(), cams_first, cams_final, titles), out / "gradcam", label=label)
    write_text(out / "samples.csv", table.to_csv(index=False))
    log.info("Grad-CAM of %d samples (%s) -> %s", len(subset), chosen.rule, out)
    return table
