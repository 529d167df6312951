"""Weight arithmetic on lists of variables or tensors (after SR's variables.py).

All functions are plain TensorFlow: they run eagerly and inside tf.function.
"""

import keras
import tensorflow as tf


def snapshot(variables):
    """Copies of the current values of `variables` (a list of tensors)."""
    return [tf.identity(_value(v)) for v in variables]


def restore(variables, values):
    """Assigns `values` back to `variables` (inverse of `snapshot`)."""
    for v, x in zip(variables, values, strict=True):
        v.assign(x)


def subtract(a, b):
    """Element-wise a - b over two lists of tensors."""
    return [x - y for x, y in zip(a, b, strict=True)]


def _value(v):
    # Keras 3 variables expose the backend tensor as `.value`.
    return v.value if isinstance(v, keras.Variable) else v
