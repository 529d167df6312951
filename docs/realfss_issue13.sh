#!/bin/bash
# The real-photo comparison of docs/extensions.md (issue 13), as a resumable
# queue: train every row on the four realfss-train folds, tune each
# initialization's omega with UHO (meta-train + meta-val tasks, never the
# meta-test fold), then score everything per fold and shot count.
#
#   bash docs/realfss_issue13.sh RUNS_DIR RUNNER
#
# Start two runners (RUNNER 0 and 1): they share the queue. A runner takes
# the next job that is not done (its output file exists), whose inputs are
# done, and that no live runner holds (flock on JOB.lock, released when the
# process dies); it walks the queue until nothing is left. Every job
# resumes: training from its last checkpoint, a comparison from its last
# scored initialization (compare's rows/ cache). Each process is
# single-threaded, so two runners keep the 2-core VM busy.
#
# Then pool the folds (RUNS_DIR/merged/summary.md is the README's table):
#   python run_meta.py --flagfile=flags/realfss_folds.flags --mode=compare_merge \
#     --eval_shots_list=5,1 --compare_reference=joint_imagenet --random_steps_factor=0 \
#     --compare_runs=RUNS_DIR/fold0/compare_5shot,...,RUNS_DIR/fold3/compare_5shot,RUNS_DIR/fold0/compare_1shot,...,RUNS_DIR/fold3/compare_1shot \
#     --workdir=RUNS_DIR/merged
set -u
R=${1:?runs dir}; ME=${2:-0}
export TF_NUM_INTRAOP_THREADS=1 TF_NUM_INTEROP_THREADS=1 OMP_NUM_THREADS=1
COMMON="--flagfile=flags/realfss_folds.flags --meta_iters=200 --eval_every=200 --image_every=200"
# UHO at a CPU budget: 2 rounds of 6 configurations on 10 tasks, <= 10 steps.
UHO="--mode=uho --uho_tasks=10 --uho_samples=6 --uho_rounds=2 --uho_steps_max=10"

# name|training flags, in the order they are trained (and compared).
# MTL runs with HT only (the issue's "MTL (+HT)"): an MTL-without-HT ablation
# would add 4 runs, 4 UHO runs and a comparison row, about 3 hours of this
# 2-core VM.
RUNS=(
  "joint_imagenet|--algo=joint --encoder_weights=imagenet"
  "fomaml_imagenet|--algo=fomaml --encoder_weights=imagenet"
  "fomaml_joint|--algo=fomaml --init_from=@/joint_imagenet"
  # Time-matched control for fomaml_joint: joint continued for as many CPU
  # minutes (a joint iteration costs ~1/4 of a FOMAML one: 800 vs 200).
  "joint_joint|--algo=joint --meta_iters=800 --eval_every=800 --image_every=800 --init_from=@/joint_imagenet"
  "mtl_ht_joint|--algo=fomaml --adapt_scope=mtl --hard_task_fraction=0.4 --hard_task_pool=10 --init_from=@/joint_imagenet"
  "fomaml_clust_imagenet|--algo=fomaml --encoder_weights=imagenet --clustering_weight=0.1"
  "joint_clust_imagenet|--algo=joint --encoder_weights=imagenet --clustering_weight=0.1"
  "metasgd_imagenet|--algo=fomaml --encoder_weights=imagenet --learned_lr"
  "reptile_imagenet|--algo=reptile --encoder_weights=imagenet"
)

# job: "workdir|done file|needed files (comma-separated)|run_meta.py flags".
# '@' in flags stands for the fold's folder.
jobs=()
for entry in "${RUNS[@]}"; do  # Method by method: each row's four folds together.
  name=${entry%%|*}; args=${entry#*|}
  needs=""; [[ $args == *"@/joint_imagenet"* ]] && needs="@/joint_imagenet/results.json"
  for f in 0 1 2 3; do
    jobs+=("@/$name|results.json|$needs|$COMMON --fold=$f $args")
  done
done
for f in 0 1 2 3; do
  jobs+=("@/uho_imagenet|omega.json||$COMMON --fold=$f $UHO --encoder_weights=imagenet")
  for entry in "${RUNS[@]}"; do
    name=${entry%%|*}; extra=""; [[ $name == metasgd* ]] && extra="--learned_lr"
    jobs+=("@/uho_$name|omega.json|@/$name/results.json|$COMMON --fold=$f $UHO --init_from=@/$name $extra")
  done
done
for f in 0 1 2 3; do
  runs=""; omegas="ImageNet encoder=@/uho_imagenet/omega.json"; needs="@/uho_imagenet/omega.json"
  for entry in "${RUNS[@]}"; do
    name=${entry%%|*}
    runs+="${runs:+,}@/$name"; omegas+=",$name=@/uho_$name/omega.json"
    needs+=",@/$name/results.json,@/uho_$name/omega.json"
  done
  for k in 5 1; do
    jobs+=("@/compare_${k}shot|compare_${k}shot.json|$needs|$COMMON --fold=$f --mode=compare --learned_lr --compare_imagenet --eval_shots_list=$k --eval_tasks=40 --compare_clustering --compare_procedures=mtl,decoder,head,prototype --random_steps_factor=0 --compare_reference=joint_imagenet --compare_runs=$runs --compare_omega_files=$omegas")
  done
done

fold_of() { [[ $1 =~ --fold=([0-9]) ]] && echo "${BASH_REMATCH[1]}"; }

declare -A failed
while true; do
  launched=0; held=0
  for job in "${jobs[@]}"; do
    IFS='|' read -r dir done_file needs args <<< "$job"
    F=$R/fold$(fold_of "$args")
    dir=${dir//@/$F}; needs=${needs//@/$F}; args=${args//@/$F}
    [ -f "$dir/$done_file" ] && continue
    [ -n "${failed[$dir]:-}" ] && continue
    ready=1
    IFS=',' read -r -a need_list <<< "$needs"
    for n in "${need_list[@]}"; do [ -f "$n" ] || ready=0; done
    [ $ready -eq 1 ] || continue
    mkdir -p "$(dirname "$dir")"
    # One argument per flag (a value may hold spaces: "ImageNet encoder=...").
    mapfile -t argv < <(printf '%s\n' "$args" | sed 's/ --/\n--/g')
    echo "== $(date +%H:%M) runner $ME: $dir"
    flock -n -E 200 "$dir.lock" python run_meta.py "${argv[@]}" --workdir="$dir"
    rc=$?
    if [ $rc -eq 200 ]; then held=1; echo "   held by another runner"; continue; fi
    if [ $rc -ne 0 ] || [ ! -f "$dir/$done_file" ]; then
      failed[$dir]=1; echo "FAILED ($rc, no $done_file) $dir"
    fi
    launched=1
  done
  [ $launched -eq 1 ] && continue
  [ $held -eq 1 ] || break
  sleep 60  # Jobs left wait on what another runner is running.
done
echo "== $(date +%H:%M) runner $ME: nothing left to run"
