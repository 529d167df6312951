"""The outer loop: determinism, checkpoints and resuming."""

import dataclasses
import os
import tempfile

import keras
import numpy as np
import tensorflow as tf
import pytest

from efficientlab_tf import config as config_lib
from efficientlab_tf import training
from tests import helpers


def tiny_config(workdir, algo="fomaml", meta_iters=4, **run):
    return config_lib.ExperimentConfig(
        model=helpers.tiny_config(bn_mode="batch"),
        data=config_lib.DataConfig(synthetic_classes=24, val_classes=4,
                                   test_classes=4, query_shots=2),
        meta=config_lib.MetaConfig(algo=algo, train_shots=4, foml_tail=2,
                                   inner_iters=2, inner_batch=2, inner_lr=0.05,
                                   meta_batch=2, meta_step=1.0,
                                   meta_step_final=0.5, meta_iters=meta_iters),
        eval=config_lib.EvalConfig(shots=2, tasks=2, every=0),
        run=config_lib.RunConfig(**{
            "workdir": workdir, "checkpoint_every": 2, "log_every": 1,
            "image_every": 0, "export": False, **run}),
    )


def prepared_run(config, crash_at=None):
    """A seeded tiny run (crashing before meta-step `crash_at`, like kill
    -9, if given); returns (the prepared run, its results)."""
    keras.utils.set_random_seed(config.run.seed)
    model = helpers.tiny_efficientlab(bn_mode="batch")
    prepared = training.prepare(config, model)
    if crash_at is not None:
        step_fn = prepared.exp.learner.meta_step

        def crashing(*args):
            if int(prepared.step) == crash_at:
                raise RuntimeError("simulated kill")
            return step_fn(*args)

        prepared.exp.learner.meta_step = crashing
    return prepared, training.run(prepared)


def run_training(config, crash_at=None):
    prepared, results = prepared_run(config, crash_at)
    return prepared.exp.model, results


class TrainingTest(tf.test.TestCase):

    @pytest.mark.slow  # Over 7 s on the 2-core VM: not in the fast tier.
    def test_two_seeded_runs_are_identical(self):
        m1, r1 = run_training(tiny_config(tempfile.mkdtemp()))
        m2, r2 = run_training(tiny_config(tempfile.mkdtemp()))
        for a, b in zip(m1.get_weights(), m2.get_weights()):
            np.testing.assert_array_equal(a, b)
        self.assertEqual(r1["meta_test"]["per_task"], r2["meta_test"]["per_task"])

    @pytest.mark.slow  # Over 7 s on the 2-core VM: not in the fast tier.
    def test_killed_run_resumes_to_the_same_weights(self):
        reference, _ = run_training(tiny_config(tempfile.mkdtemp()))
        workdir = tempfile.mkdtemp()
        config = tiny_config(workdir)
        # A crash at step 3 (nothing saved for it: like kill -9) ...
        with self.assertRaisesRegex(RuntimeError, "simulated kill"):
            run_training(config, crash_at=3)
        latest = tf.train.latest_checkpoint(os.path.join(workdir, "checkpoints"))
        self.assertTrue(latest.endswith("ckpt-2"))  # lost < checkpoint_every
        # ... and the same command again resumes at 2 and ends at 4 with the
        # weights of the uninterrupted run.
        resumed, results = run_training(config)
        self.assertEqual(results["step"], 4)
        for a, b in zip(reference.get_weights(), resumed.get_weights()):
            np.testing.assert_array_equal(a, b)

    @pytest.mark.slow  # Over 7 s on the 2-core VM: not in the fast tier.
    def test_joint_training_and_warm_start(self):
        joint_dir = tempfile.mkdtemp()
        joint, results = run_training(tiny_config(joint_dir, algo="joint",
                                                  meta_iters=2))
        self.assertIn("meta_test", results)
        config = tiny_config(tempfile.mkdtemp(), meta_iters=1)
        config = dataclasses.replace(
            config, run=dataclasses.replace(config.run, init_from=joint_dir))
        model = helpers.tiny_efficientlab(bn_mode="batch")
        training.prepare(config, model)
        for a, b in zip(joint.get_weights(), model.get_weights()):
            np.testing.assert_array_equal(a, b)

    def test_bad_workdir_and_init_from(self):
        path = tempfile.mkstemp()[1]
        with self.assertRaisesRegex(NotADirectoryError, "not a directory"):
            training.prepare(tiny_config(path), helpers.tiny_efficientlab())
        config = tiny_config(tempfile.mkdtemp())
        config = dataclasses.replace(
            config, run=dataclasses.replace(config.run, init_from="/nope/ckpt"))
        with self.assertRaisesRegex(FileNotFoundError, "/nope/ckpt"):
            training.prepare(config, helpers.tiny_efficientlab(bn_mode="batch"))

    @pytest.mark.slow  # Over 7 s on the 2-core VM: not in the fast tier.
    def test_checkpoint_of_another_model_is_rejected(self):
        workdir = tempfile.mkdtemp()
        run_training(tiny_config(workdir, meta_iters=2))
        other = helpers.tiny_efficientlab(decoder="rsd_3_6", bn_mode="batch")
        with self.assertRaisesRegex(ValueError, "does not match this model"):
            training.load_model_weights(other, workdir)

    def test_events_and_results_written(self):
        workdir = tempfile.mkdtemp()
        run_training(tiny_config(workdir, meta_iters=2))
        self.assertTrue(os.listdir(os.path.join(workdir, "train")))
        self.assertTrue(os.path.exists(os.path.join(workdir, "results.json")))
