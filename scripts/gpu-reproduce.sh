#!/usr/bin/env bash
# Train and evaluate the paper's grid on one GPU machine with no network, snakemake or mlflow, within a time budget.
#
#   scripts/gpu-reproduce.sh OUT DATASET ARCHS [SEEDS]
#   e.g. BUDGET_S=580 scripts/gpu-reproduce.sh "$OUT" cifar10 resnet56,mobilenet "0 1 2"
#
# DATASET: cifar10 | cifar100 (from ../shared/data/<dataset>-jpeg.tar.gz, or ARCHIVE=...). ARCHS: comma-separated
# (resnet56, mobilenet, vgg16bn, wrn32_4). SEEDS: default "0". The paper's recipe: CNN 100, IC-only 25 (its parent is
# the CNN), SDN 100 epochs, batch 128 (EPOCHS_CNN, EPOCHS_IC, EPOCHS_SDN, BATCH override them).
#
# Environment:
#   BUDGET_S   seconds this call may take in all (default 3600); RESERVE_S of them (default 30) are kept for stopping
#              the running jobs (SIGTERM; each trainer keeps last.pt of its last finished epoch) and packing OUT.
#   JOBS       jobs at once on the GPU (default 3; measured on an H200, 4 jobs at once did about 1.2x the work of one
#              at a time, each running 3-4x slower: README). JOBS=auto measures 1-4 SDN trainings of the first arch at once (about a minute, once per grid:
#              the choice is kept in WORK/state.json) and takes the count beyond which the aggregate gains < 5%.
#   DEVICE     default cuda (cpu for a dry run); WORK: work folder (default .reproduce/<dataset>, git-ignored);
#              RESUME_FROM: a folder with resume.tar.NN of an earlier call (carry it in, e.g. as .reproduce-in/);
#              RESTART: jobs to start over, e.g. RESTART=wrn32_4/s0/sdn (a diverged run, retried with TRAIN_ARGS);
#              DIVERGED_RETRY_ARGS: `sdn train` options with which a training that diverged starts over, once
#              (default "--clip-grad-norm 1", not in the paper: recorded in the run's recipe and provenance; set it
#              empty to let a diverged training fail instead);
#              SMALL=1: toy data sizes (600 train images, 200 test, 100 held out) for a CPU check;
#              TRAIN_ARGS / PREPARE_ARGS: extra `sdn train` / `sdn prepare-data` options (e.g. TRAIN_ARGS="--exits
#              paper-original"); PART_MIB (16), MAX_FILES (8): the size limits of OUT; RESUME_MAX_MIB: the largest
#              resume pack (default: 64 MiB, what a device call carries in, less the archive and 8 MiB for the tree);
#              TOP_K: publish only each row's k largest logits (0: all; default 10 for cifar100, all for cifar10);
#              VARIANTS: the variants to train (default cnn,ic_only,sdn; ic_only needs cnn; the backdoor experiment:
#              bd_cnn,bd_ic_only, the CNN recipe on a poisoned copy of the training set and the IC-only recipe on
#              the clean one, both evaluated on the triggered test images too: VGG-16-BN on CIFAR-10 in the paper;
#              cnn_full: the CNN recipe on all training images, its held-out split from the test set, what the
#              paper's CNNs trained on: beside cnn it measures what the 5,000 held-out images cost, `sdn train-size`);
#              POISON_ARGS: extra `sdn backdoor poison` options (default: target 5, rate 0.1, 5x5 square at 26,26);
#              GRID_NAME: publish the grid's summary as grid-<device>-<name>.json, for a second grid of the data set
#              on one kind of device (two runners sharing a GPU, each with its own WORK and OUT).
# OUT receives published.tar.NN (finished runs, reproduction/ layout), resume.tar.NN (state + checkpoints of
# unfinished jobs), models.tar.NN in the files left (model.pt of finished runs, SDN training first: checkpoints/
# layout), grid.json (status and wall time of every job and of the grid), runner.log; at most MAX_FILES files of at
# most PART_MIB MiB each. Install the finished runs and the checkpoints: `python -m sdn.reproduce.ingest OUT`.
# A second call with the same WORK (or RESUME_FROM) continues: finished jobs are skipped, stopped ones resume.
set -uo pipefail
out=${1:?usage: scripts/gpu-reproduce.sh OUT DATASET ARCHS [SEEDS]}
dataset=${2:?usage: scripts/gpu-reproduce.sh OUT DATASET ARCHS [SEEDS]}
archs=${3:?usage: scripts/gpu-reproduce.sh OUT DATASET ARCHS [SEEDS]}
seeds=${4:-0}
here=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 SDN_TRACKING=off
py=${PYTHON:-python3}
prepare_args=${PREPARE_ARGS:-}
if [ "${SMALL:-0}" = 1 ]; then prepare_args="--max-train 600 --max-test 200 --holdout 100 $prepare_args"; fi
args=(--out "$out" --dataset "$dataset" --archs "$archs" --seeds "$seeds" --device "${DEVICE:-cuda}"
      --jobs "${JOBS:-3}" --budget-s "${BUDGET_S:-3600}" --reserve-s "${RESERVE_S:-30}"
      --epochs-cnn "${EPOCHS_CNN:-100}" --epochs-ic-only "${EPOCHS_IC:-25}" --epochs-sdn "${EPOCHS_SDN:-100}"
      --batch-size "${BATCH:-128}" "--prepare-args=$prepare_args" "--train-args=${TRAIN_ARGS:-}"
      --part-mib "${PART_MIB:-16}" --max-files "${MAX_FILES:-8}"
      "--diverged-retry-args=${DIVERGED_RETRY_ARGS---clip-grad-norm 1}")
[ -n "${WORK:-}" ] && args+=(--work "$WORK")
[ -n "${ARCHIVE:-}" ] && args+=(--archive "$ARCHIVE")
[ -n "${RESUME_FROM:-}" ] && args+=(--resume-from "$RESUME_FROM")
[ -n "${RESTART:-}" ] && args+=(--restart "$RESTART")
[ -n "${TOP_K:-}" ] && args+=(--top-k "$TOP_K")
[ -n "${VARIANTS:-}" ] && args+=(--variants "$VARIANTS")
[ -n "${POISON_ARGS:-}" ] && args+=("--poison-args=$POISON_ARGS")
[ -n "${GRID_NAME:-}" ] && args+=(--grid-name "$GRID_NAME")
[ -n "${RESUME_MAX_MIB:-}" ] && args+=(--resume-max-mib "$RESUME_MAX_MIB")
exec "$py" -m sdn.reproduce.cli "${args[@]}"
