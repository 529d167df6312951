"""Adaptation scopes (--adapt_scope): what U moves and what stays frozen.

BN-affine adaptation (bn_affine; MTL proper is tests/test_mtl.py), decoder-only and last-layer adaptation are the
one update routine restricted to a subset of the weights; these tests pin
down the subsets, check one step by hand against a plain gradient, and check
that frozen weights are unchanged bit for bit after meta-training.
"""

import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from efficientlab_tf import segmentation
from efficientlab_tf.config import MetaConfig
from efficientlab_tf.config import Omega
from efficientlab_tf.meta.learner import MetaLearner
from efficientlab_tf.model.efficientlab import foreground_probability
from efficientlab_tf.model.efficientlab import scope_variables
from efficientlab_tf.model.losses import segmentation_loss
from tests import helpers


def paths(variables):
    return sorted(v.path for v in variables)


class ScopeVariablesTest(tf.test.TestCase):

    def test_each_scope_names_exactly_its_weights(self):
        model = helpers.tiny_efficientlab()
        encoder = model.get_layer("tiny")
        enc = {v.path for v in encoder.trainable_variables}
        every = {v.path for v in model.trainable_variables}
        # The tiny encoder: conv (no bias) -> BN, then conv with a bias.
        bn = {p for p in enc if p.endswith(("gamma", "beta"))}
        biases = {p for p in enc if p.endswith("bias")}
        kernels = {p for p in enc if p.endswith("kernel")}
        self.assertLen(bn, 2)
        self.assertLen(biases, 1)
        self.assertLen(kernels, 2)
        self.assertEqual(paths(scope_variables(model, "all")), sorted(every))
        self.assertEqual(paths(scope_variables(model, "decoder")),
                         sorted(every - enc))
        self.assertEqual(paths(scope_variables(model, "bn_affine")),
                         sorted(every - kernels))
        self.assertEqual(paths(scope_variables(model, "head")),
                         ["head_logits/bias", "head_logits/kernel"])
        with self.assertRaisesRegex(ValueError, "adapt_scope"):
            scope_variables(model, "encoder")


class ScopedStepTest(tf.test.TestCase):

    def test_head_step_is_plain_sgd_on_the_head_only(self):
        # One SGD step of U with scope "head" equals theta_h - lr * dL/dtheta_h
        # computed with an ordinary tape on the model; the state carries
        # only the head, and the forward pass sees every other weight.
        model = helpers.tiny_efficientlab(bn_mode="batch", dropout=0.0)
        config = MetaConfig(weight_decay=1e-3)
        adapter = segmentation.build_adapter(model, Omega(scope="head"),
                                             weight_decay=config.weight_decay)
        task = helpers.random_task(shots=2)
        head = model.get_layer("head_logits").trainable_variables
        self.assertEqual(paths(adapter.trainable_variables), paths(head))
        state = adapter.initial_state()
        self.assertLen(state.trainable, 2)
        new, loss = adapter.step(state, task.support_images,
                                 task.support_masks, 0.1, 0,
                                 tf.constant([0, 0]))
        with tf.GradientTape() as tape:
            logits = model(task.support_images, training=True)
            expected_loss = segmentation_loss(task.support_masks, logits, head,
                                              weight_decay=1e-3)
        grads = tape.gradient(expected_loss, head)
        self.assertAllClose(loss, expected_loss, rtol=1e-5)
        for got, v, g in zip(new.trainable, head, grads):
            self.assertAllClose(got, v - 0.1 * g, rtol=1e-5, atol=1e-7)
        # Prediction under the state uses the new head with the rest as is.
        probs = adapter.predict(new, task.query_images)
        for v, x in zip(head, new.trainable):
            v.assign(x)
        self.assertAllClose(probs, foreground_probability(
            model(task.query_images, training=False)), atol=1e-6)


class FrozenWeightsTest(tf.test.TestCase, parameterized.TestCase):

    @parameterized.parameters(("fomaml", "bn_affine"), ("reptile", "bn_affine"),
                              ("fomaml", "decoder"), ("joint", "bn_affine"))
    def test_meta_training_leaves_frozen_weights_bit_for_bit(self, algo, scope):
        model = helpers.tiny_efficientlab(bn_mode="batch")
        config = MetaConfig(algo=algo, train_shots=4,
                            foml_tail=2 if algo == "fomaml" else None,
                            inner_iters=3, inner_batch=2, inner_lr=0.1,
                            meta_batch=2, adapt_scope=scope)
        learner = MetaLearner(model, config,
                              segmentation.task_fns(config.weight_decay),
                              bn_mode="batch",
                              scope_fn=scope_variables)
        adapted = {id(v) for v in scope_variables(model, scope)}
        frozen = [v for v in model.trainable_variables if id(v) not in adapted]
        moved = [v for v in model.trainable_variables if id(v) in adapted]
        self.assertNotEmpty(frozen)
        before_frozen = [v.numpy().copy() for v in frozen]
        before_moved = [v.numpy().copy() for v in moved]
        for i in range(2):
            task = helpers.random_task(shots=4, meta_batch=2, seed=i)
            if algo == "joint":
                out = learner.joint_step(task, tf.constant([i, 0]))
            else:
                out = learner.meta_step(task, tf.constant(1.0), tf.constant([i, 0]))
            self.assertTrue(bool(out["finite"]))
        for b, v in zip(before_frozen, frozen):
            np.testing.assert_array_equal(v.numpy(), b, err_msg=v.path)
        changed = [not np.array_equal(v.numpy(), b)
                   for v, b in zip(moved, before_moved)]
        self.assertTrue(all(changed), [v.path for v, c in zip(moved, changed)
                                       if not c])


if __name__ == "__main__":
    tf.test.main()
