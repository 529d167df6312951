"""TensorBoard events read back: scalars equal the logged numbers, HParams present."""

import glob
import json
import os
import tempfile

import numpy as np
import tensorflow as tf
import pytest
from tensorboard.plugins.hparams import plugin_data_pb2

from efficientlab_tf import runners
from efficientlab_tf import summaries
from tests import helpers


def read_events(folder):
    """[(tag, step, value or hparams dict)] of every event file under `folder`."""
    out = []
    for path in sorted(glob.glob(os.path.join(folder, "**", "events.*"),
                                 recursive=True)):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                plugin = value.metadata.plugin_data
                if plugin.plugin_name == "hparams":
                    data = plugin_data_pb2.HParamsPluginData.FromString(plugin.content)
                    if data.HasField("session_start_info"):
                        hp = data.session_start_info.hparams
                        out.append(("_hparams_", event.step, {
                            k: (v.string_value or v.number_value or v.bool_value)
                            for k, v in hp.items()}))
                    continue
                out.append((value.tag, event.step,
                            float(tf.make_ndarray(value.tensor))))
    return out


class SummariesTest(tf.test.TestCase):

    @pytest.mark.slow  # Over 7 s on the 2-core VM: not in the fast tier.
    def test_training_run_events_and_hparams(self):
        workdir = tempfile.mkdtemp()
        config = helpers.with_(helpers.tiny_experiment(workdir, meta_iters=2), eval={"every": 1})
        results = runners.run(config, model=helpers.tiny_efficientlab(bn_mode="batch"))
        events = read_events(os.path.join(workdir, "hparams"))
        hparams = [e[2] for e in events if e[0] == "_hparams_"]
        self.assertLen(hparams, 1)
        self.assertEqual(hparams[0]["algo"], "fomaml")
        self.assertEqual(hparams[0]["image_size"], 32)
        self.assertAllClose(hparams[0]["inner_lr"], 0.05)
        self.assertEqual(hparams[0]["bn_mode"], "batch")
        metrics = {tag: value for tag, _, value in events if tag != "_hparams_"}
        self.assertAllClose(metrics["hparams/meta_test_mean_iou"],
                            results["meta_test"]["mean_iou"])
        self.assertAllClose(metrics["hparams/meta_val_mean_iou"],
                            results["meta_val"]["mean_iou"])
        # Training scalars: one per logged step, the final meta-val value as
        # in results.json.
        train = read_events(os.path.join(workdir, "train"))
        losses = [(step, v) for tag, step, v in train if tag == "train/meta_train_loss"]
        self.assertEqual([s for s, _ in losses], [1, 2])
        self.assertTrue(np.isfinite([v for _, v in losses]).all())
        val = [(step, v) for tag, step, v in read_events(os.path.join(workdir, "meta_val"))
               if tag == "meta_val/mean_iou"]
        self.assertEqual(val[-1][0], 2)
        self.assertAllClose(val[-1][1], results["meta_val"]["mean_iou"])

    @pytest.mark.slow  # Over 7 s on the 2-core VM: not in the fast tier.
    def test_compare_rows_are_sessions(self):
        run_dir = tempfile.mkdtemp()
        base = helpers.tiny_experiment(run_dir, meta_iters=1)
        runners.run(base, model=helpers.tiny_efficientlab(bn_mode="batch"))
        config = helpers.with_(base, run={"mode": "compare", "workdir": tempfile.mkdtemp()},
                       compare={"runs": (run_dir,)}, eval={"shots_list": (2,)})
        tables = runners.run(config, model=helpers.tiny_efficientlab(bn_mode="batch"))
        sessions = sorted(os.listdir(os.path.join(config.run.workdir, "hparams")))
        self.assertLen(sessions, len(tables[2]))
        row = next(r for r in tables[2] if r["name"] == "random init")
        events = read_events(os.path.join(config.run.workdir, "hparams",
                                          "2shot_random_init"))
        self.assertEqual([e[2] for e in events if e[0] == "_hparams_"][0]["steps"],
                         row["steps"])
        self.assertAllClose(
            [v for t, _, v in events if t == "compare/mean_iou"][0], row["mean_iou"])


class TrainingMinutesTest(tf.test.TestCase):
    """A run's minutes from its logged seconds per iteration, by hand."""

    @staticmethod
    def _run(seconds, iters, init_from=""):
        run = tempfile.mkdtemp()
        with open(os.path.join(run, "config.json"), "w") as f:
            json.dump({"meta": {"meta_iters": iters},
                       "run": {"init_from": init_from}}, f)
        writer = tf.summary.create_file_writer(os.path.join(run, "train"))
        with writer.as_default():
            for step, s in enumerate(seconds):
                tf.summary.scalar("train/seconds_per_iteration", s, step=step)
        writer.close()
        return run

    def test_median_rate_times_iterations_and_warm_starts_add_up(self):
        # A paused step (900 s) does not move the median: 6 s x 200 = 20 min.
        parent = self._run([6.0, 5.0, 900.0, 7.0, 6.0], 200)
        minutes, source = summaries.training_minutes(parent)
        self.assertAllClose(minutes, 20.0)
        self.assertIsNone(source)
        # 2 s x 600 = 20 min of its own, + 20 of the parent.
        child = self._run([2.0, 2.0, 3.0], 600, init_from=parent)
        own, source = summaries.training_minutes(child)
        self.assertAllClose(own, 20.0)
        self.assertEqual(source, parent)
        self.assertAllClose(summaries.total_training_minutes(child), 40.0)
        # A parent that is no training run (e.g. converted weights): ignored.
        orphan = self._run([3.0], 100, init_from=tempfile.mkdtemp())
        self.assertAllClose(summaries.total_training_minutes(orphan), 5.0)
        with self.assertRaisesRegex(ValueError, "no train/seconds_per_iteration"):
            summaries.training_minutes(self._run([], 10))
        with self.assertRaisesRegex(FileNotFoundError, "not a training run"):
            summaries.training_minutes(tempfile.mkdtemp())
