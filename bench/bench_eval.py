"""Evaluation throughput: tasks/s of `Experiment.evaluate` (the protocol the
runners use), with `--eval_parallel` tasks adapted side by side.

    python bench/bench_eval.py --encoder=efficientnet_lite0 --image_size=96 \\
        --eval_inner_iters=50 --eval_tasks=6 --eval_parallel=2

Prints tasks/s of one evaluation of `--eval_tasks` meta-val tasks (after one
warm-up task that traces) and the per-task IoUs, which must not depend on
--eval_parallel. With `--strategy=mirrored --cpu_devices=2 --meta_batch=4`
(and `TF_NUM_INTRAOP_THREADS=1`) each of two replicas adapts one task at once.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from efficientlab_tf import cli  # noqa: E402
from efficientlab_tf.experiment import Experiment  # noqa: E402


def main(argv):
    del argv
    config = cli.config_from_flags(flags.FLAGS)
    keras.utils.set_random_seed(config.run.seed)
    exp = Experiment(config)
    tasks = exp.eval_tasks("val")
    exp.evaluate(tasks[:1])  # Traces.
    result = exp.evaluate(tasks)
    omega = config.eval_omega
    print(f"encoder={config.model.encoder} image_size={config.model.image_size} "
          f"{config.eval.shots}-shot, {omega.steps} steps, batch "
          f"{omega.batch_size}, {result['tasks']} tasks, eval_parallel="
          f"{config.eval.parallel}, replicas="
          f"{exp.strategy.num_replicas_in_sync} (one task each at once), intra-op threads="
          f"{os.environ.get('TF_NUM_INTRAOP_THREADS', 'all')}")
    print(f"{result['tasks_per_second']:.3f} tasks/s "
          f"({result['seconds'] / result['tasks']:.2f} s per task); per-task IoU "
          f"{[round(x, 4) for x in result['per_task']]}")


if __name__ == "__main__":
    cli.define_flags()
    app.run(main)
