"""Goldblum et al.'s training-time terms: the consensus penalty in the inner
loop and the feature-clustering regulariser, checked against independent
computations; evaluation never sees either."""

import dataclasses

import numpy as np
import tensorflow as tf
import pytest

from efficientlab_tf import segmentation
from efficientlab_tf.config import ExperimentConfig
from efficientlab_tf.config import MetaConfig
from efficientlab_tf.evaluation import features
from efficientlab_tf.meta import fomaml
from efficientlab_tf.meta.learner import MetaLearner
from efficientlab_tf.model.efficientlab import scope_variables
from efficientlab_tf.model.losses import segmentation_loss
from tests import helpers

LAMBDA = 0.7
LR = 0.1


def adapters(model, consensus):
    task = segmentation.task_fns(5e-4)
    plain = MetaLearner(model, MetaConfig(inner_batch=2), task).adapter
    with_consensus = MetaLearner(model, MetaConfig(inner_batch=2), task,
                                 consensus=consensus).adapter
    return plain, with_consensus


class ConsensusTest(tf.test.TestCase):

    def test_second_step_adds_lambda_times_distance_to_theta(self):
        # phi_1 = theta - lr g(theta) (the penalty's gradient is 0 at theta);
        # phi_2 = phi_1 - lr (g(phi_1) + lambda (phi_1 - theta)).
        model = helpers.tiny_efficientlab(bn_mode="batch", dropout=0.0)
        plain, cons = adapters(model, LAMBDA)
        task = helpers.random_task(shots=2)
        x, y = task.support_images, task.support_masks
        theta = plain.initial_state()
        seed = tf.constant([0, 0])
        phi1, _ = plain.step(theta, x, y, LR, 0, seed)
        phi1_c, _ = cons.step(theta, x, y, LR, 0, seed, anchor=theta.trainable)
        for a, b in zip(phi1.trainable, phi1_c.trainable):
            self.assertAllClose(a, b, atol=1e-7)
        plain2, loss = plain.step(phi1, x, y, LR, 1, seed)
        cons2, loss_c = cons.step(phi1, x, y, LR, 1, seed, anchor=theta.trainable)
        distance = sum(float(tf.reduce_sum(tf.square(p - t)))
                       for p, t in zip(phi1.trainable, theta.trainable))
        self.assertGreater(distance, 0.0)
        self.assertAllClose(loss_c, loss + 0.5 * LAMBDA * distance, rtol=1e-5)
        for p2, c2, p1, t in zip(plain2.trainable, cons2.trainable,
                                 phi1.trainable, theta.trainable):
            self.assertAllClose(c2, p2 - LR * LAMBDA * (p1 - t), atol=1e-6)

    def test_fomaml_tail_step_is_anchored_at_theta_not_theta_tr(self):
        # inner_iters 2: theta_tr is one step from theta (no penalty yet);
        # the tail step's penalty pulls toward theta, so the direction is
        # the plain one minus lr lambda (theta_tr - theta).
        model = helpers.tiny_efficientlab(bn_mode="batch", dropout=0.0)
        plain, cons = adapters(model, LAMBDA)
        task = helpers.random_task(shots=4)
        seed = tf.constant([5, 6])
        start = plain.initial_state()
        d_plain, _, _, _ = fomaml.meta_gradient(
            plain, task.support_images, task.support_masks, LR, 2, 2, seed, start)
        d_cons, _, _, _ = fomaml.meta_gradient(
            cons, task.support_images, task.support_masks, LR, 2, 2, seed, start)
        theta_tr, _ = plain.adapt(task.support_images[:2], task.support_masks[:2],
                                  LR, 1, seed, start=start)
        for dp, dc, tr, t in zip(d_plain, d_cons, theta_tr.trainable,
                                 start.trainable):
            self.assertAllClose(dc, dp - LR * LAMBDA * (tr - t), atol=1e-6)

    def test_joint_refuses_consensus(self):
        with self.assertRaisesRegex(ValueError, "consensus_weight"):
            MetaConfig(algo="joint", foml_tail=None, consensus_weight=0.1)


class ClusteringRegulariserTest(tf.test.TestCase):

    def config(self, **meta):
        model_cfg = helpers.tiny_config(bn_mode="batch", dropout=0.0)
        base = ExperimentConfig()
        return dataclasses.replace(
            base, model=model_cfg,
            meta=MetaConfig(train_shots=4, foml_tail=2, inner_iters=2,
                            inner_batch=2, inner_lr=LR, meta_batch=2, **meta))

    def test_inner_loss_adds_weight_times_r_fc(self):
        model = helpers.tiny_efficientlab(bn_mode="batch", dropout=0.0)
        learner = segmentation.build_learner(
            model, self.config(clustering_weight=0.3))
        task = helpers.random_task(shots=2)
        state = learner.adapter.initial_state()
        _, loss = learner.adapter.step(state, task.support_images,
                                       task.support_masks, LR, 0,
                                       tf.constant([0, 0]))
        # Independently: plain loss on the model + 0.3 R_FC of its features.
        logits = model(task.support_images, training=True)
        feats = features.feature_model(model)(task.support_images, training=True)
        expected = segmentation_loss(task.support_masks, logits,
                                     model.trainable_variables, 5e-4)
        expected += 0.3 * features.clustering_ratio(
            feats, features.resize_masks(task.support_masks, feats.shape[1:3]))
        self.assertAllClose(loss, expected, rtol=1e-5)
        # Same variables as the model (a view), in the scope's order.
        self.assertCountEqual([id(v) for v in learner.adapter.trainable_variables],
                              [id(v) for v in scope_variables(model, "all")])

    def test_joint_masks_carry_the_class_of_each_image(self):
        loss_fn = segmentation.clustering_task(0.0, 1.0, 3).loss_fn
        feats = tf.random.stateless_normal([2, 4, 4, 3], [1, 2])
        masks = np.zeros((2, 8, 8, 2), np.float32)
        masks[:, :4, :4, 0] = 1.0
        masks[1, ..., 1] = 2.0  # Image 1 belongs to task 2 of the meta-batch.
        logits = tf.zeros([2, 8, 8, 2])
        got = loss_fn(tf.constant(masks), (logits, feats), [])
        small = features.resize_masks(tf.constant(masks[..., :1]), (4, 4))
        expected = (segmentation_loss(masks[..., :1], logits, (), 0.0)
                    + features.clustering_ratio(feats, small, [0, 2], 3))
        self.assertAllClose(got, expected, rtol=1e-5)
        one_class = features.clustering_ratio(feats, small)
        self.assertNotAllClose(got - segmentation_loss(masks[..., :1], logits, (), 0.0),
                               one_class)

    def test_evaluation_adapts_without_the_regulariser(self):
        task = helpers.random_task(shots=3, query=2)
        args = (*task, tf.constant(LR), tf.constant(3), tf.constant([1, 1]))
        scores = []
        for weight in (0.0, 5.0):
            tf.keras.utils.set_random_seed(0)
            model = helpers.tiny_efficientlab(bn_mode="batch", dropout=0.0)
            learner = segmentation.build_learner(
                model, self.config(clustering_weight=weight))
            scores.append(learner.eval_task(*args)[1].numpy())
        np.testing.assert_array_equal(scores[0], scores[1])

    @pytest.mark.slow  # Over 7 s on the 2-core VM: not in the fast tier.
    def test_meta_and_joint_steps_train_with_it(self):
        for algo in ("fomaml", "joint"):
            tf.keras.utils.set_random_seed(0)
            model = helpers.tiny_efficientlab(bn_mode="batch", dropout=0.0)
            moved = {}
            for weight in (0.0, 1.0):
                tf.keras.utils.set_random_seed(0)
                model = helpers.tiny_efficientlab(bn_mode="batch", dropout=0.0)
                cfg = self.config(clustering_weight=weight, algo=algo)
                if algo == "joint":
                    cfg = dataclasses.replace(cfg, meta=dataclasses.replace(
                        cfg.meta, foml_tail=None))
                learner = segmentation.build_learner(model, cfg)
                task = helpers.random_task(shots=4, meta_batch=2)
                if algo == "joint":
                    out = learner.joint_step(task, tf.constant([0, 1]))
                else:
                    out = learner.meta_step(task, tf.constant(1.0), tf.constant([0, 1]))
                self.assertTrue(bool(out["finite"]))
                moved[weight] = [v.numpy() for v in model.trainable_variables]
            self.assertFalse(all(np.allclose(a, b) for a, b in
                                 zip(moved[0.0], moved[1.0])), algo)


if __name__ == "__main__":
    tf.test.main()
