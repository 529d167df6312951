"""The one place `meta/` compiles functions."""

import functools

import tensorflow as tf


def compiler(jit_compile=False):
    """`tf.function` with the package's settings: one trace per task shape
    (lr, steps and seeds are tensors; `reduce_retracing`). XLA
    (`jit_compile`) is opt-in for training and evaluation alike: it is for
    GPUs; on CPU the B0 meta-step compiles in ~2 minutes and then runs 25x
    slower than the graph executor's oneDNN kernels (BENCHMARKS.md)."""
    return functools.partial(tf.function, jit_compile=jit_compile,
                             reduce_retracing=True)
