"""The outer loop: determinism, checkpoints and resuming."""

import dataclasses
import os
import tempfile

import numpy as np
import tensorflow as tf
import pytest

from efficientlab_tf import training
from tests import helpers


class TrainingTest(tf.test.TestCase):

    @pytest.mark.slow  # Over 7 s on the 2-core VM: not in the fast tier.
    def test_two_seeded_runs_are_identical(self):
        m1, r1 = helpers.run_training(helpers.tiny_experiment(tempfile.mkdtemp()))
        m2, r2 = helpers.run_training(helpers.tiny_experiment(tempfile.mkdtemp()))
        for a, b in zip(m1.get_weights(), m2.get_weights()):
            np.testing.assert_array_equal(a, b)
        self.assertEqual(r1["meta_test"]["per_task"], r2["meta_test"]["per_task"])

    @pytest.mark.slow  # Over 7 s on the 2-core VM: not in the fast tier.
    def test_killed_run_resumes_to_the_same_weights(self):
        reference, _ = helpers.run_training(helpers.tiny_experiment(tempfile.mkdtemp()))
        workdir = tempfile.mkdtemp()
        config = helpers.tiny_experiment(workdir)
        # A crash at step 3 (nothing saved for it: like kill -9) ...
        with self.assertRaisesRegex(RuntimeError, "simulated kill"):
            helpers.run_training(config, crash_at=3)
        latest = tf.train.latest_checkpoint(os.path.join(workdir, "checkpoints"))
        self.assertTrue(latest.endswith("ckpt-2"))  # lost < checkpoint_every
        # ... and the same command again resumes at 2 and ends at 4 with the
        # weights of the uninterrupted run.
        resumed, results = helpers.run_training(config)
        self.assertEqual(results["step"], 4)
        for a, b in zip(reference.get_weights(), resumed.get_weights()):
            np.testing.assert_array_equal(a, b)

    @pytest.mark.slow  # Over 7 s on the 2-core VM: not in the fast tier.
    def test_joint_training_and_warm_start(self):
        joint_dir = tempfile.mkdtemp()
        joint, results = helpers.run_training(helpers.tiny_experiment(joint_dir, algo="joint",
                                                  meta_iters=2))
        self.assertIn("meta_test", results)
        config = helpers.tiny_experiment(tempfile.mkdtemp(), meta_iters=1)
        config = dataclasses.replace(
            config, run=dataclasses.replace(config.run, init_from=joint_dir))
        model = helpers.tiny_efficientlab(bn_mode="batch")
        training.prepare(config, model)
        for a, b in zip(joint.get_weights(), model.get_weights()):
            np.testing.assert_array_equal(a, b)

    def test_bad_workdir_and_init_from(self):
        path = tempfile.mkstemp()[1]
        with self.assertRaisesRegex(NotADirectoryError, "not a directory"):
            training.prepare(helpers.tiny_experiment(path), helpers.tiny_efficientlab())
        config = helpers.tiny_experiment(tempfile.mkdtemp())
        config = dataclasses.replace(
            config, run=dataclasses.replace(config.run, init_from="/nope/ckpt"))
        with self.assertRaisesRegex(FileNotFoundError, "/nope/ckpt"):
            training.prepare(config, helpers.tiny_efficientlab(bn_mode="batch"))

    @pytest.mark.slow  # Over 7 s on the 2-core VM: not in the fast tier.
    def test_checkpoint_of_another_model_is_rejected(self):
        workdir = tempfile.mkdtemp()
        helpers.run_training(helpers.tiny_experiment(workdir, meta_iters=2))
        other = helpers.tiny_efficientlab(decoder="rsd_3_6", bn_mode="batch")
        with self.assertRaisesRegex(ValueError, "does not match this model"):
            training.load_model_weights(other, workdir)

    def test_events_and_results_written(self):
        workdir = tempfile.mkdtemp()
        helpers.run_training(helpers.tiny_experiment(workdir, meta_iters=2))
        self.assertTrue(os.listdir(os.path.join(workdir, "train")))
        self.assertTrue(os.path.exists(os.path.join(workdir, "results.json")))
