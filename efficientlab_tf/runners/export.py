"""--mode=export: SavedModel of a trained run (--init_from, default --workdir)."""

from absl import logging

from efficientlab_tf.experiment import Experiment
from efficientlab_tf.experiment import load_model_weights


def run(config, record_fn, model=None):
    record_fn(config)
    exp = Experiment(config, model)
    prefix = load_model_weights(exp.model, config.run.init_from or config.run.workdir)
    path = exp.export(config.export.export_dir)
    logging.info("Exported %s (few_shot omega %s) to %s.", prefix,
                 config.eval_omega, path)
    print(path)
    return {"saved_model": path, "checkpoint": prefix}
