"""--mode=export: SavedModel of a trained run (--init_from, default --workdir)."""

from absl import logging

from efficientlab_tf.experiment import Experiment
from efficientlab_tf.experiment import load_model_weights


def run(config, record_fn, model=None):
    record_fn(config)
    exp = Experiment(config, model)
    prefix = load_model_weights(exp.model, config.run.init_from or config.run.workdir)
    path = exp.export(config.export.export_dir)
    omega = config.eval_omega
    logging.info("Exported %s (few_shot omega: lr %g, %d steps, batch %d) to %s.",
                 prefix, omega.lr, omega.steps, omega.batch_size, path)
    print(path)
    return {"saved_model": path, "checkpoint": prefix}
