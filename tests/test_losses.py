"""Loss and IoU against hand-computed values."""

import math

import numpy as np
import tensorflow as tf

from efficientlab_tf.model.losses import segmentation_loss
from efficientlab_tf.model.losses import soft_iou
from efficientlab_tf.model.metrics import binary_iou
from efficientlab_tf.evaluation.protocol import mean_ci95


class LossTest(tf.test.TestCase):

    def test_loss_by_hand(self):
        # One 1x2 image: mask (1, 0); logits give p(target) = (0.5, 0.5).
        masks = tf.constant([[[1.0, 0.0]]])
        logits = tf.zeros([1, 1, 2, 2])
        # H = -(log 0.5 + log 0.5) / 2 = log 2.
        # soft IoU = (0.5 + 1) / ((1 + 0.5 - 0.5) + (0 + 0.5 - 0) + 1)
        #          = 1.5 / 2.5 = 0.6;  J = 1.2 / 1.6 = 0.75.
        self.assertAllClose(soft_iou(masks, tf.fill([1, 1, 2], 0.5)), [0.6])
        expected = math.log(2) - math.log(0.75)
        self.assertAllClose(segmentation_loss(masks, logits, (), 0.0), expected)
        # + lambda ||theta||^2 with theta = (3, 4): 0.01 * 25 = 0.25.
        self.assertAllClose(
            segmentation_loss(masks, logits, [tf.constant([3.0, 4.0])], 0.01),
            expected + 0.25)

    def test_ignored_pixels_do_not_count(self):
        masks = tf.constant([[[1.0, 255.0]]])
        logits = tf.constant([[[[0.0, 0.0], [5.0, -5.0]]]])
        # Only pixel 0 counts: H = log 2; IoU = (0.5 + 1) / (1 + 1) = 0.75.
        j = 2 * 0.75 / 1.75
        self.assertAllClose(segmentation_loss(masks, logits, (), 0.0),
                            math.log(2) - math.log(j), rtol=1e-5)


class MetricTest(tf.test.TestCase):

    def test_binary_iou_by_hand(self):
        masks = tf.constant([[[1.0, 1.0, 0.0, 0.0]],
                             [[0.0, 0.0, 0.0, 0.0]],
                             [[1.0, 0.0, 255.0, 0.0]]])
        probs = tf.constant([[[0.9, 0.2, 0.6, 0.1]],   # I=1, U=3 -> 1/3
                             [[0.1, 0.2, 0.3, 0.4]],   # both empty -> 1
                             [[0.5, 0.0, 0.9, 0.0]]])  # 255 ignored -> 1/1
        self.assertAllClose(binary_iou(masks, probs), [1 / 3, 1.0, 1.0])

    def test_mean_ci95(self):
        mean, ci = mean_ci95([0.2, 0.4, 0.6, 0.8])
        # population std = sqrt(mean((-.3,-.1,.1,.3)^2)) = sqrt(0.05)
        self.assertAllClose(mean, 0.5)
        self.assertAllClose(ci, 1.96 * math.sqrt(0.05) / 2.0)
        with self.assertRaisesRegex(ValueError, "at least one value"):
            mean_ci95([])
        np.testing.assert_allclose(mean_ci95([0.3])[1], 0.0)
