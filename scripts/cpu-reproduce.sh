#!/usr/bin/env bash
# Train the paper-scale reproduction on this machine's CPU, a bounded call at a time, across sessions whose machines
# keep nothing but what is committed to git.
#
#   scripts/cpu-reproduce.sh DATASET ARCHS [SEEDS]
#   e.g. BUDGET_S=7200 VARIANTS=cnn,ic_only scripts/cpu-reproduce.sh cifar10 resnet56 0
#
# A wrapper of scripts/gpu-reproduce.sh with the CPU's settings (DEVICE=cpu, JOBS=1, so each CNN's evaluation and
# IC-only training run right after it, before any SDN training; TRAIN_ARGS, unless given,
# --compile on a CPU with AVX-512 and nothing on one without: measured on this project's machines, compiling made a
# ResNet-56 epoch about 15% faster on a Zen 4 and none on a Zen 3, whose cold compilation costs each call about 4
# minutes, and a MobileNet epoch 15% slower on a Zen 5: give TRAIN_ARGS= there, docs/cpu-bf16.md; every other
# setting of that script passes through: BUDGET_S, VARIANTS, EPOCHS_*, SMALL, ARCHIVE, ...):
#   1. a WORK (default .reproduce/cpu-<dataset>, git-ignored) that holds no grid state yet starts from CARRY's
#      resume.tar.NN (default runs-in-progress/<dataset>-cpu/, committed), when there is one (a WORK that holds
#      one, from an earlier call on this machine, continues from itself);
#   2. the call trains within BUDGET_S (SIGTERM to the runner stops it early the same way), OUT in WORK/out;
#   3. the runs it finished go into REPO/reproduction/ (python -m sdn.reproduce.ingest), and CARRY is replaced by the
#      call's resume pack (state.json, last.pt of the stopped job; once the grid is complete, its state.json alone,
#      kept so that a larger grid, more variants or seeds, continues from it without training its jobs again).
# Then commit reproduction/ and CARRY: the next session, on a fresh machine, continues from them. A call that ends
# without a resume pack (it failed before packing) leaves CARRY as it was. PYTHON defaults to the project's .venv.
set -uo pipefail

# All of it in a function, read whole before it runs: bash reads a script as it goes, and this one runs for hours
# in a working tree that may change under it (an edit or a checkout of this file would otherwise break the call).
main() {
  dataset=${1:?usage: scripts/cpu-reproduce.sh DATASET ARCHS [SEEDS]}
  archs=${2:?usage: scripts/cpu-reproduce.sh DATASET ARCHS [SEEDS]}
  seeds=${3:-0}
  here=$(cd "$(dirname "$0")/.." && pwd)
  repo=${REPO:-$here}
  work=${WORK:-$here/.reproduce/cpu-$dataset}
  carry=${CARRY:-$repo/runs-in-progress/$dataset-cpu}
  out=$work/out
  if [ -z "${PYTHON:-}" ] && [ -x "$here/.venv/bin/python" ]; then PYTHON=$here/.venv/bin/python; fi
  export PYTHON=${PYTHON:-python3}
  py=$PYTHON

  if [ -z "${TRAIN_ARGS+given}" ]; then
    if grep -qw avx512f /proc/cpuinfo 2>/dev/null; then TRAIN_ARGS=--compile; else TRAIN_ARGS=; fi
  fi
  export DEVICE=${DEVICE:-cpu} JOBS=${JOBS:-1} TRAIN_ARGS WORK=$work
  echo "cpu-reproduce: TRAIN_ARGS='$TRAIN_ARGS'"
  if [ ! -f "$work/state.json" ] && compgen -G "$carry/resume.tar.[0-9][0-9]" >/dev/null; then
    export RESUME_FROM=$carry
    echo "cpu-reproduce: continuing the grid carried in $carry"
  fi
  rm -rf "$out"
  "$here/scripts/gpu-reproduce.sh" "$out" "$dataset" "$archs" "$seeds" &
  runner=$!
  stopping=
  trap 'stopping=1; kill -TERM "$runner" 2>/dev/null' TERM INT   # the runner stops its job and packs; we go on
  wait "$runner"
  status=$?
  while [ -n "$stopping" ] && [ "$status" -gt 128 ]; do stopping=; wait "$runner"; status=$?; done  # its own status
  trap - TERM INT

  if [ -f "$out/published.tar.00" ]; then
    PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}" "$py" -m sdn.reproduce.ingest "$out" --repo "$repo" || status=$((status ? status : 3))
  fi
  if [ -f "$out/resume.tar.00" ] && [ -f "$out/grid.json" ]; then
    "$py" - "$out/grid.json" <<'PY'
import json, sys
grid = json.load(open(sys.argv[1]))
for key, job in grid["jobs"].items():
    print(f"cpu-reproduce: {key}: {job['status']}, {job['epochs_done']}/{job['epochs']} epochs, "
          f"{job['train_wall_s'] / 3600:.1f} h of training")
PY
    rm -rf "$carry.new"
    mkdir -p "$carry.new" && cp "$out"/resume.tar.[0-9][0-9] "$carry.new"/ && rm -rf "$carry" && mv "$carry.new" "$carry"
    echo "cpu-reproduce: resume pack in $carry ($(du -sh "$carry" | cut -f1)); commit it with reproduction/"
  else
    echo "cpu-reproduce: no resume pack in $out: $carry left as it was" >&2
  fi
  return "$status"
}

main "$@"; exit $?
