"""--mode=fpk: the FP-k few-to-many-shot benchmark (paper section 6)."""

import os

import tensorflow as tf

from efficientlab_tf import storage
from efficientlab_tf.evaluation import fpk
from efficientlab_tf.experiment import Experiment
from efficientlab_tf.runners.compare import initializations

# Task seeds of FP-k draws live above the evaluation task indices.
_SEED_OFFSET = 100_000


def run(config, record_fn, model=None):
    record_fn(config)
    f = config.fpk
    exp = Experiment(config, model)
    test_classes = exp.source.classes("test")
    if f.tasks > len(test_classes):
        raise ValueError(f"--fpk_tasks={f.tasks} exceeds the "
                         f"{len(test_classes)} meta-test classes.")
    shots, iters, dropped, min_pairs = fpk.plan_shots(
        exp.source.class_sizes("test"), f.shots, f.iters, f.tasks, f.query)
    if dropped:
        print(f"FP-k: k = {dropped} need more than the data holds: fewer than "
              f"{f.tasks} test classes have k + {f.query} examples (examples "
              f"per class: {exp.source.class_sizes('test')}); they are skipped.")
    seed = config.eval.seed

    def task_fn(t, r, k):
        task_seed = tf.constant([seed, _SEED_OFFSET + 1000 * t + r], tf.int32)
        return exp.source.task_of_class("test", t, k, f.query, task_seed,
                                        min_pairs=min_pairs)

    omega = config.eval_omega
    rows = fpk.run_fpk(exp.eval_fn(omega), task_fn, initializations(exp, config),
                       shots, iters, f.tasks, f.repeats, omega.lr, seed=seed)
    md = fpk.write_fpk(rows, config.run.workdir, query=f.query)
    storage.write_json(os.path.join(config.run.workdir, "fpk.json"), rows)
    print(md)
    return rows
