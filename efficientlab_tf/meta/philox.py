"""Philox4x32-10 in plain integer ops: TensorFlow's CPU stream, under XLA too.

`tf.random.stateless_uniform(shape, seed, alg="philox")` does not give the
same numbers when XLA compiles it (XLA's Philox lays out key and counter
differently), so the inner loop's seeded support-set order changed under
`--jit_compile` and so did every adapted weight. `uniform` computes
TensorFlow's CPU values with multiplies, shifts and xors that every backend
evaluates identically: compiled or not, on CPU or GPU, a task walks through
its support set in the same order.

The generator (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3",
SC 2011): ten rounds of

    (c0, c1, c2, c3) <- (hi(B c2) ^ c1 ^ k0, lo(B c2), hi(A c0) ^ c3 ^ k1, lo(A c0))

with A = 0xD2511F53, B = 0xCD9E8D57, hi/lo the halves of the 64-bit product,
and the key bumped by the Weyl constants (0x9E3779B9, 0xBB67AE85) between
rounds. TensorFlow's seed scrambling (core/kernels/stateless_random_ops.cc):
one block on counter = the two seeds as uint64, key = 0x02461E29_3EC8F720,
gives the stream's key (words 0, 1) and the high half of its counter (words
2, 3); block j of the stream adds j to the counter's low half. A float is
the low 23 bits of a word over 2**23.

Words are held in uint64 tensors with values below 2**32, so a 32 x 32-bit
product never overflows.
"""

import tensorflow as tf

_MASK32 = 0xFFFFFFFF
_MULTIPLIERS = (0xD2511F53, 0xCD9E8D57)
_WEYL = (0x9E3779B9, 0xBB67AE85)
_SCRAMBLE_KEY = (0x3EC8F720, 0x02461E29)


def _u64(value):
    return tf.constant(value, tf.uint64)


def _halves(x):
    """(low 32 bits, high 32 bits) of a uint64 tensor."""
    return (tf.bitwise.bitwise_and(x, _u64(_MASK32)),
            tf.bitwise.right_shift(x, _u64(32)))


def philox4x32(counter, key, rounds=10):
    """One Philox4x32 block per element: `counter` 4 and `key` 2 uint64
    tensors (broadcastable, values < 2**32) -> 4 uint64 words (< 2**32)."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for r in range(rounds):
        lo0, hi0 = _halves(c0 * _u64(_MULTIPLIERS[0]))
        lo1, hi1 = _halves(c2 * _u64(_MULTIPLIERS[1]))
        c0, c1, c2, c3 = (
            tf.bitwise.bitwise_xor(tf.bitwise.bitwise_xor(hi1, c1), k0), lo1,
            tf.bitwise.bitwise_xor(tf.bitwise.bitwise_xor(hi0, c3), k1), lo0)
        if r < rounds - 1:
            k0 = tf.bitwise.bitwise_and(k0 + _u64(_WEYL[0]), _u64(_MASK32))
            k1 = tf.bitwise.bitwise_and(k1 + _u64(_WEYL[1]), _u64(_MASK32))
    return c0, c1, c2, c3


def uniform(n, seed):
    """float32 [n] in [0, 1): equal, bit for bit, to TensorFlow's CPU
    `tf.random.stateless_uniform([n], seed, alg="philox")`, also under XLA.

    Args:
        n: Number of values (int or scalar int tensor).
        seed: int32 or int64 [2] seed.
    """
    seed = tf.cast(seed, tf.uint64)  # As TF does: negative int32 sign-extends.
    s0, s1 = _halves(seed[0]), _halves(seed[1])
    m0, m1, m2, m3 = philox4x32(
        (s0[0], s0[1], s1[0], s1[1]), tuple(_u64(k) for k in _SCRAMBLE_KEY))
    block = tf.cast(tf.range((n + 3) // 4), tf.uint64)
    lo, hi = _halves(block)  # The counter's low half starts at 0: no carry.
    zero = tf.zeros_like(block)
    words = philox4x32((lo, hi, m2 + zero, m3 + zero), (m0, m1))
    words = tf.reshape(tf.stack(words, axis=1), [-1])[:n]
    mantissa = tf.bitwise.bitwise_and(words, _u64(0x7FFFFF))
    return tf.cast(mantissa, tf.float32) * (2.0 ** -23)
