"""The XLA-safe Philox stream: Random123's known answers and TensorFlow's
own CPU values, compiled and not."""

import numpy as np
import tensorflow as tf

from efficientlab_tf.meta import philox
from efficientlab_tf.meta.adapter import seeded_permutation


def _words(counter, key):
    u = lambda x: tf.constant(x, tf.uint64)  # noqa: E731
    out = philox.philox4x32(tuple(map(u, counter)), tuple(map(u, key)))
    return [int(w) for w in out]


class PhiloxTest(tf.test.TestCase):

    def test_known_answers_of_random123(self):
        # kat_vectors of Random123 1.09 for philox4x32_10.
        self.assertEqual(_words((0, 0, 0, 0), (0, 0)),
                         [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8])
        self.assertEqual(_words((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2),
                         [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD])
        self.assertEqual(
            _words((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
                   (0xA4093822, 0x299F31D0)),
            [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1])

    def test_equals_tensorflow_cpu_stream_compiled_or_not(self):
        # The permutation's keys are TF's CPU philox values (so results from
        # before the switch are unchanged), and XLA computes the same bits,
        # which tf.random.stateless_uniform does not.
        xla_uniform = tf.function(philox.uniform, jit_compile=True)
        xla_differs = False
        for seed in [(3, 4), (0, 0), (-1860230133, 1), (2**31 - 1, -5), (-7, -9)]:
            seed = tf.constant(seed, tf.int32)
            for n in (1, 3, 4, 5, 17, 400):
                ref = tf.random.stateless_uniform([n], seed, alg="philox")
                np.testing.assert_array_equal(philox.uniform(n, seed), ref)
                np.testing.assert_array_equal(xla_uniform(tf.constant(n), seed), ref)
            xla_tf = tf.function(
                lambda s: tf.random.stateless_uniform([17], s, alg="philox"),
                jit_compile=True)(seed)
            xla_differs |= not np.array_equal(
                xla_tf, tf.random.stateless_uniform([17], seed, alg="philox"))
        self.assertTrue(xla_differs)  # Why this module exists.

    def test_permutation_is_the_same_under_xla(self):
        seed = tf.constant([3, 4])
        perm = seeded_permutation(9, seed).numpy()
        self.assertCountEqual(perm.tolist(), range(9))
        xla = tf.function(seeded_permutation, jit_compile=True)(tf.constant(9), seed)
        np.testing.assert_array_equal(xla, perm)
