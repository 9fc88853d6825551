#!/usr/bin/env bash
# GPU check in at most 8 minutes, no network, no snakemake/mlflow needed: runs `sdn bench` (reference vs fast
# engine, 4 architectures) and a real-data check (ResNet-56 SDN training on the CIFAR-10 JPEG archive with both
# engines, same schedule and seed; per-exit test accuracy; online early-exit timing), writing JSON to OUT_DIR.
#
#   scripts/gpu-bench.sh OUT_DIR [CIFAR10_JPEG_TAR_GZ]
#
# Environment: EPOCHS (real-data schedule, default 10), DEVICE (default cuda), SMALL=1 (tiny sizes, for a CPU dry run),
# BUDGET_S (default 470: every stage's time limit is cut to what is left of it, so the whole run ends within 8 min),
# STAGE_SCALE (integer factor on every stage's own limit, default 1; for CPU dry runs),
# SEEDS (real-data seeds, default "0"; both engines per seed), SKIP_BENCH=1 (only the real-data check, e.g.
# SKIP_BENCH=1 SEEDS="0 1 2" BUDGET_S=590 for a parity study in one 10-minute call).
# Each stage's wall time goes to OUT_DIR/stages.tsv; parity.json holds per-exit test top-1 per engine and seed.
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
seeds=${SEEDS:-0}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
log() { echo "[gpu-bench $(date +%H:%M:%S)] $*"; }
deadline=$(( $(date +%s) + ${BUDGET_S:-470} ))
# limit SECONDS: the smaller of SECONDS x STAGE_SCALE and what is left of the budget (at least 1). The stage limits
# are sized for a GPU; STAGE_SCALE (default 1) stretches them for a CPU dry run on a slow or busy machine.
limit() {
  local want=$(( $1 * ${STAGE_SCALE:-1} )) left=$(( deadline - $(date +%s) ))
  [ "$left" -lt "$want" ] && echo $(( left > 1 ? left : 1 )) || echo "$want"
}
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
  train_args=(--batch-size 64 --lr 0.01)  # a CPU dry run checks the plumbing: a step size that cannot diverge
else
  # two jobs sharing the GPU are timed for the small networks, which leave it partly idle
  bench_args=(--archs resnet56,mobilenet,vgg16bn,wrn32_4 --steps 20 --warmup 5 --windows 3
              --concurrent-jobs 2 --concurrent-seconds 8 --concurrent-archs resnet56,mobilenet)
  prep_args=()
  train_args=()
fi

{ nvidia-smi || true; $py -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())'; } \
  > "$out/environment.txt" 2>&1

if [ "${SKIP_BENCH:-0}" = 1 ]; then
  log "1/3 sdn bench skipped (SKIP_BENCH=1)"
else
  log "1/3 sdn bench"
  stage bench 230 $py -m sdn bench --device "$device" "${bench_args[@]}" --json-out "$out/bench.json" \
    > "$out/bench.log" 2>&1 || log "bench failed or timed out (see bench.log)"
  tail -n 14 "$out/bench.log"
fi

if [ -z "$archive" ] || [ ! -f "$archive" ]; then
  log "no CIFAR-10 JPEG archive given or found: skipping the real-data check"
  exit 0
fi

log "2/3 prepare CIFAR-10 (JPEG) from $archive"
stage extract 60 tar -xzf "$archive" -C "$work"
root=$(find "$work" -maxdepth 2 -type d -name train -printf '%h\n' | head -n 1)
stage prepare 60 $py -m sdn prepare-data --dataset imagefolder --data-root "$root" --out "$work/c10" "${prep_args[@]}" \
  > "$out/prepare.log" 2>&1 || { log "prepare failed"; tail -n 20 "$out/prepare.log"; exit 1; }

log "3/3 ResNet-56 SDN training, $epochs epochs, seeds $seeds, fast then reference engine"
for seed in $seeds; do
  for engine in fast reference; do
    run="$engine-s$seed"
    seconds=75; [ "$engine" = reference ] && seconds=150
    stage "train-$run" "$seconds" $py -m sdn train --recipe sdn --arch resnet56 --data "$work/c10" \
      --out "$work/r56-$run" --epochs "$epochs" --seed "$seed" --device "$device" --engine "$engine" \
      "${train_args[@]}" > "$out/train-$run.log" 2>&1 || log "$run training failed or timed out (see train-$run.log)"
    if [ -f "$work/r56-$run/model.pt" ]; then
      cp "$work/r56-$run/history.csv" "$out/history-$run.csv"
      stage "evaluate-$run" 30 $py -m sdn evaluate --checkpoint "$work/r56-$run/model.pt" --data "$work/c10" \
        --out "$work/r56-$run/outputs.npz" --device "$device" >> "$out/train-$run.log" 2>&1
      cp "$work/r56-$run/metrics.json" "$out/metrics-$run.json" 2>/dev/null
    fi
    tail -n 3 "$out/train-$run.log"
  done
done

first_fast="$work/r56-fast-s${seeds%% *}/model.pt"
if [ -f "$first_fast" ]; then
  log "online early exit on the trained ResNet-56 SDN"
  stage early-exit 75 $py -m sdn bench --device "$device" --archs "" --recipes "" --early-exit-repeats 3 \
    --early-exit-checkpoint "$first_fast" --early-exit-data "$work/c10" --no-onnx \
    --json-out "$out/early-exit.json" > "$out/early-exit.log" 2>&1 || log "early-exit timing failed (see log)"
  tail -n 3 "$out/early-exit.log"
fi
$py - "$out" <<'PY'
import json, pathlib, statistics, sys

out = pathlib.Path(sys.argv[1])
per_seed: dict[str, dict[str, list[float]]] = {"fast": {}, "reference": {}}
for path in sorted(out.glob("metrics-*-s*.json")):
    engine, seed = path.stem.removeprefix("metrics-").rsplit("-s", 1)
    per_seed[engine][seed] = json.loads(path.read_text())["splits"]["test"]["top1"]
summary: dict = {"per_seed": per_seed}
for engine, runs in per_seed.items():
    if runs:  # per-exit mean over the seeds this engine finished
        summary[engine] = [statistics.fmean(values) for values in zip(*runs.values())]
paired = sorted(set(per_seed["fast"]) & set(per_seed["reference"]))
if paired:
    diffs = [[f - r for f, r in zip(per_seed["fast"][s], per_seed["reference"][s])] for s in paired]
    summary["paired_seeds"] = paired
    summary["mean_diff_points"] = [statistics.fmean(d) for d in zip(*diffs)]  # fast - reference, per exit
    summary["max_abs_mean_diff_points"] = max(abs(d) for d in summary["mean_diff_points"])
(out / "parity.json").write_text(json.dumps(summary, indent=2))
print("per-exit test top-1:", json.dumps({k: v for k, v in summary.items() if k != "per_seed"}))
PY
log done
