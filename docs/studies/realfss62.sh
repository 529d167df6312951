#!/bin/bash
# The 62-class real-photo study that chose the shipped model
# (docs/studies/realfss62.md): realfss-train + realfss-extra in 4 seeded class
# folds (flags/realfss62_folds.flags), the same queue as realfss34.sh.
#
#   bash docs/studies/realfss62.sh RUNS_DIR RUNNER   (two runners: 0 and 1)
#   bash docs/studies/realfss62.sh RUNS_DIR list | bench | results [REF...]
#
# Rows: joint training from the ImageNet Lite0 encoder (200 iterations), the
# same continued (1000 in all, then 1400: `joint_jointlong` is the shipped
# recipe's method, flags/realfss62_ship.flags, whose single 1400-iteration run
# equals this chain: joint training has no schedule), and FOMAML warm-started
# from the 1000-iteration model (100 iterations, about the minutes of the
# 400 further joint iterations: its time-matched control is joint_jointlong).
# Per fold the adaptation curve (0-10 steps of the shared omega, which holds
# the comparison at omega's 5 steps) scores every row on the fold's meta-test
# tasks with the data-only baselines (centred box, all foreground).
#   FOLDS="0 1" bash docs/studies/realfss62.sh RUNS_DIR 0
# Then pool the folds:
#   python run_meta.py --flagfile=flags/realfss62_folds.flags --mode=compare_merge \
#     --eval_shots_list=5,1 --compare_reference=joint_imagenet --random_steps_factor=0 \
#     --compare_runs=RUNS_DIR/fold0/curve_5shot,RUNS_DIR/fold0/curve_1shot,... \
#     --workdir=RUNS_DIR/merged
set -u
R=${1:?runs dir}; ME=${2:-0}
FOLDS=${FOLDS:-0 1 2 3}
export TF_NUM_INTRAOP_THREADS=1 TF_NUM_INTEROP_THREADS=1 OMP_NUM_THREADS=1
BASE=flags/realfss62_folds.flags
COMMON="--flagfile=$BASE --meta_iters=200 --eval_every=200 --image_every=200"

RUNS=(
  "joint_imagenet|--algo=joint --encoder_weights=imagenet"
  "joint_joint|--algo=joint --meta_iters=800 --eval_every=800 --image_every=800 --init_from=@/joint_imagenet"
  "joint_jointlong|--algo=joint --meta_iters=400 --eval_every=400 --image_every=400 --init_from=@/joint_joint"
  "fomaml_jointlong|--algo=fomaml --meta_iters=100 --eval_every=100 --image_every=100 --init_from=@/joint_joint"
)

# Stage 2 (after the curves of stage 1): a larger candidate, the shipped
# method at 128 px (1.8x the pixels), and task diversity: the joint and
# FOMAML rows trained on half of the meta-train classes (--train_classes=22
# of 44; meta-val and meta-test unchanged). Each is scored by its own final
# evaluation on the fold's meta-test tasks (`results` pairs them by task).
STAGE2=(
  "joint1400_128|--algo=joint --encoder_weights=imagenet --image_size=128 --meta_iters=1400 --eval_every=1400 --image_every=1400"
  "joint_imagenet_half|--algo=joint --encoder_weights=imagenet --train_classes=22"
  "joint_joint_half|--algo=joint --train_classes=22 --meta_iters=800 --eval_every=800 --image_every=800 --init_from=@/joint_imagenet_half"
  "joint_jointlong_half|--algo=joint --train_classes=22 --meta_iters=400 --eval_every=400 --image_every=400 --init_from=@/joint_joint_half"
  "fomaml_jointlong_half|--algo=fomaml --train_classes=22 --meta_iters=100 --eval_every=100 --image_every=100 --init_from=@/joint_joint_half"
)

jobs=()
train_jobs() {  # Method by method: each row's folds together.
  for entry in "$@"; do
    name=${entry%%|*}; args=${entry#*|}
    needs=""; [[ $args =~ --init_from=@/([a-z_]+) ]] && needs="@/${BASH_REMATCH[1]}/results.json"
    for f in $FOLDS; do
      jobs+=("@/$name|results.json|$needs|$COMMON --fold=$f $args")
    done
  done
}
train_jobs "${RUNS[@]}"
for f in $FOLDS; do  # The adaptation curve of every row, 40 tasks per shot count.
  runs=""; needs=""
  for entry in "${RUNS[@]}"; do
    name=${entry%%|*}; runs+="${runs:+,}@/$name"; needs+="${needs:+,}@/$name/results.json"
  done
  for k in 5 1; do
    jobs+=("@/curve_${k}shot|compare_${k}shot.json|$needs|$COMMON --fold=$f --mode=compare --eval_shots_list=$k --eval_tasks=40 --random_steps_factor=0 --compare_reference=joint_imagenet --compare_curve_steps=0,1,2,3,5,10 --compare_runs=$runs")
  done
done

train_jobs "${STAGE2[@]}"
RUNS+=("${STAGE2[@]}")  # For `list`, `bench` and `results`.

# shellcheck source=docs/studies/queue.sh
. "$(dirname "$0")/queue.sh"
