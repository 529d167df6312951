"""k-shot evaluation: adapt with U, predict the query, restore; mean IoU +- 95% CI.

Takes an `eval_fn(support_images, support_masks, query_images, query_masks,
lr, steps, seed) -> (iou per query, probs)` callable (MetaLearner.eval_task),
not a trainer. A task's score is the mean IoU over its queries; the
reported score is the mean over tasks with a 95% CI of 1.96 sigma / sqrt(n)
(paper section 5). Every row evaluated on the same `tasks` list can be
compared pair by pair (`paired_difference`).
"""

import time

import numpy as np
import tensorflow as tf
from absl import logging

from efficientlab_tf.model.metrics import mean_ci95


def materialize(dataset):
    """Lists the tasks of a finite tf.data dataset (fixed evaluation set)."""
    return list(dataset)


def evaluate(eval_fn, tasks, lr, steps, seed=0, name="eval", log_every=0):
    """Scores `eval_fn` on `tasks` with adaptation omega = (lr, steps).

    Returns:
        dict with "mean_iou", "ci95", "tasks" (number), "per_task" (list of
        per-task mean IoU), "seconds" and "tasks_per_second".
    """
    lr = tf.constant(lr, tf.float32)
    steps = tf.constant(steps, tf.int32)
    per_task = []
    start = time.time()
    for i, task in enumerate(tasks):
        iou, _ = eval_fn(task.support_images, task.support_masks,
                         task.query_images, task.query_masks, lr, steps,
                         tf.constant([seed, i], tf.int32))
        per_task.append(float(tf.reduce_mean(iou)))
        if log_every and (i + 1) % log_every == 0:
            logging.info("%s: %d/%d tasks, running mean IoU %.4f", name,
                         i + 1, len(tasks), np.mean(per_task))
    seconds = time.time() - start
    mean, ci = mean_ci95(per_task)
    return {
        "mean_iou": mean,
        "ci95": ci,
        "tasks": len(per_task),
        "per_task": per_task,
        "seconds": seconds,
        "tasks_per_second": len(per_task) / max(seconds, 1e-9),
    }


def paired_difference(per_task_a, per_task_b):
    """(mean, 95% CI half-width) of a - b over the same tasks."""
    a = np.asarray(per_task_a, np.float64)
    b = np.asarray(per_task_b, np.float64)
    if a.shape != b.shape:
        raise ValueError(
            f"paired rows need the same tasks; got {a.shape} and {b.shape}.")
    return mean_ci95(a - b)
