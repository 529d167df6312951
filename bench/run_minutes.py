"""Training minutes of finished runs, from their TensorBoard events.

    python bench/run_minutes.py RUN_DIR [RUN_DIR ...]

A run's minutes are the median of its logged `train/seconds_per_iteration`
times its iterations (`summaries.training_minutes`): robust to a run paused
(SIGSTOP) or interrupted and resumed, which makes wall-clock timestamps
useless. A warm-started run (`--init_from` another run) also prints its
parent's minutes and the sum. The evaluation and export at the end are not
counted. `--mode=compare_merge` puts the same figures in its summary table.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from efficientlab_tf import summaries  # noqa: E402


def main(runs):
    if not runs:
        raise SystemExit(__doc__)
    for run in runs:
        own, parent = summaries.training_minutes(run)
        line = f"{run}: {own:.1f} min"
        if parent and os.path.isdir(os.path.join(parent, "train")):
            total = summaries.total_training_minutes(run)
            line += (f" + {total - own:.1f} min of {os.path.basename(parent)}"
                     f" = {total:.1f} min")
        print(line)


if __name__ == "__main__":
    main(sys.argv[1:])
