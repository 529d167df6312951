"""Functional inner-loop optimizers with explicit state.

The state is a tuple of tensors created fresh for every task and carried
through the inner loop, so nothing leaks from one task to the next (SR kept
Adam moments across tasks; here there is nothing to reset). Adam uses
beta1 = 0, as in SR's Reptile.
"""

import tensorflow as tf


def per_param(lr, params):
    """`lr` as one learning rate per parameter tensor (a scalar is shared;
    a list gives each tensor its own, e.g. learned per-layer rates)."""
    if isinstance(lr, (list, tuple)):
        if len(lr) != len(params):
            raise ValueError(f"{len(lr)} learning rates for {len(params)} tensors.")
        return list(lr)
    return [lr] * len(params)


class SGD:
    """theta <- theta - lr * g. No state."""

    name = "sgd"

    def init(self, params):
        del params
        return ()

    def update(self, params, grads, state, lr, step):
        del step
        new = [p - a * g for p, g, a in zip(params, grads, per_param(lr, params),
                                            strict=True)]
        return new, state


class Adam:
    """Adam with beta1 = 0: theta <- theta - lr g / (sqrt(v_hat) + eps)."""

    name = "adam"

    def __init__(self, beta2=0.999, epsilon=1e-8):
        self.beta2 = beta2
        self.epsilon = epsilon

    def init(self, params):
        return tuple(tf.zeros_like(p) for p in params)

    def update(self, params, grads, state, lr, step):
        t = tf.cast(step, tf.float32) + 1.0
        correction = 1.0 - tf.pow(self.beta2, t)
        new_params, new_state = [], []
        for p, g, v, a in zip(params, grads, state, per_param(lr, params),
                              strict=True):
            v = self.beta2 * v + (1.0 - self.beta2) * tf.square(g)
            new_params.append(
                p - a * g / (tf.sqrt(v / correction) + self.epsilon)
            )
            new_state.append(v)
        return new_params, tuple(new_state)


def get_inner_optimizer(name):
    """'sgd' or 'adam' -> optimizer object."""
    if name == "sgd":
        return SGD()
    if name == "adam":
        return Adam()
    raise ValueError(f"`inner_optimizer` must be 'sgd' or 'adam'; got {name!r}.")
