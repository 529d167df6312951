"""The outer loop: tasks, checkpoints, TensorBoard, evaluation and export.

Randomness is a pure function of (seed, meta-iteration): meta-batch s holds
tasks s*M .. s*M+M-1 of the seeded stream and the inner loops are seeded
with (seed, s). A checkpoint therefore needs only the model, the outer
optimizer and the step to resume exactly where an uninterrupted run would
be; Ctrl-C saves one before exiting and `kill -9` loses at most
`checkpoint_every` iterations.
"""

import contextlib
import dataclasses
import os
import time

import numpy as np
import tensorflow as tf
from absl import logging

from efficientlab_tf import distribute
from efficientlab_tf import storage
from efficientlab_tf import summaries
from efficientlab_tf import workdir as workdir_lib
from efficientlab_tf.data.source import meta_batches
from efficientlab_tf.data.source import resampled_tasks
from efficientlab_tf.evaluation import plots
from efficientlab_tf.experiment import Experiment
from efficientlab_tf.experiment import load_model_weights
from efficientlab_tf.hard_tasks import HardTaskPool
from efficientlab_tf.hard_tasks import hard_count
from efficientlab_tf.meta.evaluator import NONFINITE_PREDICTION
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


@contextlib.contextmanager
def finite_evaluation(what):
    """Turns the evaluator's NaN/Inf check inside `what` into NonFiniteError.

    A step can leave finite but exploded weights (e.g. --inner_lr=1e6): the
    training loss is still finite, and the first evaluation after it
    (meta-validation, the image summary, the final meta-test) is where the
    predictions become NaN. Nothing is saved after such a step.
    """
    try:
        yield
    except tf.errors.InvalidArgumentError as e:
        if NONFINITE_PREDICTION not in str(e.message):
            raise
        raise NonFiniteError(
            f"{what}: the adapted network predicts NaN/Inf, so the weights "
            "diverged; training stopped and nothing more was saved or "
            "exported. Lower --inner_lr or --meta_step.") from None


def _image_summary(exp, task, step):
    omega = exp.config.eval_omega
    _, probs = exp.eval_fn(omega)(*task, tf.constant(omega.lr, tf.float32),
                                  tf.constant(omega.steps, tf.int32),
                                  tf.constant([0, 0]))
    grid = plots.prediction_grid(task, probs)
    tf.summary.image("meta_val/support_gt_query_pred", grid[None], step=step,
                     description="top: support with ground truth (green); "
                     "bottom: query, prediction red, ground truth green")


def format_eta(seconds):
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
    # No meta-test classes: a model trained on every class (a shipped one).
    test_tasks = exp.eval_tasks("test") if exp.has_split("test") else None
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
    return _Loop(prepared).run()


class _Loop:
    """The phases of a training run: per step draw the meta-batch (with hard
    tasks), step, check, log, image, checkpoint and meta-validate; at the end
    save, evaluate on meta-test, export and write results.json.

    A non-chief worker of a multi-worker run computes its replicas' share of
    every step and writes nothing (the chief saves, logs, evaluates and
    exports).
    """

    def __init__(self, prepared):
        self.p = prepared
        self.exp = prepared.exp
        self.cfg = cfg = prepared.exp.config
        self.workdir = cfg.run.workdir
        self.chief = distribute.is_chief(cfg.run)
        if self.chief:
            self.writer = tf.summary.create_file_writer(
                os.path.join(self.workdir, "train"))
            self.val_writer = tf.summary.create_file_writer(
                os.path.join(self.workdir, "meta_val"))
        else:
            self.writer = self.val_writer = tf.summary.create_noop_writer()
        self.val_tasks = prepared.val_tasks if self.chief else None
        self.total = cfg.meta.meta_iters
        self.meta_batch = cfg.meta.meta_batch
        self.hard = (hard_count(cfg.meta.hard_task_fraction, self.meta_batch)
                     if prepared.pool else 0)
        self.hparams_dir = os.path.join(self.workdir, "hparams")
        self.last_time, self.last_step = time.time(), int(prepared.step)

    # ------------------------------------------------------------- phases
    def run(self):
        cfg, start = self.cfg, int(self.p.step)
        logging.info("Training %s from step %d to %d in %s.", cfg.meta.algo,
                     start, self.total, self.workdir)
        if self.val_tasks is None:
            logging.info("No meta-val classes (--val_classes=0): training on "
                         "meta-train classes without meta-validation.")
        if self.chief:  # The HParams session (TensorBoard compares runs by
            # it); its metrics are added when the run ends.
            summaries.write_session(
                self.hparams_dir, summaries.run_hparams(cfg), {},
                trial_id=os.path.basename(os.path.normpath(self.workdir)),
                metric_tags=summaries.RUN_METRICS)
        batches = iter(meta_batches(self.exp.source, cfg, start))
        try:
            while int(self.p.step) < self.total:
                self.iteration(next(batches))
        except KeyboardInterrupt:
            path = self.save(int(self.p.step))
            logging.warning("Interrupted: saved %s; rerun the same command to "
                            "resume.", path)
            raise
        latest = self.p.manager.latest_checkpoint
        if latest is None or not latest.endswith(f"-{int(self.p.step)}"):
            self.save(int(self.p.step))
        self.writer.flush()
        if not self.chief:
            kind, index = distribute.task_role()
            logging.info("Worker %s %d done at step %d; the chief writes the "
                         "results.", kind, index, int(self.p.step))
            return {"step": int(self.p.step), "worker": index}
        return self.finish()

    def iteration(self, tasks):
        """One meta-iteration s -> s + 1 and what follows it."""
        cfg, s = self.cfg, int(self.p.step)
        tasks, ids, picks = self.with_hard_tasks(tasks, s)
        metrics, meta_lr = self.step(tasks, s)
        s += 1
        if not bool(metrics["finite"]):  # One scalar read per step.
            raise NonFiniteError(
                f"meta-iteration {s}: the loss or meta-direction is NaN/Inf "
                f"(loss {float(metrics['meta_train_loss']):.4g}); training "
                "stopped and nothing was saved or exported, so "
                f"{self.p.manager.latest_checkpoint or 'no checkpoint'} is "
                "the last finite state. Lower --inner_lr or --meta_step.")
        if self.p.pool is not None:
            self.p.pool.update(ids, metrics["task_scores"].numpy(), s - 1)
        self.p.step.assign_add(1)
        if s % cfg.run.log_every == 0 or s == self.total:
            self.log(s, metrics, meta_lr, picks)
        if (self.chief and cfg.run.image_every and s % cfg.run.image_every == 0
                and self.val_tasks is not None):
            with self.val_writer.as_default(), finite_evaluation(
                    f"meta-iteration {s}, the meta-val image summary"):
                _image_summary(self.exp, self.val_tasks[0], s)
        if s % cfg.run.checkpoint_every == 0:
            self.save(s)
        if (cfg.eval.every and s % cfg.eval.every == 0 and s < self.total
                and self.val_tasks is not None):
            self.validate(s)

    def with_hard_tasks(self, tasks, s):
        """(meta-batch, stream indices of its tasks, hard picks): the last
        `hard` tasks are new tasks of the classes of tasks drawn from the
        hard-task pool (`resampled_tasks`)."""
        m, hard = self.meta_batch, self.hard
        ids = list(range(s * m, (s + 1) * m))
        picks = self.p.pool.sample(hard, (self.cfg.run.seed, s)) if hard else []
        if picks:
            extra = resampled_tasks(self.exp.source, self.cfg, picks, s)
            tasks = tf.nest.map_structure(
                lambda a, b: tf.concat([a[:m - hard], b], 0), tasks, extra)
            ids = ids[:m - hard] + picks
        return tasks, ids, picks

    def step(self, tasks, s):
        """(metrics, meta step size) of meta-iteration s."""
        learner, seed = self.exp.learner, tf.constant([self.cfg.run.seed, s], tf.int32)
        if self.cfg.meta.algo == "joint":
            return learner.joint_step(tasks, seed), 0.0
        meta_lr = linear_meta_step(self.cfg.meta, s)
        # Query scores are computed on logging steps only, and every step
        # with hard tasks (the pool needs them).
        log = ((s + 1) % self.cfg.run.log_every == 0 or s + 1 == self.total
               or bool(self.hard))
        return learner.meta_step(tasks, tf.constant(meta_lr, tf.float32), seed,
                                 tf.constant(log)), meta_lr

    def log(self, s, metrics, meta_lr, picks):
        now = time.time()
        rate = (now - self.last_time) / max(s - self.last_step, 1)
        self.last_time, self.last_step = now, s
        values = {k: float(v) for k, v in metrics.items()
                  if k not in ("finite", "task_scores")}
        if self.p.pool is not None:
            hardest = self.p.pool.entries()
            values["hard_tasks_in_batch"] = float(len(picks))
            values["hard_pool_mean_iou"] = float(
                np.mean([e[1] for e in hardest])) if hardest else 0.0
        with self.writer.as_default():
            for k, v in values.items():
                tf.summary.scalar(f"train/{k}", v, step=s)
            tf.summary.scalar("train/meta_step_size", meta_lr, step=s)
            tf.summary.scalar("train/inner_lr", self.cfg.meta.inner_lr, step=s)
            tf.summary.scalar("train/seconds_per_iteration", rate, step=s)
        logging.info(
            "step %d/%d | loss %.4f | query IoU pre %.3f post %.3f | "
            "%.2f s/it | ETA %s", s, self.total, values["meta_train_loss"],
            values["pre_adapt_query_iou"], values["post_adapt_query_iou"],
            rate, format_eta(rate * (self.total - s)))

    def validate(self, s):
        with finite_evaluation(f"meta-iteration {s}, meta-validation"):
            result = self.exp.evaluate(self.val_tasks, name="meta_val")
        with self.val_writer.as_default():
            tf.summary.scalar("meta_val/mean_iou", result["mean_iou"], step=s)
            tf.summary.scalar("meta_val/ci95", result["ci95"], step=s)
        logging.info("step %d: meta-val %d-shot mean IoU %.4f +- %.4f "
                     "(%d tasks)", s, self.cfg.eval.shots, result["mean_iou"],
                     result["ci95"], result["tasks"])
        return result

    def save(self, number):
        if not self.chief:
            return None
        check_finite_weights(self.exp.model, "save a checkpoint")
        with storage.writing(f"checkpoint {number}", self.p.manager.directory):
            return self.p.manager.save(checkpoint_number=number)

    def finish(self):
        """Meta-val and meta-test evaluation, export, results.json."""
        cfg, exp, step = self.cfg, self.exp, int(self.p.step)
        results = {"step": step, "config": dataclasses.asdict(cfg)}
        if self.val_tasks is not None:
            results["meta_val"] = _strip(self.validate(step))
        final = {}
        if self.p.test_tasks is not None:
            with finite_evaluation(f"meta-iteration {step}, the final "
                                   "meta-test evaluation"):
                test = exp.evaluate(self.p.test_tasks, name="meta_test")
            results["meta_test"] = _strip(test)
            final = {"hparams/meta_test_mean_iou": test["mean_iou"],
                     "hparams/meta_test_ci95": test["ci95"]}
            omega = cfg.eval_omega
            logging.info("meta-test %d-shot mean IoU %.4f +- %.4f (%d tasks, "
                         "omega: %d steps, lr %g, batch %d)", cfg.eval.shots,
                         test["mean_iou"], test["ci95"], test["tasks"],
                         omega.steps, omega.lr, omega.batch_size)
        else:
            logging.info("No meta-test classes: every class trained, nothing "
                         "held out to score (its cross-validated figures come "
                         "from --fold runs).")
        if self.val_tasks is not None:
            final["hparams/meta_val_mean_iou"] = results["meta_val"]["mean_iou"]
        summaries.write_metrics(self.hparams_dir, final, step)
        if cfg.run.export:
            check_finite_weights(exp.model, "export")
            results["saved_model"] = exp.export(
                os.path.join(self.workdir, "saved_model"))
            logging.info("Exported SavedModel to %s.", results["saved_model"])
        storage.write_json(os.path.join(self.workdir, "results.json"), results)
        self.val_writer.flush()
        return results


def _strip(result):
    out = dict(result)
    out["per_task"] = [round(x, 6) for x in np.asarray(out["per_task"]).tolist()]
    return out
