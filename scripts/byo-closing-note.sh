#!/usr/bin/env bash
# Off-the-shelf conversion on real images (issue 15's closing note): train torchvision's resnet18 as a plain CNN on a
# subset of CIFAR-10 JPEGs, save it as a local state dict in torchvision's own key layout, load it as --weights and
# train only the ICs on the frozen backbone, then evaluate and choose early-exit thresholds on the held-out split.
# Usage: scripts/byo-closing-note.sh <cifar10-jpeg folder> <work folder>   (SDN_* env: see the defaults below)
set -euo pipefail
SRC=${1:?cifar10-jpeg folder (train/ and test/)}
WORK=${2:?work folder}
ARCH=${SDN_ARCH:-torchvision/resnet18}
PY=${PYTHON:-python}
export SDN_TRACKING=off
mkdir -p "$WORK"
$PY -m sdn prepare-data --dataset imagefolder --local-path "$SRC" --out "$WORK/data" \
  --max-train "${SDN_MAX_TRAIN:-4000}" --holdout "${SDN_HOLDOUT:-1000}" --max-test "${SDN_MAX_TEST:-2000}"
$PY -m sdn train --recipe cnn --arch "$ARCH" --data "$WORK/data" --out "$WORK/cnn" --device cpu \
  --epochs "${SDN_CNN_EPOCHS:-6}" ${SDN_CNN_ARGS:-}
$PY - "$ARCH" "$WORK" <<'PYEOF'
import sys
import torch
from sdn.checkpoint import read
from sdn.models.external import original_state_dict
arch, work = sys.argv[1], sys.argv[2]
state, meta = read(f"{work}/cnn/model.pt")
weights = original_state_dict(arch, state, num_classes=meta["num_classes"], input_size=meta["input_size"])
torch.save(weights, f"{work}/pretrained.pth")
print(f"{work}/pretrained.pth: {len(weights)} tensors in the original network's key layout")
PYEOF
$PY -m sdn train --recipe ic_only --arch "$ARCH" --data "$WORK/data" --out "$WORK/ic_only" --device cpu \
  --weights "$WORK/pretrained.pth" --epochs "${SDN_IC_EPOCHS:-4}" --exits "${SDN_EXITS:-paper}" ${SDN_IC_ARGS:-}
for v in cnn ic_only; do
  $PY -m sdn evaluate --checkpoint "$WORK/$v/model.pt" --data "$WORK/data" --out "$WORK/$v/eval/outputs.npz" --device cpu
done
$PY -m sdn early-exit --outputs "$WORK/ic_only/eval/outputs.npz" --cnn-outputs "$WORK/cnn/eval/outputs.npz" \
  --out "$WORK/ic_only/early_exit" --policies confidence
