#!/bin/bash
# The real-photo runs of docs/extensions.md (issue 13), as a resumable queue.
#
#   bash docs/realfss_issue13.sh RUNS_DIR RUNNER RUNNERS
#
# Runners share the queue: each takes the next job that is neither finished
# (results.json) nor held by a live runner (flock on RUN.lock, released when
# the process dies), so two single-threaded runners keep the 2-core VM busy.
# An interrupted run resumes from its last checkpoint. RUNNER and RUNNERS are
# kept for the command line's sake; every runner walks the whole queue. Then, per fold, the
# comparison (docs/extensions.md has the merge command).
set -u
R=${1:?runs dir}; ME=${2:-0}; N=${3:-1}
export TF_NUM_INTRAOP_THREADS=1 TF_NUM_INTEROP_THREADS=1 OMP_NUM_THREADS=1
COMMON="--flagfile=flags/realfss_folds.flags --meta_iters=200 --eval_every=200 --image_every=200"
jobs=()
for f in 0 1 2 3; do jobs+=("fold$f/joint_imagenet --fold=$f --algo=joint --encoder_weights=imagenet"); done
for f in 0 1 2 3; do jobs+=("fold$f/fomaml_imagenet --fold=$f --algo=fomaml --encoder_weights=imagenet"); done
for f in 0 1 2 3; do jobs+=("fold$f/fomaml_joint --fold=$f --algo=fomaml --init_from=$R/fold$f/joint_imagenet"); done
# Compute-matched control for fomaml_joint: joint training continued for as many iterations.
for f in 0 1 2 3; do jobs+=("fold$f/joint_joint --fold=$f --algo=joint --init_from=$R/fold$f/joint_imagenet"); done
for f in 0 1 2 3; do jobs+=("fold$f/mtl_joint --fold=$f --algo=fomaml --adapt_scope=mtl --init_from=$R/fold$f/joint_imagenet"); done
for f in 0 1 2 3; do jobs+=("fold$f/joint_clust_imagenet --fold=$f --algo=joint --encoder_weights=imagenet --clustering_weight=0.1"); done
for f in 0 1 2 3; do jobs+=("fold$f/fomaml_clust_imagenet --fold=$f --algo=fomaml --encoder_weights=imagenet --clustering_weight=0.1"); done
for f in 0 1 2 3; do jobs+=("fold$f/metasgd_imagenet --fold=$f --algo=fomaml --encoder_weights=imagenet --learned_lr"); done
for f in 0 1 2 3; do jobs+=("fold$f/mtl_ht_joint --fold=$f --algo=fomaml --adapt_scope=mtl --hard_task_fraction=0.4 --hard_task_pool=10 --init_from=$R/fold$f/joint_imagenet"); done
for i in "${!jobs[@]}"; do
  set -- ${jobs[$i]}
  dir=$R/$1; shift
  [ -f "$dir/results.json" ] && continue
  mkdir -p "$(dirname "$dir")"
  echo "== $(date +%H:%M) runner $ME: $dir"
  flock -n -E 200 "$dir.lock" python run_meta.py $COMMON "$@" --workdir="$dir"
  rc=$?
  [ $rc -eq 200 ] && echo "   held by another runner" && continue
  [ $rc -ne 0 ] && echo "FAILED ($rc) $dir"
done
