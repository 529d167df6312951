"""Restore invariants and the two loop forms of the update routine."""

import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from efficientlab_tf.config import Omega
from efficientlab_tf.segmentation import build_adapter
from tests import helpers


class AdapterTest(tf.test.TestCase, parameterized.TestCase):

    @parameterized.parameters(("sgd", "running"), ("adam", "running"),
                              ("sgd", "batch"))
    def test_adapt_restores_every_variable_bit_for_bit(self, opt, bn_mode):
        model = helpers.tiny_efficientlab(bn_mode=bn_mode)
        adapter = build_adapter(model, Omega(optimizer=opt), in_place=True)
        task = helpers.random_task()
        before = helpers.variable_values(model)
        fn = tf.function(lambda: adapter.adapt(
            task.support_images, task.support_masks, 0.1, 3,
            tf.constant([1, 2])))
        state, _ = fn()
        after = helpers.variable_values(model)
        self.assertEqual(len(before), len(after))
        for b, a in zip(before, after):
            np.testing.assert_array_equal(a, b)
        # ... and adaptation really changed the weights and BN statistics.
        moved = [not np.array_equal(s.numpy(), v.numpy())
                 for s, v in zip(state.trainable, adapter.trainable_variables)]
        self.assertTrue(all(moved))
        if bn_mode == "running":
            self.assertTrue(any(
                not np.array_equal(s.numpy(), v.numpy())
                for s, v in zip(state.stats, adapter.stat_variables)))
        # Optimizer slots are fresh per task: a new adaptation starts from zeros.
        if opt == "adam":
            self.assertTrue(all(np.all(s.numpy() == 0)
                                for s in adapter.initial_state().opt))

    def test_in_place_and_tensor_forms_agree(self):
        model = helpers.tiny_efficientlab()
        task = helpers.random_task()
        results = []
        for in_place in (True, False):
            adapter = build_adapter(model, Omega(), in_place=in_place)
            state, loss = tf.function(lambda a=adapter: a.adapt(
                task.support_images, task.support_masks, 0.05, 3,
                tf.constant([5, 6])))()
            results.append((state, loss))
        (s1, l1), (s2, l2) = results
        self.assertAllClose(l1, l2, rtol=1e-5)
        for a, b in zip(s1.trainable + s1.stats, s2.trainable + s2.stats):
            self.assertAllClose(a, b, rtol=1e-5, atol=1e-6)

    def test_tensor_form_never_writes_variables(self):
        model = helpers.tiny_efficientlab()
        adapter = build_adapter(model, Omega())
        task = helpers.random_task()
        before = helpers.variable_values(model)
        adapter.adapt(task.support_images, task.support_masks, 0.05, 2,
                      tf.constant([0, 1]))
        for b, a in zip(before, helpers.variable_values(model)):
            np.testing.assert_array_equal(a, b)

    def test_same_seed_same_result_other_seed_other_batches(self):
        model = helpers.tiny_efficientlab()
        adapter = build_adapter(model, Omega(batch_size=2), in_place=True)
        task = helpers.random_task(shots=4)
        run = lambda s: adapter.adapt(  # noqa: E731
            task.support_images, task.support_masks, 0.05, 1,
            tf.constant(s))[0].trainable[0].numpy()
        np.testing.assert_array_equal(run([0, 0]), run([0, 0]))
        self.assertFalse(np.array_equal(run([0, 0]), run([0, 1])))


class ContinuationTest(tf.test.TestCase):

    def test_adapt_in_two_calls_equals_one_call(self):
        model = helpers.tiny_efficientlab()
        adapter = build_adapter(model, Omega(batch_size=2))
        task = helpers.random_task(shots=3)
        seed = tf.constant([2, 3])
        args = (task.support_images, task.support_masks, 0.05)
        whole, _ = adapter.adapt(*args, 5, seed)
        first, _ = adapter.adapt(*args, 2, seed)
        rest, _ = adapter.adapt(*args, 3, seed, start=first, first_step=2)
        for a, b in zip(whole.trainable + whole.stats, rest.trainable + rest.stats):
            self.assertAllClose(a, b, rtol=1e-5, atol=1e-6)
