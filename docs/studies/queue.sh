# The job queue shared by the real-photo studies (realfss34.sh, realfss62.sh):
# sourced after the study has set R (runs dir), ME (runner or list, bench,
# results), FOLDS, BASE (the study's base flagfile), RUNS (name|flags rows)
# and the jobs array ("workdir|done file|needed files|run_meta.py flags",
# '@' standing for the fold's folder). See realfss34.sh's header for the
# runner protocol (flock per job, resume, two single-threaded runners).
fold_of() { [[ $1 =~ --fold=([0-9]) ]] && echo "${BASH_REMATCH[1]}"; }

expand() {  # expand JOB: sets dir, done_file, needs, args with '@' replaced.
  IFS='|' read -r dir done_file needs args <<< "$1"
  local F=$R/fold$(fold_of "$args")
  dir=${dir//@/$F}; needs=${needs//@/$F}; args=${args//@/$F}
}
inputs_ready() {
  local n; IFS=',' read -r -a need_list <<< "$needs"
  for n in "${need_list[@]}"; do [ -f "$n" ] || return 1; done
}
if [ "$ME" = list ]; then  # STUDY.sh RUNS_DIR list
  for job in "${jobs[@]}"; do
    expand "$job"
    if [ -f "$dir/$done_file" ]; then state=done
    elif [ -f "$dir.lock" ] && ! flock -n "$dir.lock" true; then state=running
    elif inputs_ready; then state=ready; else state=waiting; fi
    printf '%-8s %s\n' "$state" "${dir#$R/}"
  done
  exit 0
fi
if [ "$ME" = bench ]; then  # STUDY.sh RUNS_DIR bench
  # Every row's training minutes from a quiet benchmark: seconds per
  # iteration of its training flags (bench/bench_meta_step.py, one thread,
  # median of 5 x 3 calls; the weights it starts from do not change the
  # cost) times its iterations, plus the row it was warm-started from.
  # Run it with nothing else on the machine.
  declare -A per_it minutes
  printf '| row | s per iteration | iterations | minutes (with warm start) |\n|---|---:|---:|---:|\n'
  for entry in "${RUNS[@]}"; do
    name=${entry%%|*}; args=${entry#*|}
    iters=200; [[ $args =~ --meta_iters=([0-9]+) ]] && iters=${BASH_REMATCH[1]}
    parent=""; [[ $args =~ --init_from=@/([a-z_]+) ]] && parent=${BASH_REMATCH[1]}
    cost=$(printf '%s\n' $args | grep -vE -- '^--(init_from|encoder_weights|meta_iters|eval_every|image_every)=' | tr '\n' ' ')
    if [ -z "${per_it[$cost]:-}" ]; then
      per_it[$cost]=$(python bench/bench_meta_step.py --flagfile=$BASE \
        --encoder_weights=imagenet --parts=meta_step --repeats=5 --iters=3 $cost 2>/dev/null \
        | sed -n 's/^meta-iteration: \([0-9.]*\) s.*/\1/p')
    fi
    minutes[$name]=$(python -c "print(${per_it[$cost]} * $iters / 60 + ${minutes[${parent:-none}]:-0})")
    printf '| %s | %.3f | %d | %.1f |\n' "$name" "${per_it[$cost]}" "$iters" "${minutes[$name]}"
  done
  exit 0
fi

if [ "$ME" = results ]; then  # STUDY.sh RUNS_DIR results [REF...]
  # Interim figures for rows whose comparison has not run yet: each trained
  # row's own final meta-test evaluation (5-shot, the training omega and
  # adaptation scope, so mtl rows adapt the mtl scope; the fold's meta-test
  # tasks), the folds it has finished pooled, and the paired difference to
  # each REF (default joint_imagenet) over the tasks of the folds both
  # finished. The compare jobs' tables supersede it.
  shift 2
  names=(); for entry in "${RUNS[@]}"; do names+=("${entry%%|*}"); done
  TF_CPP_MIN_LOG_LEVEL=2 python - "$R" "${names[*]}" "${@:-joint_imagenet}" <<'PY'
import json, os, sys
from efficientlab_tf.evaluation.protocol import paired_difference
from efficientlab_tf.evaluation.protocol import mean_ci95
runs, names, refs = sys.argv[1], sys.argv[2].split(), sys.argv[3:]
def per_task(name, fold):
    path = os.path.join(runs, f"fold{fold}", name, "results.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)["meta_test"]["per_task"]
scores = {n: {f: per_task(n, f) for f in range(4)} for n in names}
print("| row | folds | tasks | mean IoU | "
      + " | ".join(f"minus `{r}` (paired, tasks)" for r in refs) + " |")
print("|---|---:|---:|---:|" + "---:|" * len(refs))
for n in names:
    folds = [f for f in range(4) if scores[n][f] is not None]
    if not folds:
        continue
    pooled = [x for f in folds for x in scores[n][f]]
    mean, ci = mean_ci95(pooled)
    cells = []
    for r in refs:
        both = [f for f in folds if scores[r][f] is not None]
        if r == n or not both:
            cells.append("—")
            continue
        diff, dci = paired_difference([x for f in both for x in scores[n][f]],
                                      [x for f in both for x in scores[r][f]])
        cells.append(f"{diff:+.3f} ± {dci:.3f} ({sum(len(scores[n][f]) for f in both)})")
    print(f"| {n} | {','.join(map(str, folds))} | {len(pooled)} | "
          f"{mean:.3f} ± {ci:.3f} | " + " | ".join(cells) + " |")
PY
  exit 0
fi

declare -A failed
while true; do
  launched=0; held=0
  for job in "${jobs[@]}"; do
    expand "$job"
    [ -f "$dir/$done_file" ] && continue
    [ -n "${failed[$dir]:-}" ] && continue
    inputs_ready || continue
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
