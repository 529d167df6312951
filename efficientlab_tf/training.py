"""The outer loop: tasks, checkpoints, TensorBoard, evaluation and export.

Randomness is a pure function of (seed, meta-iteration): meta-batch s holds
tasks s*M .. s*M+M-1 of the seeded stream and the inner loops are seeded
with (seed, s). A checkpoint therefore needs only the model, the outer
optimizer and the step to resume exactly where an uninterrupted run would
be; Ctrl-C saves one before exiting and `kill -9` loses at most
`checkpoint_every` iterations.
"""

import dataclasses
import os
import time

import numpy as np
import tensorflow as tf
from absl import logging

from efficientlab_tf import distribute
from efficientlab_tf import io
from efficientlab_tf import summaries
from efficientlab_tf import workdir as workdir_lib
from efficientlab_tf.data.source import meta_batches
from efficientlab_tf.data.source import tasks_by_index
from efficientlab_tf.evaluation import plots
from efficientlab_tf.experiment import Experiment
from efficientlab_tf.experiment import load_model_weights
from efficientlab_tf.experiment import resolve_checkpoints  # noqa: F401
from efficientlab_tf.hard_tasks import HardTaskPool
from efficientlab_tf.hard_tasks import hard_count
from efficientlab_tf.meta.learner import linear_meta_step


class NonFiniteError(FloatingPointError):
    """Training produced a NaN or Inf; nothing non-finite was saved."""


def check_finite_weights(model, what):
    """Raises NonFiniteError before `what` (a save or export) of bad weights."""
    bad = [v.path for v in model.variables
           if tf.as_dtype(v.dtype).is_floating
           and not bool(tf.reduce_all(tf.math.is_finite(v.value)))]
    if bad:
        raise NonFiniteError(
            f"refusing to {what}: {len(bad)} variables hold NaN/Inf "
            f"(first: {bad[0]}).")


def _image_summary(exp, task, step):
    omega = exp.config.eval_omega
    _, probs = exp.eval_fn(omega)(*task, tf.constant(omega.lr, tf.float32),
                                  tf.constant(omega.steps, tf.int32),
                                  tf.constant([0, 0]))
    grid = plots.prediction_grid(task, probs)
    tf.summary.image("meta_val/support_gt_query_pred", grid[None], step=step,
                     description="top: support with ground truth (green); "
                     "bottom: query, prediction red, ground truth green")


def _format_eta(seconds):
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def train(config, model=None):
    """Meta-trains (or joint-trains) as configured; returns the results dict."""
    return run(prepare(config, model))


class _Prepared:
    """Everything built and restored before the first step."""

    def __init__(self, exp, step, manager, val_tasks, test_tasks, pool=None):
        self.exp, self.step, self.manager = exp, step, manager
        self.val_tasks, self.test_tasks = val_tasks, test_tasks
        self.pool = pool  # HardTaskPool with --hard_task_fraction, else None.


def prepare(config, model=None):
    """Builds model, learner and data; restores or warm-starts.

    Every input error (bad flag values, missing files, a workdir that is a
    file, a checkpoint of another model, classes too small for the shots,
    missing packages) surfaces here, before training. A corrupt newest
    checkpoint is skipped with a warning (see `workdir.restore_intact`).
    """
    cfg = config
    workdir = cfg.run.workdir
    workdir_lib.prepare(workdir)
    exp = Experiment(cfg, model)
    # The evaluation task sets are drawn now, so shot counts that the classes
    # cannot serve fail at second 0, not after training.
    val_tasks = exp.eval_tasks("val") if exp.has_split("val") else None
    test_tasks = exp.eval_tasks("test")
    learner = exp.learner
    step = tf.Variable(0, dtype=tf.int64, name="step")
    trackables = {"model": exp.model, "step": step}
    if learner.meta_optimizer is not None:
        trackables["meta_optimizer"] = learner.meta_optimizer
    pool = None
    if cfg.meta.hard_task_fraction:
        pool = HardTaskPool(cfg.meta.hard_task_pool)
        trackables.update(pool.trackables())
    ckpt = tf.train.Checkpoint(**trackables)
    # The run holds the workdir's lock, so a `ckpt-N_temp` folder here is
    # what a killed save left (TF writes a checkpoint there, then renames).
    workdir_lib.remove_checkpoint_litter(os.path.join(workdir, "checkpoints"))
    manager = tf.train.CheckpointManager(
        ckpt, os.path.join(workdir, "checkpoints"),
        max_to_keep=cfg.run.keep_checkpoints)
    if manager.checkpoints:
        prefix = workdir_lib.restore_intact(ckpt, manager.checkpoints)
        logging.info("Resumed from %s at step %d.", prefix, int(step))
    elif cfg.run.init_from:
        prefix = load_model_weights(exp.model, cfg.run.init_from)
        logging.info("Initialised the model from %s.", prefix)
    return _Prepared(exp, step, manager, val_tasks, test_tasks, pool)


def run(prepared):
    """The training loop of a `prepare`d run; returns the results dict.

    Raises:
        NonFiniteError: a step produced a NaN/Inf loss or meta-direction;
            nothing was saved after it, so the newest checkpoint is the last
            finite one.
    """
    exp, step, manager = prepared.exp, prepared.step, prepared.manager
    cfg = exp.config
    learner = exp.learner
    workdir = cfg.run.workdir
    # A non-chief worker of a multi-worker run computes its replicas'
    # share of every step and writes nothing (the chief saves, logs,
    # evaluates and exports).
    chief = distribute.is_chief(cfg.run)
    if chief:
        writer = tf.summary.create_file_writer(os.path.join(workdir, "train"))
        val_writer = tf.summary.create_file_writer(
            os.path.join(workdir, "meta_val"))
    else:
        writer = val_writer = tf.summary.create_noop_writer()
    val_tasks = prepared.val_tasks if chief else None
    total = cfg.meta.meta_iters
    start = int(step)
    batches = iter(meta_batches(exp.source, cfg, start))
    is_joint = cfg.meta.algo == "joint"
    pool = prepared.pool
    meta_batch = cfg.meta.meta_batch
    hard = hard_count(cfg.meta.hard_task_fraction, meta_batch) if pool else 0
    inner_lr = tf.constant(cfg.meta.inner_lr, tf.float32)
    last_time, last_step = time.time(), start
    logging.info("Training %s from step %d to %d in %s.", cfg.meta.algo,
                 start, total, workdir)
    if val_tasks is None:
        logging.info("No meta-val classes (--val_classes=0): training on "
                     "meta-train classes without meta-validation.")
    # The HParams session (TensorBoard compares runs by it); its metrics are
    # added when the run ends.
    hparams_dir = os.path.join(workdir, "hparams")
    if chief:
        summaries.write_session(
            hparams_dir, summaries.run_hparams(cfg), {},
            trial_id=os.path.basename(os.path.normpath(workdir)),
            metric_tags=summaries.RUN_METRICS)

    def validate(s):
        result = exp.evaluate(val_tasks, name="meta_val")
        with val_writer.as_default():
            tf.summary.scalar("meta_val/mean_iou", result["mean_iou"], step=s)
            tf.summary.scalar("meta_val/ci95", result["ci95"], step=s)
        logging.info("step %d: meta-val %d-shot mean IoU %.4f +- %.4f "
                     "(%d tasks)", s, cfg.eval.shots, result["mean_iou"],
                     result["ci95"], result["tasks"])
        return result

    def save(number):
        if not chief:
            return None
        check_finite_weights(exp.model, "save a checkpoint")
        with io.writing(f"checkpoint {number}", manager.directory):
            return manager.save(checkpoint_number=number)

    try:
        while int(step) < total:
            s = int(step)
            tasks = next(batches)
            ids = list(range(s * meta_batch, (s + 1) * meta_batch))
            picks = pool.sample(hard, (cfg.run.seed, s)) if hard else []
            if picks:  # The last `hard` tasks are re-drawn from the pool.
                extra = tasks_by_index(exp.source, cfg, picks)
                tasks = tf.nest.map_structure(
                    lambda a, b: tf.concat([a[:meta_batch - hard], b], 0),
                    tasks, extra)
                ids = ids[:meta_batch - hard] + picks
            seed = tf.constant([cfg.run.seed, s], tf.int32)
            if is_joint:
                metrics = learner.joint_step(tasks, inner_lr, seed)
                meta_lr = 0.0
            else:
                meta_lr = linear_meta_step(cfg.meta, s)
                # Query scores are computed on logging steps only.
                log = (s + 1) % cfg.run.log_every == 0 or s + 1 == total
                log = log or bool(hard)  # The pool needs every step's scores.
                metrics = learner.meta_step(
                    tasks, tf.constant(meta_lr, tf.float32), seed,
                    tf.constant(log))
            s += 1
            if not bool(metrics["finite"]):  # One scalar read per step.
                raise NonFiniteError(
                    f"meta-iteration {s}: the loss or meta-direction is NaN/Inf "
                    f"(loss {float(metrics['meta_train_loss']):.4g}); training "
                    "stopped and nothing was saved or exported, so "
                    f"{manager.latest_checkpoint or 'no checkpoint'} is the "
                    "last finite state. Lower --inner_lr or --meta_step.")
            if pool is not None:
                pool.update(ids, metrics["task_scores"].numpy(), s - 1)
            step.assign_add(1)
            if s % cfg.run.log_every == 0 or s == total:
                now = time.time()
                rate = (now - last_time) / max(s - last_step, 1)
                last_time, last_step = now, s
                values = {k: float(v) for k, v in metrics.items()
                          if k not in ("finite", "task_scores")}
                if pool is not None:
                    hardest = pool.entries()
                    values["hard_tasks_in_batch"] = float(len(picks))
                    values["hard_pool_mean_iou"] = float(
                        np.mean([e[1] for e in hardest])) if hardest else 0.0
                with writer.as_default():
                    for k, v in values.items():
                        tf.summary.scalar(f"train/{k}", v, step=s)
                    tf.summary.scalar("train/meta_step_size", meta_lr, step=s)
                    tf.summary.scalar("train/inner_lr", cfg.meta.inner_lr, step=s)
                    tf.summary.scalar("train/seconds_per_iteration", rate, step=s)
                logging.info(
                    "step %d/%d | loss %.4f | query IoU pre %.3f post %.3f | "
                    "%.2f s/it | ETA %s", s, total, values["meta_train_loss"],
                    values["pre_adapt_query_iou"],
                    values["post_adapt_query_iou"], rate,
                    _format_eta(rate * (total - s)))
            if (chief and cfg.run.image_every and s % cfg.run.image_every == 0
                    and val_tasks is not None):
                with val_writer.as_default():
                    _image_summary(exp, val_tasks[0], s)
            if s % cfg.run.checkpoint_every == 0:
                save(s)
            if (cfg.eval.every and s % cfg.eval.every == 0 and s < total
                    and val_tasks is not None):
                validate(s)
    except KeyboardInterrupt:
        path = save(int(step))
        logging.warning("Interrupted: saved %s; rerun the same command to "
                        "resume.", path)
        raise
    if manager.latest_checkpoint is None or not manager.latest_checkpoint.endswith(
            f"-{int(step)}"):
        save(int(step))
    writer.flush()
    if not chief:
        kind, index = distribute.task_role()
        logging.info("Worker %s %d done at step %d; the chief writes the "
                     "results.", kind, index, int(step))
        return {"step": int(step), "worker": index}

    results = {"step": int(step), "config": dataclasses.asdict(cfg)}
    if val_tasks is not None:
        results["meta_val"] = _strip(validate(int(step)))
    test = exp.evaluate(prepared.test_tasks, name="meta_test")
    results["meta_test"] = _strip(test)
    final = {"hparams/meta_test_mean_iou": test["mean_iou"],
             "hparams/meta_test_ci95": test["ci95"]}
    if val_tasks is not None:
        final["hparams/meta_val_mean_iou"] = results["meta_val"]["mean_iou"]
    summaries.write_metrics(hparams_dir, final, int(step))
    omega = cfg.eval_omega
    logging.info("meta-test %d-shot mean IoU %.4f +- %.4f (%d tasks, omega: "
                 "%d steps, lr %g, batch %d)", cfg.eval.shots, test["mean_iou"],
                 test["ci95"], test["tasks"], omega.steps, omega.lr,
                 omega.batch_size)
    if cfg.run.export:
        check_finite_weights(exp.model, "export")
        results["saved_model"] = exp.export(os.path.join(workdir, "saved_model"))
        logging.info("Exported SavedModel to %s.", results["saved_model"])
    io.write_json(os.path.join(workdir, "results.json"), results)
    val_writer.flush()
    return results


def _strip(result):
    out = dict(result)
    out["per_task"] = [round(x, 6) for x in np.asarray(out["per_task"]).tolist()]
    return out
