"""SavedModel export: reloads, serving_default matches the Keras model."""

import os
import tempfile

import numpy as np
import tensorflow as tf

from efficientlab_tf.export.saved_model import export_saved_model
from efficientlab_tf.export.saved_model import next_version
from efficientlab_tf.model.efficientlab import foreground_probability
from tests import helpers


class ExportTest(tf.test.TestCase):

    def test_serving_default_matches_keras_and_versions_increase(self):
        model = helpers.tiny_efficientlab()
        base = os.path.join(tempfile.mkdtemp(), "efficientlab")
        path = export_saved_model(model, base, image_size=32)
        self.assertEqual(path, os.path.join(base, "1"))
        self.assertEqual(next_version(base), 2)
        self.assertEqual(sorted(os.listdir(base)), ["1"])  # no temp folder left
        loaded = tf.saved_model.load(path)
        serve = loaded.signatures["serving_default"]
        images = np.random.RandomState(0).randint(0, 256, (2, 32, 32, 3))
        out = serve(images=tf.constant(images, tf.uint8))
        expected = foreground_probability(
            model(tf.constant(images, tf.float32), training=False))
        self.assertAllClose(out["probabilities"], expected, atol=1e-5)
        self.assertAllEqual(out["masks"], tf.cast(expected >= 0.5, tf.uint8))
        # Any input size: resized inside the graph, answered at input size.
        big = serve(images=tf.zeros([1, 48, 40, 3], tf.uint8))
        self.assertEqual(big["masks"].shape, (1, 48, 40))
        with self.assertRaisesRegex(FileExistsError, "already exists"):
            export_saved_model(model, base, image_size=32, version=1)
