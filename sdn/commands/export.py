"""``sdn export``: a trained SDN as ONNX graphs cut at its exits, for the ONNX Runtime early-exit runner."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

NAME = "export"
HELP = (
    "Export a trained model.pt for deployment: --format onnx writes one ONNX graph per segment (the blocks up to an "
    "exit and that exit's classifier), the final segment, the plain CNN, one graph per exit policy that stops each "
    "image at its exit (early_exit_<policy>.onnx: inputs x and threshold, output answer = exit * classes + class) "
    "and manifest.json; run them with sdn.export_onnx.OnnxEarlyExit (ONNX Runtime, online early exit)."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", required=True, choices=("onnx",), help="export format")
    parser.add_argument("--checkpoint", required=True, help="trained model.pt (sdn train)")
    parser.add_argument("--out", required=True, help="output folder (created; its graphs are replaced)")
    parser.add_argument(
        "--ic-weights",
        choices=("float32", "int8"),
        default="float32",
        help="how the ICs' linear layers are stored: float32 (default; logits equal PyTorch's) or int8 (one scale "
        "per class, inputs quantized per image: faster at batch 1 where the ICs' weights are large, such as 100 "
        "classes; an approximation whose exits may differ from the float model's for a few images; the backbone "
        "and the final head stay float32)",
    )


def run(args: argparse.Namespace) -> int:
    checkpoint = Path(args.checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"--checkpoint {checkpoint} not found: pass a model.pt written by sdn train")
    for package in ("onnx", "onnxruntime"):  # an optional extra
        if importlib.util.find_spec(package) is None:
            raise ImportError(f"sdn export --format onnx needs the package {package}: pip install 'sdn[onnx]'")
    from sdn import export_onnx

    manifest = export_onnx.export_checkpoint(checkpoint, args.out, ic_weights=args.ic_weights)
    listed = f"{manifest.name} lists the graphs; IC weights {args.ic_weights}"
    print(f"exported {checkpoint} to {manifest.parent} ({listed})")
    return 0
