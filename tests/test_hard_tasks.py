"""Hard-task meta-batches: the pool after known scores, seeded re-draws, new
tasks of the hard classes, and a resumed run that draws the same ones."""

import dataclasses
import os
import tempfile

import numpy as np
import tensorflow as tf
import pytest
from PIL import Image

from efficientlab_tf import training
from efficientlab_tf.config import ExperimentConfig
from efficientlab_tf.config import MetaConfig
from efficientlab_tf.data.source import build_task_source
from efficientlab_tf.data.source import resampled_tasks
from efficientlab_tf.hard_tasks import HardTaskPool
from efficientlab_tf.hard_tasks import hard_count
from tests import helpers


class PoolTest(tf.test.TestCase):

    def test_pool_keeps_the_lowest_recent_scores(self):
        pool = HardTaskPool(size=3, recent=2)
        pool.update([0, 1, 2, 3], [0.9, 0.2, 0.5, 0.1], step=0)
        self.assertEqual([e[0] for e in pool.entries()], [3, 1, 2])
        # Task 1 is scored again (0.95: no longer hard); 4 and 5 are new.
        pool.update([4, 1, 5], [0.3, 0.95, 0.05], step=1)
        entries = pool.entries()
        self.assertEqual([(i, t) for i, _, t in entries], [(5, 1), (3, 0), (4, 1)])
        self.assertAllClose([s for _, s, _ in entries], [0.05, 0.1, 0.3])
        # Two iterations later the step-0 entry (task 3) has expired.
        pool.update([6], [0.99], step=2)
        self.assertEqual([e[0] for e in pool.entries()], [5, 4, 6])

    def test_sample_is_seeded_and_waits_for_enough_tasks(self):
        pool = HardTaskPool(size=4)
        pool.update([10], [0.1], step=0)
        self.assertEqual(pool.sample(2, (0, 1)), [])
        pool.update([11, 12, 13], [0.2, 0.3, 0.4], step=1)
        a = pool.sample(2, (0, 5))
        self.assertEqual(a, pool.sample(2, (0, 5)))
        self.assertLen(set(a), 2)
        self.assertTrue(set(a) <= {10, 11, 12, 13})
        draws = {tuple(pool.sample(2, (0, s))) for s in range(20)}
        self.assertGreater(len(draws), 1)

    def test_hard_count(self):
        self.assertEqual(hard_count(0.0, 5), 0)
        self.assertEqual(hard_count(0.4, 5), 2)
        self.assertEqual(hard_count(0.05, 5), 1)

    def test_config_refuses_bad_fractions(self):
        with self.assertRaisesRegex(ValueError, "hard_task_fraction"):
            MetaConfig(hard_task_fraction=1.0)
        with self.assertRaisesRegex(ValueError, "hard_task_fraction"):
            MetaConfig(algo="joint", foml_tail=None, hard_task_fraction=0.2)


def labelled_tree(classes=6, pairs=6, size=32):
    """An FSS-1000 tree whose pixels say where they came from: class c's
    images are grey level 30 * (c + 1), with an 8x8 corner of 20 * n for
    example n (1..pairs); masks are the top half."""
    root = tempfile.mkdtemp()
    for c in range(classes):
        folder = os.path.join(root, f"class{c}")
        os.makedirs(folder)
        for n in range(1, pairs + 1):
            image = np.full((size, size, 3), 30 * (c + 1), np.uint8)
            image[:8, :8] = 20 * n
            Image.fromarray(image).save(os.path.join(folder, f"{n}.png"))
            # PNG bytes under the .jpg name: lossless, and the one decoder
            # reads images by content.
            os.rename(os.path.join(folder, f"{n}.png"), os.path.join(folder, f"{n}.jpg"))
            mask = np.zeros((size, size), np.uint8)
            mask[: size // 2] = 255
            Image.fromarray(mask, "L").save(os.path.join(folder, f"{n}.png"))
    return root


def provenance(task):
    """[(class, example)] of a task's support images, read off the pixels."""
    images = task.support_images.numpy()
    return [(int(round(img[20, 20, 0] / 30)) - 1, int(round(img[2, 2, 0] / 20)))
            for img in images]


class ResampledTest(tf.test.TestCase):

    def test_new_tasks_of_the_hard_classes(self):
        # Issue 24.2 (MTL's HT re-samples the classes it failed on): each
        # re-drawn task is of the class of the hard task, with other examples
        # than the hard task had, different at the next meta-iteration, and
        # the same when drawn again with the same seed (resume).
        config = ExperimentConfig.build(
            "smoke", dataset="fss1000", data_dir=labelled_tree(), image_size=32,
            train_shots=3, foml_tail=1, train_query_shots=0, val_classes=1,
            test_classes=1)
        source = build_task_source(config)
        indices = list(range(8))
        stream = list(source.tasks("train", 3, 0, config.run.seed, count=8))
        drawn = resampled_tasks(source, config, indices, step=4)
        again = resampled_tasks(source, config, indices, step=4)
        later = resampled_tasks(source, config, indices, step=5)
        changed = 0
        for i in indices:
            old = provenance(stream[i])
            new = provenance(tf.nest.map_structure(lambda x: x[i], drawn))
            self.assertEqual({c for c, _ in new}, {c for c, _ in old})
            self.assertLen({c for c, _ in new}, 1)
            changed += sorted(new) != sorted(old)
            self.assertEqual(new, provenance(
                tf.nest.map_structure(lambda x: x[i], again)))
        # 3 of 6 examples: the same set by chance with probability 1/20.
        self.assertGreaterEqual(changed, 6)
        self.assertNotAllClose(drawn.support_images, later.support_images)


class HardTaskTrainingTest(tf.test.TestCase):

    def config(self, workdir):
        base = helpers.tiny_experiment(workdir, meta_iters=5)
        return dataclasses.replace(
            base, meta=dataclasses.replace(base.meta, hard_task_fraction=0.5,
                                           hard_task_pool=3))

    def train(self, config, crash_at=None):
        return helpers.prepared_run(config, crash_at)[0]

    @pytest.mark.slow  # Over 7 s on the 2-core VM: not in the fast tier.
    def test_killed_run_resumes_with_the_same_pool_and_weights(self):
        reference = self.train(self.config(tempfile.mkdtemp()))
        entries = reference.pool.entries()
        self.assertLen(entries, 3)
        # The pool holds the tasks of the last iterations (stream indices
        # 0..9 for 5 meta-batches of 2), hardest first.
        self.assertTrue(all(0 <= i < 10 for i, _, _ in entries))
        self.assertEqual([s for _, s, _ in entries],
                         sorted(s for _, s, _ in entries))
        # Re-drawn tasks change training: without them the weights differ.
        plain = self.config(tempfile.mkdtemp())
        plain = self.train(dataclasses.replace(plain, meta=dataclasses.replace(
            plain.meta, hard_task_fraction=0.0)))
        self.assertIsNone(plain.pool)
        self.assertFalse(all(np.array_equal(a, b) for a, b in zip(
            reference.exp.model.get_weights(), plain.exp.model.get_weights())))
        workdir = tempfile.mkdtemp()
        config = self.config(workdir)
        with self.assertRaisesRegex(RuntimeError, "simulated kill"):
            self.train(config, crash_at=3)
        restored = training.prepare(config, helpers.tiny_efficientlab(bn_mode="batch"))
        self.assertEqual(int(restored.step), 2)
        self.assertLen(restored.pool.entries(), 3)  # From the checkpoint.
        resumed = self.train(config)
        self.assertEqual(resumed.pool.entries(), entries)
        for a, b in zip(reference.exp.model.get_weights(),
                        resumed.exp.model.get_weights()):
            np.testing.assert_array_equal(a, b)


if __name__ == "__main__":
    tf.test.main()
