"""Benchmarks a meta-iteration, an evaluation task and the input pipeline.

    python bench/bench_meta_step.py --algo=fomaml --image_size=64 --repeats=5

Prints medians over `repeats` timed runs of `iters` calls each (after one
warm-up call that traces, and with --jit_compile XLA-compiles: its time is
printed as the first call), for the demo configuration unless flags say
otherwise. `--parts` picks what is timed (XLA compiles of the nested meta-step
take long on CPU: `--parts=eval --jit_compile` times evaluation alone).
Figures go to BENCHMARKS.md with the machine they ran on.
"""

import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tensorflow as tf  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from efficientlab_tf import cli  # noqa: E402
from efficientlab_tf.data.source import meta_batches  # noqa: E402
from efficientlab_tf.experiment import Experiment  # noqa: E402

flags.DEFINE_integer("repeats", 5, "Timed repeats (median reported).")
flags.DEFINE_integer("iters", 5, "Calls per repeat.")
flags.DEFINE_list("parts", ["meta_step", "pipeline", "eval"],
                  "What to time: meta_step, pipeline, eval.")


def _median_seconds(fn, repeats, iters):
    """(seconds of the first call: trace, and XLA compile with --jit_compile;
    median seconds per call over `repeats` runs of `iters` calls)."""
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(iters):
            fn()
        times.append((time.perf_counter() - start) / iters)
    return first, statistics.median(times)


def main(argv):
    del argv
    f = flags.FLAGS
    unknown = set(f.parts) - {"meta_step", "pipeline", "eval"}
    if unknown:
        raise app.UsageError(f"--parts: unknown {sorted(unknown)}; choose from "
                             "meta_step, pipeline, eval.")
    config = cli.config_from_flags(f)
    exp = Experiment(config)
    batches = iter(meta_batches(exp.source, config, 0))
    tasks = next(batches)
    meta_lr = tf.constant(0.5)
    seed = tf.constant([0, 0])
    learner = exp.learner
    compiled = "trace + XLA compile" if config.run.jit_compile else "trace"
    print(f"algo={config.meta.algo} encoder={config.model.encoder} "
          f"image_size={config.model.image_size} meta_batch={config.meta.meta_batch} "
          f"inner_iters={config.meta.inner_iters} intra-op threads="
          f"{os.environ.get('TF_NUM_INTRAOP_THREADS', 'all')} "
          f"precision={config.run.precision} strategy={config.run.strategy} "
          f"replicas={exp.strategy.num_replicas_in_sync} "
          f"xla={config.run.jit_compile}", flush=True)
    if "meta_step" in f.parts:
        if config.meta.algo == "joint":
            step = lambda: learner.joint_step(tasks, seed)["meta_train_loss"].numpy()  # noqa: E731
        else:
            # As in training: the query scores are computed every step only
            # with hard tasks (the pool needs them), else on logging steps.
            log = tf.constant(config.meta.hard_task_fraction > 0)
            step = lambda: learner.meta_step(tasks, meta_lr, seed, log)["meta_train_loss"].numpy()  # noqa: E731
        first_step, s_step = _median_seconds(step, f.repeats, f.iters)
        images_per_step = config.meta.meta_batch * (
            config.meta.train_shots + config.data.train_query_shots)
        print(f"meta-iteration: {s_step:.3f} s (median of {f.repeats}), "
              f"{images_per_step / s_step:.1f} task images/s consumed; first "
              f"call ({compiled}) {first_step:.1f} s", flush=True)
    if "pipeline" in f.parts:
        images_per_step = config.meta.meta_batch * (
            config.meta.train_shots + config.data.train_query_shots)
        # Many batches per repeat, so the prefetch buffer cannot flatter the rate.
        _, s_pipe = _median_seconds(lambda: next(batches), f.repeats, 40)
        print(f"input pipeline: {images_per_step / s_pipe:.1f} images/s produced "
              f"({s_pipe * 1000:.1f} ms per meta-batch)", flush=True)
    if "eval" in f.parts:
        task = exp.eval_tasks("val", count=1)[0]
        lr = tf.constant(config.eval_omega.lr)
        steps = tf.constant(config.eval_omega.steps)
        first_eval, s_eval = _median_seconds(
            lambda: learner.eval_task(*task, lr, steps, seed)[0].numpy(),
            f.repeats, f.iters)
        print(f"evaluation task ({config.eval.shots}-shot, "
              f"{config.eval_omega.steps} steps): {s_eval:.3f} s (median of "
              f"{f.repeats}), {1 / s_eval:.2f} tasks/s; first call ({compiled}) "
              f"{first_eval:.1f} s", flush=True)


if __name__ == "__main__":
    cli.define_flags()
    app.run(main)
