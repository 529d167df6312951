"""TensorBoard HParams: every run, compare row and UHO trial is a session.

`tensorboard --logdir=runs` then compares runs side by side in the HParams
dashboard: a training run writes its hyperparameters (`run_hparams`) and its
final meta-val / meta-test mean IoU to `<workdir>/hparams`; `--mode=compare`
writes one session per row (`<workdir>/hparams/<row>`), UHO one per trial
(`<workdir>/uho/trials/<round>_<trial>`). Values are plain numbers, strings
and bools, as the HParams plugin requires.
"""

import json
import os
import re
import statistics

import tensorflow as tf
from tensorboard.plugins.hparams import api as hp

# Metric tags of a training run's session.
RUN_METRICS = ("hparams/meta_val_mean_iou", "hparams/meta_test_mean_iou",
               "hparams/meta_test_ci95")


def run_hparams(config):
    """The hyperparameters that distinguish training runs (flat dict)."""
    m, d, me, run = config.model, config.data, config.meta, config.run
    omega = config.eval_omega
    aug = d.augment
    return {
        "algo": me.algo, "encoder": m.encoder, "encoder_weights": m.encoder_weights,
        "image_size": m.image_size, "decoder": m.decoder, "bn_mode": m.bn_mode,
        "dataset": d.dataset, "fold": d.fold, "train_shots": me.train_shots,
        "inner_lr": me.inner_lr, "inner_steps": me.inner_iters,
        "inner_batch": me.inner_batch, "inner_optimizer": me.inner_optimizer,
        "meta_batch": me.meta_batch, "meta_step": me.meta_step,
        "meta_step_final": me.meta_step_final, "meta_iters": me.meta_iters,
        "meta_optimizer": me.meta_optimizer, "weight_decay": me.weight_decay,
        "adapt_scope": me.adapt_scope, "clustering_weight": me.clustering_weight,
        "consensus_weight": me.consensus_weight,
        "hard_task_fraction": me.hard_task_fraction,
        "learned_lr": m.learned_lr,
        "eval_lr": omega.lr, "eval_steps": omega.steps,
        "eval_batch": omega.batch_size, "eval_shots": config.eval.shots,
        "augment": ",".join(name for name, on in (
            ("translate", aug.translate), ("flip", aug.flip),
            ("noise", aug.noise_stddev), ("brightness", aug.brightness),
            ("erase", aug.erase_prob)) if on) or "none",
        "init_from": run.init_from or "", "seed": run.seed,
    }


def session_name(text):
    """A folder-safe session name for a row or trial."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "session"


def write_session(logdir, hparams, metrics, trial_id=None, step=0,
                  metric_tags=None):
    """Writes one HParams session: its config, values and metric scalars.

    Args:
        logdir: Folder of the session's events.
        hparams: {name: number | str | bool}.
        metrics: {tag: float} logged as scalars at `step` (may be empty when
            a run starts; `write_metrics` adds them at its end).
        trial_id: Session name shown by TensorBoard (default: the folder).
        metric_tags: Metric tags the dashboard shows (default: `metrics`).
    """
    writer = tf.summary.create_file_writer(logdir)
    with writer.as_default():
        hp.hparams_config(
            hparams=[hp.HParam(name) for name in hparams],
            metrics=[hp.Metric(tag) for tag in (metric_tags or metrics)])
        hp.hparams(hparams, trial_id=trial_id or os.path.basename(logdir))
        for tag, value in metrics.items():
            tf.summary.scalar(tag, value, step=step)
    writer.flush()
    writer.close()


def write_metrics(logdir, metrics, step):
    """Adds the final metric scalars to a session written by `write_session`."""
    writer = tf.summary.create_file_writer(logdir)
    with writer.as_default():
        for tag, value in metrics.items():
            tf.summary.scalar(tag, value, step=step)
    writer.flush()
    writer.close()


def training_minutes(run_dir):
    """(training minutes of the run at `run_dir`, its `--init_from` run or None).

    The minutes are the median of the run's logged
    `train/seconds_per_iteration` times its iterations: robust to a run
    paused (SIGSTOP) or interrupted and resumed, which makes wall-clock
    timestamps useless. The evaluation and export at the end are not counted.
    """
    config_path = os.path.join(run_dir, "config.json")
    if not tf.io.gfile.exists(config_path):
        raise FileNotFoundError(f"{config_path} not found: {run_dir!r} is not "
                                "a training run folder.")
    with tf.io.gfile.GFile(config_path) as f:
        config = json.load(f)
    values = []
    for path in sorted(tf.io.gfile.glob(os.path.join(run_dir, "train", "events.*"))):
        for record in tf.data.TFRecordDataset(path):
            event = tf.compat.v1.Event.FromString(record.numpy())
            for value in event.summary.value:
                if value.tag == "train/seconds_per_iteration":
                    values.append(float(tf.make_ndarray(value.tensor)))
    if not values:
        raise ValueError(f"{run_dir}: no train/seconds_per_iteration events "
                         "(not a training run, or it logged nothing yet).")
    iters = config["meta"]["meta_iters"]
    return statistics.median(values) * iters / 60.0, config["run"].get("init_from") or None


def total_training_minutes(run_dir):
    """Minutes of the run plus those of the runs it was warm-started from
    (`--init_from` chains whose folders hold training events)."""
    total, parent = training_minutes(run_dir)
    while parent and tf.io.gfile.isdir(os.path.join(parent, "train")):
        minutes, parent = training_minutes(parent)
        total += minutes
    return total
