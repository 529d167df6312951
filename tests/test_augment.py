"""Joint image/mask augmentation: geometry by hand, determinism, tf.data."""

import dataclasses

import numpy as np
import tensorflow as tf

from efficientlab_tf import config as config_lib
from efficientlab_tf.data import augment
from efficientlab_tf.data.source import build_task_source
from efficientlab_tf.data.source import meta_batches

GEOMETRIC = config_lib.AugmentConfig(translate=0.25, flip=True)
ALL = config_lib.AugmentConfig(translate=0.25, flip=True, noise_stddev=5.0,
                               brightness=20.0, erase_prob=1.0)


def mask_image(seed=0, size=16):
    """An image whose red channel is the mask * 255 (so geometry is checkable)."""
    rng = np.random.RandomState(seed)
    mask = (rng.uniform(size=(size, size, 1)) > 0.5).astype(np.float32)
    image = np.concatenate([mask * 255.0, rng.uniform(0, 255, (size, size, 2))], -1)
    return tf.constant(image, tf.float32), tf.constant(mask)


class AugmentTest(tf.test.TestCase):

    def test_translate_by_hand(self):
        image = tf.reshape(tf.range(16, dtype=tf.float32), [4, 4, 1])
        shifted, mask = augment.translate(image, image, 1, 0)  # one to the right
        expected = [[0, 0, 1, 2], [0, 4, 5, 6], [0, 8, 9, 10], [0, 12, 13, 14]]
        self.assertAllEqual(shifted[..., 0], expected)
        self.assertAllEqual(mask[..., 0], expected)
        down, _ = augment.translate(image, image, 0, -1)  # one up
        self.assertAllEqual(down[..., 0], [[4, 5, 6, 7], [8, 9, 10, 11],
                                           [12, 13, 14, 15], [0, 0, 0, 0]])

    def test_geometry_moves_image_and_mask_together(self):
        moved = 0
        for s in range(8):
            image, mask = mask_image(s)
            x, y = augment.augment_example(image, mask, tf.constant([s, 1]), GEOMETRIC)
            self.assertAllEqual(x[..., 0], y[..., 0] * 255.0)
            moved += int(not np.array_equal(y.numpy(), mask.numpy()))
        self.assertGreater(moved, 4)  # the transforms really happen

    def test_photometric_changes_leave_the_mask_alone(self):
        image, mask = mask_image(3)
        photometric = config_lib.AugmentConfig(noise_stddev=5.0, brightness=20.0,
                                               erase_prob=1.0)
        x, y = augment.augment_example(image, mask, tf.constant([0, 0]), photometric)
        self.assertAllEqual(y, mask)
        self.assertGreater(float(tf.reduce_max(tf.abs(x - image))), 1.0)
        self.assertAllInRange(x, 0.0, 255.0)

    def test_seeded_and_same_in_tf_data(self):
        image, mask = mask_image(1)
        seed = tf.constant([4, 2])
        a = augment.augment_example(image, mask, seed, ALL)
        b = augment.augment_example(image, mask, seed, ALL)
        self.assertAllEqual(a[0], b[0])
        ds = tf.data.Dataset.from_tensors((image, mask)).map(
            lambda x, y: augment.augment_example(x, y, seed, ALL))
        c = next(iter(ds))
        self.assertAllClose(a[0], c[0], atol=1e-3)
        self.assertAllEqual(a[1], c[1])

    def test_resumed_stream_replays_the_same_augmented_tasks(self):
        config = config_lib.ExperimentConfig.smoke()
        config = dataclasses.replace(
            config,
            model=dataclasses.replace(config.model, image_size=32),
            data=dataclasses.replace(config.data, augment=ALL))
        source = build_task_source(config)
        from_zero = iter(meta_batches(source, config, 0))
        next(from_zero)
        second = next(from_zero)
        resumed = next(iter(meta_batches(source, config, 1)))
        for a, b in zip(second, resumed):
            self.assertAllEqual(a, b)

    def test_bad_values(self):
        with self.assertRaisesRegex(ValueError, "augment_translate"):
            config_lib.AugmentConfig(translate=1.5)
        with self.assertRaisesRegex(ValueError, "augment_erase"):
            config_lib.AugmentConfig(erase_prob=2.0)
