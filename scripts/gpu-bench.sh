#!/usr/bin/env bash
# GPU check in at most 8 minutes, no network, no snakemake/mlflow needed: runs `sdn bench` (reference vs fast
# engine, 4 architectures) and a real-data check (ResNet-56 SDN training on the CIFAR-10 JPEG archive with both
# engines, same schedule and seed; per-exit test accuracy; online early-exit timing), writing JSON to OUT_DIR.
#
#   scripts/gpu-bench.sh OUT_DIR [CIFAR10_JPEG_TAR_GZ]
#
# Environment: EPOCHS (real-data schedule, default 10), DEVICE (default cuda), SMALL=1 (tiny sizes, for a CPU dry run),
# BUDGET_S (default 470: every stage's time limit is cut to what is left of it, so the whole run ends within 8 min).
# Each stage's wall time goes to OUT_DIR/stages.tsv.
set -uo pipefail
out=${1:?usage: scripts/gpu-bench.sh OUT_DIR [cifar10-jpeg.tar.gz]}
archive=${2:-}
here=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out"
out=$(cd "$out" && pwd)
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 SDN_TRACKING=off
py=${PYTHON:-python3}
device=${DEVICE:-cuda}
epochs=${EPOCHS:-10}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
log() { echo "[gpu-bench $(date +%H:%M:%S)] $*"; }
deadline=$(( $(date +%s) + ${BUDGET_S:-470} ))
# limit SECONDS: the smaller of SECONDS and what is left of the budget (at least 1)
limit() { local left=$(( deadline - $(date +%s) )); [ "$left" -lt "$1" ] && echo $(( left > 1 ? left : 1 )) || echo "$1"; }
printf 'stage\twall_s\trc\n' > "$out/stages.tsv"
# stage NAME SECONDS COMMAND...: run COMMAND under the budget-cut time limit and record its wall time and status
stage() {
  local name=$1 seconds; seconds=$(limit "$2"); shift 2
  local start; start=$(date +%s.%N)
  timeout "$seconds" "$@"; local rc=$?
  awk -v n="$name" -v a="$start" -v b="$(date +%s.%N)" -v rc="$rc" 'BEGIN { printf "%s\t%.1f\t%s\n", n, b - a, rc }' \
    >> "$out/stages.tsv"
  return $rc
}

if [ -z "$archive" ]; then
  for candidate in "$here/.gpu/cifar10-jpeg.tar.gz" "$here/../shared/data/cifar10-jpeg.tar.gz"; do
    [ -f "$candidate" ] && archive=$candidate && break
  done
fi

if [ "${SMALL:-0}" = 1 ]; then
  bench_args=(--archs resnet56,mobilenet --steps 2 --warmup 1 --windows 1 --workers 0 --batch-size 16
              --concurrent-jobs 2 --concurrent-seconds 1 --concurrent-archs mobilenet)
  prep_args=(--max-train 600 --max-test 200 --holdout 100)
  train_args=(--batch-size 64)
else
  # two jobs sharing the GPU are timed for the small networks, which leave it partly idle
  bench_args=(--archs resnet56,mobilenet,vgg16bn,wrn32_4 --steps 20 --warmup 5 --windows 3
              --concurrent-jobs 2 --concurrent-seconds 8 --concurrent-archs resnet56,mobilenet)
  prep_args=()
  train_args=()
fi

{ nvidia-smi || true; $py -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())'; } \
  > "$out/environment.txt" 2>&1

log "1/3 sdn bench"
stage bench 230 $py -m sdn bench --device "$device" "${bench_args[@]}" --json-out "$out/bench.json" \
  > "$out/bench.log" 2>&1 || log "bench failed or timed out (see bench.log)"
tail -n 12 "$out/bench.log"

if [ -z "$archive" ] || [ ! -f "$archive" ]; then
  log "no CIFAR-10 JPEG archive given or found: skipping the real-data check"
  exit 0
fi

log "2/3 prepare CIFAR-10 (JPEG) from $archive"
stage extract 60 tar -xzf "$archive" -C "$work"
root=$(find "$work" -maxdepth 2 -type d -name train -printf '%h\n' | head -n 1)
stage prepare 60 $py -m sdn prepare-data --dataset imagefolder --data-root "$root" --out "$work/c10" "${prep_args[@]}" \
  > "$out/prepare.log" 2>&1 || { log "prepare failed"; tail -n 20 "$out/prepare.log"; exit 1; }

log "3/3 ResNet-56 SDN training, $epochs epochs, fast then reference engine"
for engine in fast reference; do
  start=$(date +%s.%N)
  seconds=75; [ "$engine" = reference ] && seconds=150
  stage "train-$engine" "$seconds" $py -m sdn train --recipe sdn --arch resnet56 --data "$work/c10" --out "$work/r56-$engine" \
    --epochs "$epochs" --seed 0 --device "$device" --engine "$engine" "${train_args[@]}" \
    > "$out/train-$engine.log" 2>&1 || log "$engine training failed or timed out (see train-$engine.log)"
  end=$(date +%s.%N)
  awk -v e="$engine" -v a="$start" -v b="$end" 'BEGIN { printf "{\"engine\": \"%s\", \"wall_s\": %.2f}\n", e, b - a }' \
    > "$out/train-$engine-wall.json"
  if [ -f "$work/r56-$engine/model.pt" ]; then
    cp "$work/r56-$engine/history.csv" "$out/history-$engine.csv"
    stage "evaluate-$engine" 30 $py -m sdn evaluate --checkpoint "$work/r56-$engine/model.pt" --data "$work/c10" \
      --out "$work/r56-$engine/outputs.npz" --device "$device" >> "$out/train-$engine.log" 2>&1
    cp "$work/r56-$engine/metrics.json" "$out/metrics-$engine.json" 2>/dev/null
  fi
  tail -n 4 "$out/train-$engine.log"
done

if [ -f "$work/r56-fast/model.pt" ]; then
  log "online early exit on the trained ResNet-56 SDN"
  stage early-exit 45 $py -m sdn bench --device "$device" --archs "" --recipes "" \
    --early-exit-checkpoint "$work/r56-fast/model.pt" --early-exit-data "$work/c10" \
    --json-out "$out/early-exit.json" > "$out/early-exit.log" 2>&1 || log "early-exit timing failed (see log)"
  tail -n 3 "$out/early-exit.log"
fi
$py - "$out" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
summary = {}
for engine in ("fast", "reference"):
    m = out / f"metrics-{engine}.json"
    if m.exists():
        summary[engine] = json.loads(m.read_text())["splits"]["test"]["top1"]
if len(summary) == 2:
    summary["max_abs_diff_points"] = max(abs(a - b) for a, b in zip(summary["fast"], summary["reference"]))
(out / "parity.json").write_text(json.dumps(summary, indent=2))
print("per-exit test top-1:", json.dumps(summary))
PY
log done
