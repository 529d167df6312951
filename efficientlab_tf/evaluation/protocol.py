"""k-shot evaluation: adapt with U, predict the query, restore; mean IoU +- 95% CI.

Takes an `eval_fn(support_images, support_masks, query_images, query_masks,
lr, steps, seed) -> (iou per query, probs)` callable (MetaLearner.eval_task),
not a trainer. A task's score is the mean IoU over its queries; the
reported score is the mean over tasks with a 95% CI of 1.96 sigma / sqrt(n)
(paper section 5). Every row evaluated on the same `tasks` list can be
compared pair by pair (`paired_difference`).

Tasks are independent, so `parallel` > 1 adapts that many at once from
threads (the compiled eval function runs outside the GIL). Only the tensor
form of the update routine may do so (it never writes variables); task i
keeps its seed (seed, i), so the numbers are the same task for task. Under a
strategy of several replicas the eval function is a `ReplicatedEval`, and
`evaluate` hands it one task per replica at a time instead.
"""

import collections
import concurrent.futures
import itertools
import math
import time

import numpy as np
import tensorflow as tf
from absl import logging

from efficientlab_tf import storage
from efficientlab_tf.meta.evaluator import ReplicatedEval


def mean_ci95(values):
    """(mean, half-width) with half-width = 1.96 sigma / sqrt(n) (paper).

    sigma is the population standard deviation of `values` (numpy's
    default, ddof=0); n = len(values).
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0:
        raise ValueError("mean_ci95 needs at least one value; got none.")
    return float(values.mean()), float(1.96 * values.std() / math.sqrt(values.size))


def materialize(dataset):
    """Lists the tasks of a finite tf.data dataset (fixed evaluation set)."""
    return list(dataset)


# Grappler's memory optimizer replaces a large AddN (the gradient sums of the
# inner loop) by accumulation into a TemporaryVariable named after the step
# container, node, loop frame and iteration. Two concurrent calls of one
# compiled function can ask for the same name, and one of them fails with
# AlreadyExistsError: seen at 224 px with B0 and --eval_parallel=2 (the
# issue 27 rehearsal), at the first meta-validation. An evaluation task reads
# the variables and writes nothing (tensor form), so running it again gives
# the same value; after this many tries the error goes up.
RACE_RETRIES = 5


def _rerun_on_race(fn):
    def run(i, item):
        for attempt in range(1, RACE_RETRIES + 1):
            try:
                return fn(i, item)
            except tf.errors.AlreadyExistsError:
                if attempt == RACE_RETRIES:
                    raise
                logging.warning(
                    "Task %d met TensorFlow's temporary-variable race between "
                    "concurrent tasks (try %d of %d); running it again "
                    "(--eval_parallel=1 avoids it).", i, attempt, RACE_RETRIES)
                time.sleep(0.05 * attempt)
        return None

    return run


def ordered_map(fn, items, parallel):
    """fn(i, item) for each item, results in order; with parallel > 1 at most
    2 x parallel items are in flight (a lazy task stream is not read ahead
    into memory), and a task that meets TensorFlow's temporary-variable race
    (`RACE_RETRIES`) is run again."""
    if parallel <= 1:
        for i, item in enumerate(items):
            yield fn(i, item)
        return
    fn = _rerun_on_race(fn)
    pending = collections.deque()
    with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
        for i, item in enumerate(items):
            pending.append(pool.submit(fn, i, item))
            if len(pending) >= 2 * parallel:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _grouped_scores(eval_fn, tasks, lr, steps, seed):
    """Per-task mean IoUs from `eval_fn.group`, `replicas` tasks per call;
    a short last group is padded with its last task (scores dropped)."""
    items = iter(tasks)
    first = 0
    while True:
        group = list(itertools.islice(items, eval_fn.replicas))
        if not group:
            return
        count = len(group)
        group += [group[-1]] * (eval_fn.replicas - count)
        ids = list(range(first, first + count))
        ids += [ids[-1]] * (eval_fn.replicas - count)
        seeds = tf.constant([[seed, i] for i in ids], tf.int32)
        yield from eval_fn.group(group, lr, steps, seeds)[:count]
        first += count


def evaluate(eval_fn, tasks, lr, steps, seed=0, name="eval", log_every=0,
             parallel=1):
    """Scores `eval_fn` on `tasks` with adaptation omega = (lr, steps).

    `parallel` tasks are adapted at once (see the module docstring); a
    `ReplicatedEval` adapts one task per replica at once instead.

    Returns:
        dict with "mean_iou", "ci95", "tasks" (number), "per_task" (list of
        per-task mean IoU), "seconds" and "tasks_per_second".
    """
    lr = tf.constant(lr, tf.float32)
    steps = tf.constant(steps, tf.int32)
    per_task = []
    start = time.time()

    def score(i, task):
        iou, _ = eval_fn(task.support_images, task.support_masks,
                         task.query_images, task.query_masks, lr, steps,
                         tf.constant([seed, i], tf.int32))
        return float(tf.reduce_mean(iou))

    if isinstance(eval_fn, ReplicatedEval):
        values = _grouped_scores(eval_fn, tasks, lr, steps, seed)
    else:
        values = ordered_map(score, tasks, parallel)
    for i, value in enumerate(values):
        per_task.append(value)
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


def evaluate_curve(stepper, tasks, lr, steps_list, seed=0, parallel=1):
    """The adaptation curve: every task's query IoU after each step count
    of `steps_list`, from one adaptation per task.

    Args:
        stepper: `(start_fn, advance_fn)` of `Evaluator.stepper(omega)`.
        tasks: Fixed list of TaskBatch.
        lr: The inner learning rate.
        steps_list: Increasing step counts (0: before adaptation).
        seed, parallel: As `evaluate` (task i adapts with seed [seed, i], so
            the IoU after s steps is `evaluate`'s with steps=s).

    Returns:
        {s: {"mean_iou", "ci95", "per_task"}} for each s of `steps_list`.
    """
    steps_list = [int(s) for s in steps_list]
    if steps_list != sorted(set(steps_list)) or steps_list[0] < 0:
        raise ValueError(f"curve steps must increase from 0 or more; got {steps_list}.")
    start_fn, advance_fn = stepper
    lr = tf.constant(lr, tf.float32)

    def curve(i, task):
        state, score = start_fn(task.query_images, task.query_masks)
        done, out = 0, []
        for s in steps_list:
            if s > done:  # The query is predicted only where it is reported.
                state, score = advance_fn(
                    *task, state, lr, tf.constant(done, tf.int32),
                    tf.constant(s - done, tf.int32), tf.constant([seed, i], tf.int32))
                done = s
            out.append(float(score))
        return out

    per_task = list(ordered_map(curve, tasks, parallel))
    result = {}
    for j, s in enumerate(steps_list):
        scores = [c[j] for c in per_task]
        mean, ci = mean_ci95(scores)
        result[s] = {"mean_iou": mean, "ci95": ci, "per_task": scores}
    return result


def paired_difference(per_task_a, per_task_b):
    """(mean, 95% CI half-width) of a - b over the same tasks."""
    a = np.asarray(per_task_a, np.float64)
    b = np.asarray(per_task_b, np.float64)
    if a.shape != b.shape:
        raise ValueError(
            f"paired rows need the same tasks; got {a.shape} and {b.shape}.")
    return mean_ci95(a - b)


def evaluate_by_class(eval_fn, class_tasks, class_names, lr, steps, seed=0,
                      name="eval", picture_fn=None, parallel=1):
    """The FSS-1000 protocol: every class, several draws, adapt/predict/reset.

    Args:
        eval_fn: As in `evaluate`.
        class_tasks: Iterable of (class position, TaskBatch).
        class_names: Names of the class positions.
        lr, steps: omega.
        picture_fn: Optional `picture_fn(index, class name, task, probs)`.
        parallel: Tasks adapted at once (module docstring).

    Returns:
        dict with "mean_iou", "ci95" (over all task draws), "tasks",
        "per_task", "per_class" ({name: [IoU per draw]}) and throughput.
    """
    lr = tf.constant(lr, tf.float32)
    steps = tf.constant(steps, tf.int32)
    per_task, per_class = [], {}
    start = time.time()

    def score(i, item):
        c, task = item
        iou, probs = eval_fn(task.support_images, task.support_masks,
                             task.query_images, task.query_masks, lr, steps,
                             tf.constant([seed, i], tf.int32))
        return c, task, float(tf.reduce_mean(iou)), probs

    for i, (c, task, value, probs) in enumerate(
            ordered_map(score, class_tasks, parallel)):
        per_task.append(value)
        per_class.setdefault(class_names[int(c)], []).append(value)
        if picture_fn is not None:
            picture_fn(i, class_names[int(c)], task, probs)
        if (i + 1) % 50 == 0:
            logging.info("%s: %d tasks, running mean IoU %.4f", name, i + 1,
                         np.mean(per_task))
    seconds = time.time() - start
    mean, ci = mean_ci95(per_task)
    return {"mean_iou": mean, "ci95": ci, "tasks": len(per_task),
            "per_task": per_task, "per_class": per_class, "seconds": seconds,
            "tasks_per_second": len(per_task) / max(seconds, 1e-9)}


def write_per_class_csv(result, path):
    """class, draws..., mean: one row per class (written atomically)."""
    import csv

    draws = max(len(v) for v in result["per_class"].values())
    with storage.atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["class"] + [f"iou_draw{d + 1}" for d in range(draws)]
                        + ["mean_iou"])
        for name, values in sorted(result["per_class"].items()):
            writer.writerow([name] + [f"{v:.6f}" for v in values]
                            + [""] * (draws - len(values))
                            + [f"{np.mean(values):.6f}"])
