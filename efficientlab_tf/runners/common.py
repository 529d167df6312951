"""Helpers shared by the runners: loading the weights a mode evaluates."""

from absl import logging

from efficientlab_tf.experiment import Experiment
from efficientlab_tf.experiment import load_model_weights


def experiment_with_weights(config, model=None):
    """(Experiment, what was loaded): weights from run.init_from, else from
    the workdir's checkpoints; init_from="random" keeps the random init."""
    exp = Experiment(config, model)
    source = config.run.init_from or config.run.workdir
    if source == "random":
        return exp, "random init"
    try:
        prefix = load_model_weights(exp.model, source)
    except FileNotFoundError as e:
        if config.run.init_from:
            raise
        raise FileNotFoundError(
            f"--mode={config.run.mode} needs weights: --init_from is empty and "
            f"--workdir={config.run.workdir!r} holds no checkpoint. Pass "
            "--init_from=<run folder or checkpoint>, or --init_from=random for "
            "the model as built (with --encoder_weights=imagenet: the ImageNet "
            "encoder and a random decoder).") from e
    logging.info("Loaded %s.", prefix)
    return exp, prefix


def scoring_tasks(exp, count):
    """UHO/lr_sweep tasks from meta-val and meta-train classes (paper
    appendix C: T_tr u T_val), never meta-test; half from each split (all
    from meta-train when there are no meta-val classes)."""
    cfg = exp.config
    if not exp.has_split("val"):
        return exp.eval_tasks("train", count=count, seed=cfg.eval.seed + 1)
    half = max(1, count // 2)
    return (exp.eval_tasks("val", count=half)
            + exp.eval_tasks("train", count=max(1, count - half),
                             seed=cfg.eval.seed + 1))
