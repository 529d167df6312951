"""Training minutes of finished runs, from their TensorBoard events.

    python bench/run_minutes.py RUN_DIR [RUN_DIR ...]

A run's minutes are the median of its logged `train/seconds_per_iteration`
times its iterations: robust to a run paused (SIGSTOP) or interrupted and
resumed, which makes wall-clock timestamps useless. A warm-started run
(`--init_from` another run) also prints its parent's minutes and the sum.
The evaluation and export at the end are not counted.
"""

import glob
import json
import os
import statistics
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tensorflow as tf  # noqa: E402


def seconds_per_iteration(run_dir):
    values = []
    for path in sorted(glob.glob(os.path.join(run_dir, "train", "events.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.tag == "train/seconds_per_iteration":
                    values.append(float(tf.make_ndarray(value.tensor)))
    if not values:
        raise SystemExit(f"{run_dir}: no train/seconds_per_iteration events "
                         "(not a training run, or it logged nothing yet).")
    return statistics.median(values)


def minutes(run_dir):
    """(own minutes, parent run dir or None)."""
    with open(os.path.join(run_dir, "config.json")) as f:
        config = json.load(f)
    iters = config["meta"]["meta_iters"]
    parent = config["run"].get("init_from") or None
    return seconds_per_iteration(run_dir) * iters / 60.0, parent


def main(runs):
    if not runs:
        raise SystemExit(__doc__)
    for run in runs:
        own, parent = minutes(run)
        line = f"{run}: {own:.1f} min"
        if parent and os.path.isdir(os.path.join(parent, "train")):
            inherited, _ = minutes(parent)
            line += (f" + {inherited:.1f} min of {os.path.basename(parent)}"
                     f" = {own + inherited:.1f} min")
        print(line)


if __name__ == "__main__":
    main(sys.argv[1:])
