"""--mode=uho: search the adaptation omega (paper appendix C), write omega.json."""

import dataclasses
import json
import os

import numpy as np
import tensorflow as tf

from efficientlab_tf import summaries
from efficientlab_tf.evaluation import uho
from efficientlab_tf.runners.common import experiment_with_weights
from efficientlab_tf.runners.common import scoring_tasks


def score_fn(exp, tasks):
    """`score(lr, max_steps, batch_size, patience) -> (best IoU, steps)`:
    all `tasks` advance one step at a time and the mean query IoU is early
    stopped, so steps past the stopping point are never computed."""
    seed = exp.config.eval.seed

    def score(lr, max_steps, batch_size, patience):
        start_fn, advance_fn = exp.learner.stepper(dataclasses.replace(
            exp.config.eval_omega, batch_size=batch_size))
        lr = tf.constant(lr, tf.float32)
        one = tf.constant(1, tf.int32)
        states, scores = [], []
        for task in tasks:
            state, value = start_fn(task.query_images, task.query_masks)
            states.append(state)
            scores.append(float(value))

        def step(t):
            if t == 0:
                return float(np.mean(scores))
            for i, task in enumerate(tasks):
                states[i], value = advance_fn(
                    *task, states[i], lr, tf.constant(t - 1, tf.int32),
                    one, tf.constant([seed, i], tf.int32))
                scores[i] = float(value)
            return float(np.mean(scores))

        best, best_t, _ = uho.early_stopped_score(step, max_steps, patience)
        return best, best_t

    return score


def run(config, record_fn, model=None):
    record_fn(config)
    exp, _ = experiment_with_weights(config, model)
    tasks = scoring_tasks(exp, config.uho.tasks)
    writer = tf.summary.create_file_writer(os.path.join(config.run.workdir, "uho"))
    counter = [0]

    def summary_fn(trial):
        with writer.as_default():
            for key in ("mean_iou", "lr", "best_steps", "batch_size"):
                tf.summary.scalar(f"uho/{key}", trial[key], step=counter[0])
        counter[0] += 1
        summaries.write_session(  # One HParams session per trial.
            os.path.join(config.run.workdir, "uho", "trials",
                         f"{trial['round']}_{trial['trial']}"),
            {"lr": trial["lr"], "max_steps": trial["max_steps"],
             "batch_size": trial["batch_size"], "round": trial["round"]},
            {"uho/mean_iou": trial["mean_iou"], "uho/best_steps": trial["best_steps"]})

    # The test-time optimizer and scope; lr, steps and batch size are searched.
    start = dataclasses.replace(config.eval_omega,
                                batch_size=config.train_omega.batch_size)
    uho.search(score_fn(exp, tasks), config.uho, config.run.workdir, start,
               summary_fn, seed=config.run.seed, shots=config.eval.shots)
    writer.flush()
    with open(os.path.join(config.run.workdir, "omega.json")) as f:
        result = json.load(f)
    print(json.dumps(result, indent=2))
    return result
