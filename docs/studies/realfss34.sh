#!/bin/bash
# The real-photo comparison of docs/extensions.md (issue 13), as a resumable
# queue: train every row on the four realfss-train folds, tune each
# initialization's omega with UHO (meta-train + meta-val tasks, never the
# meta-test fold), then score everything per fold and shot count (the
# core rows first: see "Two stages" below).
#
#   bash docs/studies/realfss34.sh RUNS_DIR RUNNER
#   bash docs/studies/realfss34.sh RUNS_DIR list    (each job: done, running, ready, waiting)
#   bash docs/studies/realfss34.sh RUNS_DIR bench   (every row's minutes, quiet benchmark)
#   bash docs/studies/realfss34.sh RUNS_DIR results [REF...]  (the runs' own
#        final 5-shot evaluations, folds pooled, paired with each REF)
#
# Start two runners (RUNNER 0 and 1): they share the queue. A runner takes
# the next job that is not done (its output file exists), whose inputs are
# done, and that no live runner holds (flock on JOB.lock, released when the
# process dies); it walks the queue until nothing is left. Every job
# resumes: training from its last checkpoint, a comparison from its last
# scored initialization (compare's rows/ cache). Each process is
# single-threaded, so two runners keep the 2-core VM busy.
#
# The adaptation curves pool the same way (the figure: RUNS_DIR/curve/curve.png):
#   python run_meta.py --flagfile=flags/realfss_folds.flags --mode=compare_merge \
#     --eval_shots_list=5,1 --compare_reference=joint_imagenet --random_steps_factor=0 \
#     --compare_runs=RUNS_DIR/fold0/curve_5shot,RUNS_DIR/fold0/curve_1shot,... --workdir=RUNS_DIR/curve
#
# Then pool the folds (RUNS_DIR/merged/summary.md is the README's table):
#   python run_meta.py --flagfile=flags/realfss_folds.flags --mode=compare_merge \
#     --eval_shots_list=5,1 --compare_reference=joint_imagenet --random_steps_factor=0 \
#     --compare_runs=RUNS_DIR/fold0/compare_5shot,...,RUNS_DIR/fold3/compare_5shot,RUNS_DIR/fold0/compare_1shot,...,RUNS_DIR/fold3/compare_1shot \
#     --workdir=RUNS_DIR/merged
set -u
R=${1:?runs dir}; ME=${2:-0}
# FOLDS="0 1" restricts the queue to those folds (a session's CPU budget).
FOLDS=${FOLDS:-0 1 2 3}
export TF_NUM_INTRAOP_THREADS=1 TF_NUM_INTEROP_THREADS=1 OMP_NUM_THREADS=1
BASE=flags/realfss_folds.flags
COMMON="--flagfile=$BASE --meta_iters=200 --eval_every=200 --image_every=200"
# UHO at a CPU budget: 2 rounds of 6 configurations on 10 tasks, <= 10 steps.
UHO="--mode=uho --uho_tasks=10 --uho_samples=6 --uho_rounds=2 --uho_steps_max=10"

# name|training flags, in the order they are trained (and compared).
RUNS=(
  "joint_imagenet|--algo=joint --encoder_weights=imagenet"
  # Time-matched control for fomaml_joint: joint continued for as many CPU
  # minutes (a joint iteration costs ~1/4 of a FOMAML one: 800 vs 200).
  "joint_joint|--algo=joint --meta_iters=800 --eval_every=800 --image_every=800 --init_from=@/joint_imagenet"
  # joint_joint beat fomaml_joint on the first folds' meta-val tasks:
  # joint_imagenet is undertrained. So meta-learning also starts from the longer-trained joint
  # model (1000 joint iterations), against joint continued for as long.
  "fomaml_jointlong|--algo=fomaml --meta_iters=100 --eval_every=100 --image_every=100 --init_from=@/joint_joint"
  "joint_jointlong|--algo=joint --meta_iters=400 --eval_every=400 --image_every=400 --init_from=@/joint_joint"
  # MTL as Sun et al. built it (issue 24): per-kernel scales and per-channel
  # shifts on the frozen encoder, learned in the outer loop, the decoder
  # adapted in the inner loop, with re-sampled hard tasks (the issue's
  # "MTL (+HT)"), meta-transferring the longer-trained joint model.
  "mtl_ht_jointlong|--algo=fomaml --mtl --adapt_scope=mtl --hard_task_fraction=0.4 --hard_task_pool=10 --meta_iters=100 --eval_every=100 --image_every=100 --init_from=@/joint_joint"
  # The package's own method that earlier releases called MTL: frozen
  # kernels, BN affine + decoder adapted in both loops, with hard tasks.
  "bn_affine_ht_jointlong|--algo=fomaml --adapt_scope=bn_affine --hard_task_fraction=0.4 --hard_task_pool=10 --meta_iters=100 --eval_every=100 --image_every=100 --init_from=@/joint_joint"
  "fomaml_imagenet|--algo=fomaml --encoder_weights=imagenet"
  "fomaml_joint|--algo=fomaml --init_from=@/joint_imagenet"
  "fomaml_clust_imagenet|--algo=fomaml --encoder_weights=imagenet --clustering_weight=0.1"
  "joint_clust_imagenet|--algo=joint --encoder_weights=imagenet --clustering_weight=0.1"
  "metasgd_imagenet|--algo=fomaml --encoder_weights=imagenet --learned_lr"
  "reptile_imagenet|--algo=reptile --encoder_weights=imagenet"
)

# job: "workdir|done file|needed files (comma-separated)|run_meta.py flags".
# '@' in flags stands for the fold's folder.
#
# Two stages, so that the core comparison (joint; FOMAML, MTL + HT and
# BN-affine + HT from the longer-trained joint model, and its time-matched
# joint control: the rows issue 24 re-runs) is complete, with own omegas and both
# shot counts, before the other rows train: each stage trains its rows, runs
# their UHO, then compares (stage 1 in compare_<k>shot_core). Both stages
# keep rows in compare_<k>shot/rows (--compare_rows_dir), so the final
# comparison reuses the core rows instead of scoring them again.
CORE=6
jobs=()
train_jobs() {  # Method by method: each row's four folds together.
  for entry in "$@"; do
    name=${entry%%|*}; args=${entry#*|}
    needs=""; [[ $args =~ --init_from=@/([a-z_]+) ]] && needs="@/${BASH_REMATCH[1]}/results.json"
    for f in $FOLDS; do
      jobs+=("@/$name|results.json|$needs|$COMMON --fold=$f $args")
    done
  done
}
uho_jobs() {
  for f in $FOLDS; do
    for entry in "$@"; do
      name=${entry%%|*}; extra=""; [[ $name == metasgd* ]] && extra="--learned_lr"
      # MTL adapts at test time as it was trained: its omega is tuned for
      # the mtl scope (the omega file records it, so compare's own-omega
      # row adapts that scope too).
      [[ $name == mtl* ]] && extra="--mtl --eval_adapt_scope=mtl"
      [[ $name == bn_affine* ]] && extra="--eval_adapt_scope=bn_affine"
      if [ "$name" = imagenet ]; then
        # The model as built: the ImageNet encoder and a random decoder.
        jobs+=("@/uho_imagenet|omega.json||$COMMON --fold=$f $UHO --init_from=random --encoder_weights=imagenet")
      else
        jobs+=("@/uho_$name|omega.json|@/$name/results.json|$COMMON --fold=$f $UHO --init_from=@/$name${extra:+ $extra}")
      fi
    done
  done
}
compare_jobs() {  # compare_jobs SUFFIX RUN_ENTRY...
  local suffix=$1; shift
  for f in $FOLDS; do
    runs=""; omegas="ImageNet encoder=@/uho_imagenet/omega.json"; needs="@/uho_imagenet/omega.json"
    for entry in "$@"; do
      name=${entry%%|*}
      runs+="${runs:+,}@/$name"; omegas+=",$name=@/uho_$name/omega.json"
      needs+=",@/$name/results.json,@/uho_$name/omega.json"
    done
    for k in 5 1; do
      jobs+=("@/compare_${k}shot$suffix|compare_${k}shot.json|$needs|$COMMON --fold=$f --mode=compare --learned_lr --compare_imagenet --eval_shots_list=$k --eval_tasks=40 --compare_clustering --compare_procedures=bn_affine,decoder,head,prototype --random_steps_factor=0 --compare_reference=joint_imagenet --compare_rows_dir=@/compare_${k}shot/rows --compare_runs=$runs --compare_omega_files=$omegas")
    done
  done
}
# The adaptation curve of the core rows (issue 24): mean IoU after 0 to 50
# steps of the shared omega's lr and batch size, 5-shot on the comparison's
# 40 meta-test tasks per fold (its "after 5 steps" rows are the comparison's
# shared-omega rows: omega's 5 steps), 1-shot on the first 20. --mtl: one model holds every row; a run trained without MTL loads
# with Phi at 1 and 0 and no scope adapts Phi, so it scores as in the
# plain model.
curve_jobs() {
  for f in $FOLDS; do
    runs=""; needs=""
    for entry in "$@"; do
      name=${entry%%|*}; runs+="${runs:+,}@/$name"; needs+="${needs:+,}@/$name/results.json"
    done
    for k in 5 1; do
      # 1-shot on the first 20 tasks (the session's CPU budget).
      n=40; [ $k = 1 ] && n=20
      jobs+=("@/curve_${k}shot|compare_${k}shot.json|$needs|$COMMON --fold=$f --mode=compare --mtl --eval_shots_list=$k --eval_tasks=$n --random_steps_factor=0 --compare_reference=joint_imagenet --compare_curve_steps=0,1,2,3,5,10,20,50 --compare_runs=$runs")
    done
  done
}
train_jobs "${RUNS[@]:0:CORE}"
curve_jobs "${RUNS[@]:0:CORE}"
uho_jobs imagenet "${RUNS[@]:0:CORE}"
compare_jobs _core "${RUNS[@]:0:CORE}"
train_jobs "${RUNS[@]:CORE}"
uho_jobs "${RUNS[@]:CORE}"
compare_jobs "" "${RUNS[@]}"

# shellcheck source=docs/studies/queue.sh
. "$(dirname "$0")/queue.sh"
