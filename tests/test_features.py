"""Feature measurements: Goldblum's clustering ratio and the prototype head,
checked on examples small enough to compute by hand."""

import numpy as np
import tensorflow as tf

from efficientlab_tf.evaluation import features as features_lib
from efficientlab_tf.model.metrics import binary_iou
from tests import helpers

# Two images of one pixel row: [foreground pixel, background pixel], scalar
# features. Image 1: fg 1, bg 0; image 2: fg 3, bg 2.
FEATURES = tf.constant([[[[1.0], [0.0]]], [[[3.0], [2.0]]]])
MASKS = tf.constant([[[1.0, 0.0]], [[1.0, 0.0]]])


class ClusteringRatioTest(tf.test.TestCase):

    def test_one_task_by_hand(self):
        # fg means 1, 3 -> mu_f 2; bg means 0, 2 -> mu_b 1; mu = 1.5.
        # within = (1/2) (1 + 1 + 1 + 1) = 2; between = 0.25 + 0.25 = 0.5.
        self.assertAllClose(features_lib.clustering_ratio(FEATURES, MASKS), 4.0,
                            rtol=1e-5)

    def test_two_classes_in_one_batch_by_hand(self):
        # Joint training: image 1 is class 0, image 2 class 1. Class means
        # 1 (class 0), 3 (class 1), 1 (background); mu = 5/3; C = 3, N = 4.
        # within = 0 + 0 + 1 + 1 = 2; between = 4/9 + 16/9 + 4/9 = 8/3;
        # R = (3/4) * 2 / (8/3) = 0.5625.
        ratio = features_lib.clustering_ratio(FEATURES, MASKS,
                                              class_ids=[0, 1], num_classes=3)
        self.assertAllClose(ratio, 0.5625, rtol=1e-5)

    def test_soft_masks_weight_pixels(self):
        # A half-covered cell counts half toward each mean: image 1's fg
        # mean becomes (0.5*1 + 0.5*0)/1 ... checked against numpy.
        masks = tf.constant([[[1.0, 0.5]], [[1.0, 0.0]]])
        f = FEATURES.numpy()[..., 0]
        m = masks.numpy()
        fg = (f * m).sum((1, 2)) / m.sum((1, 2))
        bg = (f * (1 - m)).sum((1, 2)) / (1 - m).sum((1, 2))
        mu_f, mu_b = fg.mean(), bg.mean()
        mu = (mu_f + mu_b) / 2
        expected = (((fg - mu_f) ** 2).sum() + ((bg - mu_b) ** 2).sum()) / 2 / (
            (mu_f - mu) ** 2 + (mu_b - mu) ** 2)
        self.assertAllClose(features_lib.clustering_ratio(FEATURES, masks),
                            expected, rtol=1e-5)

    def test_gradient_pulls_foregrounds_together(self):
        # One gradient step on the features lowers the ratio.
        x = tf.Variable(FEATURES)
        with tf.GradientTape() as tape:
            r = features_lib.clustering_ratio(x, MASKS)
        x.assign_sub(0.05 * tape.gradient(r, x))
        self.assertLess(float(features_lib.clustering_ratio(x, MASKS)), float(r))

    def test_resize_masks_averages_areas(self):
        masks = np.zeros((1, 4, 4, 1), np.float32)
        masks[0, :2, :2] = 1.0
        masks[0, 2, 2] = 1.0
        masks[0, 3, 3] = 255.0  # Ignored pixels count as background.
        got = features_lib.resize_masks(tf.constant(masks), (2, 2))
        self.assertAllClose(got[0], [[1.0, 0.0], [0.0, 0.25]])


class PrototypeTest(tf.test.TestCase):

    def test_prototype_probabilities_by_hand(self):
        # Support: one image, fg pixel [1, 0], bg pixel [0, 1]; the
        # prototypes are those vectors. Query pixels [2, 0.2] and [0.1, 1].
        support = tf.constant([[[[1.0, 0.0], [0.0, 1.0]]]])
        masks = tf.constant([[[1.0, 0.0]]])
        query = tf.constant([[[[2.0, 0.2], [0.1, 1.0]]]])
        probs = features_lib.prototype_probabilities(support, masks, query)
        q = query.numpy()[0, 0]
        cos_f = q[:, 0] / np.linalg.norm(q, axis=1)
        cos_b = q[:, 1] / np.linalg.norm(q, axis=1)
        expected = 1 / (1 + np.exp(-20.0 * (cos_f - cos_b)))
        self.assertAllClose(probs[0, 0], expected, rtol=1e-5)
        self.assertGreater(float(probs[0, 0, 0]), 0.99)
        self.assertLess(float(probs[0, 0, 1]), 0.01)

    def test_eval_fn_scores_with_the_features_and_leaves_weights(self):
        model = helpers.tiny_efficientlab(bn_mode="batch")
        task = helpers.random_task(shots=3, query=2)
        before = helpers.variable_values(model)
        iou, probs = features_lib.prototype_eval_fn(model)(
            *task, tf.constant(0.1), tf.constant(5), tf.constant([0, 0]))
        # Independent path: features from the model by hand.
        feats = features_lib.feature_model(model)
        fs = feats(task.support_images, training=False)
        fq = feats(task.query_images, training=False)
        expected = features_lib.prototype_probabilities(
            fs, features_lib.resize_masks(task.support_masks, fs.shape[1:3]), fq)
        expected = tf.image.resize(expected[..., None], (32, 32))[..., 0]
        self.assertAllClose(probs, expected, atol=1e-6)
        self.assertAllClose(iou, binary_iou(task.query_masks, expected))
        for b, a in zip(before, helpers.variable_values(model)):
            np.testing.assert_array_equal(a, b)

    def test_clustering_summary_one_ratio_per_task(self):
        model = helpers.tiny_efficientlab(bn_mode="batch")
        tasks = [helpers.random_task(shots=2, query=2, seed=s) for s in (0, 1)]
        summary = features_lib.clustering_summary(model, tasks)
        self.assertLen(summary["clustering_per_task"], 2)
        feats = features_lib.feature_model(model)
        t = tasks[1]
        images = tf.concat([t.support_images, t.query_images], 0)
        masks = tf.concat([t.support_masks, t.query_masks], 0)
        f = feats(images, training=False)
        self.assertAllClose(summary["clustering_per_task"][1], features_lib.clustering_ratio(
            f, features_lib.resize_masks(masks, f.shape[1:3])), rtol=1e-5)


if __name__ == "__main__":
    tf.test.main()
