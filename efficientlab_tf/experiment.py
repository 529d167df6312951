"""Experiment: the model, its learner and its task source, from one config.

Plus what every mode does with a run folder: find its checkpoints (falling
back past a corrupt newest one), load a model from them, and export.
"""

import dataclasses
import os

from absl import logging
import tensorflow as tf

from efficientlab_tf import distribute
from efficientlab_tf import segmentation
from efficientlab_tf import workdir as workdir_lib
from efficientlab_tf.data.augment import augment_task
from efficientlab_tf.data.source import build_task_source
from efficientlab_tf.evaluation import protocol
from efficientlab_tf.export.saved_model import export_saved_model
from efficientlab_tf.model.efficientlab import build_efficientlab
from efficientlab_tf.model.efficientlab import inner_rates
from efficientlab_tf.model.layers import mtl_variables
from efficientlab_tf.model.layers import reset_mtl

# Evaluation support sets are augmented with seeds derived from the
# evaluation seed and the task index under this tag, disjoint from the
# training augmentation seeds (tag 1, data/source.py).
_EVAL_AUGMENT_TAG = 2


def _checkpoint_prefixes(folder):
    """All checkpoint prefixes recorded in `folder`, oldest first."""
    state = tf.train.get_checkpoint_state(folder)
    if state is None:
        return []
    prefixes = list(state.all_model_checkpoint_paths) or [state.model_checkpoint_path]
    return [p if os.path.isabs(p) else os.path.join(folder, p) for p in prefixes]


def resolve_checkpoints(path):
    """Checkpoint prefixes (oldest first) of a prefix, a checkpoint folder or
    a run folder."""
    if tf.io.gfile.isdir(path):
        for folder in (os.path.join(path, "checkpoints"), path):
            prefixes = _checkpoint_prefixes(folder)
            if prefixes:
                return prefixes
        raise FileNotFoundError(f"no checkpoint found in folder {path!r}.")
    if tf.io.gfile.exists(path + ".index"):
        return [path]
    raise FileNotFoundError(f"checkpoint {path!r} does not exist.")


class _ModelOnly(tf.train.Checkpoint):
    """Restores a run's model and ignores the rest (step, meta optimizer)."""

    def restore(self, save_path, options=None):
        return super().restore(save_path, options).expect_partial()


def load_model_weights(model, path):
    """Restores only the model from a checkpoint written by `train`.

    For a folder the newest readable checkpoint is used (a truncated newest
    one is skipped with a warning naming both). Returns the prefix used.
    """
    prefixes = resolve_checkpoints(path)
    rates = inner_rates(model)
    phi = mtl_variables(model)
    try:
        names = [n for n, _ in tf.train.list_variables(prefixes[-1])]
    except Exception:  # noqa: BLE001 (an unreadable newest one: see below)
        names = []
    # Checkpoint keys name the variable's attribute (".../log_rates/...").
    if rates is None and any("/log_rates/" in n for n in names):
        raise ValueError(
            f"{path!r} was trained with --learned_lr (learned inner learning "
            "rates, saved in its checkpoint); load it with --learned_lr so "
            "its adaptation uses them.")
    has_phi = any("/mtl_scale/" in n for n in names)
    if not phi and has_phi:
        raise ValueError(
            f"{path!r} was trained with --mtl (MTL's scaling and shifting, "
            "saved in its checkpoint); load it with --mtl so its encoder "
            "uses them.")
    if phi and not has_phi:
        # A run without MTL (the pre-trained model MTL meta-transfers, or a
        # compared row) loads as the plain network: Phi at 1 and 0, not
        # what an earlier load left in them.
        reset_mtl(model)
    optional = ([] if rates is None else [rates]) + ([] if has_phi else phi)
    try:
        return workdir_lib.restore_intact(
            _ModelOnly(model=model), prefixes, optional=optional)
    except workdir_lib.CheckpointError as e:
        raise ValueError(
            f"{path!r} does not match this model (different encoder, decoder "
            f"or image size?) or is unreadable: {e}") from None


class Experiment:
    """A model, its learner and its task source, built from one config.

    Args:
        config: ExperimentConfig.
        model: A built model to use instead of `build_efficientlab(config.model)`
            (tests inject tiny ones).
    """

    def __init__(self, config, model=None):
        self.config = config
        # The strategy first (multi-worker collectives and the CPU split
        # must precede other TensorFlow work), then data: a wrong
        # --data_dir is found before weights are loaded.
        self.strategy = distribute.get_strategy(config.run)
        if config.run.jit_compile and not tf.config.list_physical_devices("GPU"):
            logging.warning(
                "--jit_compile without a GPU: XLA on this CPU measured 25x "
                "slower than the default graph for EfficientLab-B0 (51 vs 2.0 s "
                "per meta-iteration, BENCHMARKS.md). It is for GPUs.")
        self.source = build_task_source(config)
        if model is None:
            with self.strategy.scope():
                model = build_efficientlab(config.model,
                                           precision=config.run.precision)
        self.model = model
        self.learner = segmentation.build_learner(self.model, config,
                                                  self.strategy)

    def has_split(self, split):
        """Whether `split` has classes (meta-val may be empty)."""
        return bool(len(self.source.classes(split)))

    def eval_tasks(self, split, shots=None, count=None, seed=None):
        """A fixed list of `split` tasks (support augmented if eval.augment)."""
        cfg = self.config
        seed = cfg.eval.seed if seed is None else seed
        ds = self.source.tasks(split, shots or cfg.eval.shots,
                               cfg.data.query_shots, seed,
                               count=count or cfg.eval.tasks)
        if cfg.eval.augment and cfg.data.augment.enabled:
            ds = ds.enumerate().map(
                lambda i, task: self.augment_support(task, seed, i))
        return protocol.materialize(ds)

    def augment_support(self, task, seed, index):
        """`task` with its support set augmented (paper section 5), seeded by
        (evaluation seed, task index); the queries are never touched."""
        task_seed = tf.random.experimental.stateless_fold_in(
            tf.stack([tf.cast(seed, tf.int32), tf.cast(index, tf.int32)]),
            _EVAL_AUGMENT_TAG)
        return augment_task(task, task_seed, self.config.data.augment)

    def eval_fn(self, omega=None):
        """The compiled evaluation function for omega's batch size/optimizer."""
        omega = omega or self.config.eval_omega
        return self.learner.eval_fn(omega)

    def evaluate(self, tasks, omega=None, name="eval"):
        """Mean IoU +- CI of adapting with omega (default: the eval omega)."""
        omega = omega or self.config.eval_omega
        return protocol.evaluate(self.eval_fn(omega), tasks, omega.lr,
                                 omega.steps, seed=self.config.eval.seed,
                                 name=name, parallel=self.config.eval.parallel)

    def export(self, base_dir, version=None, omega=None):
        """SavedModel with serving_default, serve_bytes and few_shot (omega)."""
        omega = omega or self.config.eval_omega
        adapter = self.learner.evaluator.adapter(omega, in_place=False)
        return export_saved_model(
            self.model, base_dir, self.config.model.image_size, version=version,
            few_shot_adapter=adapter, omega=omega, limits=self.config.export)

    def imagenet_init(self):
        """load_fn putting an ImageNet encoder (decoder as built) into the model.

        The donor's decoder is another random draw: the row is "ImageNet
        encoder, random decoder". Fails at once if the weights are missing.
        """
        model_config = dataclasses.replace(self.config.model,
                                           encoder_weights="imagenet")
        donor = build_efficientlab(model_config)
        if [v.shape for v in donor.variables] != [v.shape for v in self.model.variables]:
            raise ValueError("the ImageNet model does not match the compared model.")
        values = [tf.identity(v) for v in donor.variables]
        del donor

        def load():
            for var, value in zip(self.model.variables, values):
                var.assign(value)

        return load

    def run_loader(self, path):
        """load_fn restoring a run folder or checkpoint into the model."""
        resolve_checkpoints(path)  # A missing run fails before any scoring.
        return lambda: load_model_weights(self.model, path)
