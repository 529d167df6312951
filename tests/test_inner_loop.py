"""The update routine on a one-weight linear model, arithmetic by hand."""

import keras
import tensorflow as tf
from absl.testing import parameterized

from efficientlab_tf.meta import fomaml
from efficientlab_tf.meta import inner_opt
from efficientlab_tf.meta import reptile
from efficientlab_tf.meta.adapter import Adapter


def linear_model(w0=1.0):
    model = keras.Sequential([
        keras.Input((1,)),
        keras.layers.Dense(1, use_bias=False, kernel_initializer="ones"),
    ])
    model.layers[0].kernel.assign([[w0]])
    return model


def mse(targets, outputs, weights):
    del weights
    return tf.reduce_mean(tf.square(outputs - targets))


X = tf.constant([[1.0], [2.0]])
Y = tf.constant([[2.0], [4.0]])  # y = 2 x: the optimum is w = 2.


class InnerLoopTest(tf.test.TestCase, parameterized.TestCase):

    @parameterized.parameters(True, False)
    def test_two_sgd_steps_by_hand(self, in_place):
        # loss = mean((w x - y)^2); dloss/dw = mean(2 (w x - y) x).
        # w0 = 1:   grad = mean(2(1-2)1, 2(2-4)2) = mean(-2, -8) = -5
        #           w1 = 1 - 0.1 * -5 = 1.5
        # w1 = 1.5: grad = mean(2(1.5-2)1, 2(3-4)2) = mean(-1, -4) = -2.5
        #           w2 = 1.5 + 0.25 = 1.75
        # mean loss over the two steps = (mean(1, 4) + mean(0.25, 1)) / 2
        #                              = (2.5 + 0.625) / 2 = 1.5625
        model = linear_model()
        adapter = Adapter(model, mse, inner_opt.SGD(), batch_size=2,
                          in_place=in_place)
        state, loss = adapter.adapt(X, Y, 0.1, 2, tf.constant([0, 0]))
        self.assertAllClose(state.trainable[0], [[1.75]])
        self.assertAllClose(loss, 1.5625)
        self.assertAllEqual(model.layers[0].kernel.numpy(), [[1.0]])

    def test_adam_beta1_zero_first_step(self):
        # Adam(beta1=0), step 0: v = 0.001 g^2, v_hat = v / (1 - 0.999) = g^2,
        # update = lr * g / (|g| + eps) = lr * sign(g): w1 = 1 + 0.1 = 1.1.
        adapter = Adapter(linear_model(), mse, inner_opt.Adam(), batch_size=2)
        state, _ = adapter.adapt(X, Y, 0.1, 1, tf.constant([0, 0]))
        self.assertAllClose(state.trainable[0], [[1.1]], atol=1e-6)

    def test_steps_zero_is_identity(self):
        adapter = Adapter(linear_model(), mse, inner_opt.SGD(), batch_size=2)
        state, _ = adapter.adapt(X, Y, 0.1, 0, tf.constant([0, 0]))
        self.assertAllEqual(state.trainable[0], [[1.0]])

    def test_reptile_direction_by_hand(self):
        # Two full-batch steps from w = 1 reach 1.75: direction = 0.75.
        adapter = Adapter(linear_model(), mse, inner_opt.SGD(), batch_size=2)
        start = adapter.initial_state()
        direction, _, _, _ = reptile.meta_gradient(
            adapter, X, Y, 0.1, 2, tf.constant([0, 0]), start)
        self.assertAllClose(direction[0], [[0.75]])

    def test_fomaml_direction_by_hand(self):
        # Shots x = (1, 2, 3), y = 2x; tail = the last shot (x = 3).
        # steps = 3: two steps on D_tr = {1, 2} (batch 2) give w = 1.75 as
        # above; then one step on D_val = {3}: grad = 2 (1.75*3 - 6) 3 = -4.5,
        # w_val = 1.75 + 0.45 = 2.2; direction = w_val - w_tr = 0.45.
        x = tf.constant([[1.0], [2.0], [3.0]])
        y = 2.0 * x
        adapter = Adapter(linear_model(), mse, inner_opt.SGD(), batch_size=2)
        start = adapter.initial_state()
        direction, _, theta_val, _ = fomaml.meta_gradient(
            adapter, x, y, 0.1, 3, 1, tf.constant([0, 0]), start)
        self.assertAllClose(direction[0], [[0.45]])
        self.assertAllClose(theta_val.trainable[0], [[2.2]])

    def test_minibatches_cycle_through_a_permutation(self):
        # With batch 1 over 2 shots, two steps see each shot once, whatever
        # the order: from w = 1, steps on x=1 then x=2 (or reverse) differ,
        # but both end at a value computed here for each order.
        adapter = Adapter(linear_model(), mse, inner_opt.SGD(), batch_size=1)
        state, _ = adapter.adapt(X, Y, 0.1, 2, tf.constant([3, 4]))
        # order (x=1, x=2): w1 = 1 + 0.2 = 1.2; grad = 2(2.4-4)2 = -6.4 -> 1.84
        # order (x=2, x=1): w1 = 1 + 0.8 = 1.8; grad = 2(1.8-2)1 = -0.4 -> 1.84
        self.assertAllClose(state.trainable[0], [[1.84]])
