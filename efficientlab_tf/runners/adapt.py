"""--mode=adapt: fine-tune on one class folder with U and export the result."""

import os

import tensorflow as tf
from absl import logging

from efficientlab_tf.data import fss1000
from efficientlab_tf.experiment import Experiment
from efficientlab_tf.experiment import load_model_weights


def run(config, record_fn, model=None):
    folder = config.export.adapt_data
    if not folder:
        raise ValueError("--mode=adapt needs --adapt_data=<class folder>.")
    record_fn(config)
    pairs = fss1000.read_class_folder(folder, skip_bad=config.data.skip_bad_examples)
    exp = Experiment(config, model)
    if config.run.init_from:
        load_model_weights(exp.model, config.run.init_from)
    images, masks = fss1000.load_pairs(pairs, config.model.image_size)
    omega = config.eval_omega
    # The update routine, in place and without restore: the adapted weights
    # stay in the model that is exported.
    adapter = exp.learner.evaluator.adapter(omega, in_place=True)
    _, loss = adapter.adapt(images, masks, omega.lr, omega.steps,
                            tf.constant([config.run.seed, 0], tf.int32),
                            restore=False)
    path = exp.export(config.export.export_dir)
    logging.info("Adapted on %d examples of %s (%d steps, lr %g, batch %d, mean "
                 "loss %.4f); exported %s.", len(pairs), folder, omega.steps,
                 omega.lr, omega.batch_size, float(loss), path)
    print(path)
    return {"saved_model": path, "examples": len(pairs), "loss": float(loss),
            "folder": os.path.abspath(folder)}
