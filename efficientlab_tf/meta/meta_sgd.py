"""Meta-SGD / MAML++ LSLR: learned log inner learning rates, meta-learned by
FOMAML's first-order rule (no second-order terms)."""

import tensorflow as tf


def rate_gradient(rates, indices, start, direction, adapted, lr):
    """First-order d L_val / d log r_i of one FOMAML task, per adapted
    variable i (Meta-SGD's rule without second-order terms).

    With SGD steps theta_tr = theta - sum_t lr r_i g_t, so (ignoring how the
    g_t depend on r) d theta_tr / d r_i = (theta_tr - theta)_i / r_i; the
    tail step gives g_val = (theta_tr - theta_val)_i / (lr r_i). Hence
    d L_val / d log r_i = r_i d L_val / d r_i = <theta_tr - theta_val,
    theta_tr - theta>_i / (lr r_i): FOMAML's two directions already hold
    everything.

    Args:
        rates: The model's log-rate variable (one per trainable variable).
        indices: Rows of `rates` of the adapted variables, in order.
        start, adapted: AdaptStates of theta and theta_val.
        direction: theta_val - theta_tr, per adapted variable.
        lr: omega's learning rate.
    """
    r = tf.exp(tf.gather(rates, indices))
    theta_tr = [a - d for a, d in zip(adapted.trainable, direction)]
    dots = tf.stack([tf.reduce_sum(-d * (t - s))
                     for d, t, s in zip(direction, theta_tr, start.trainable)])
    return dots / (lr * r)


def descend(rates, indices, gradient, step):
    """log r_i <- log r_i - step * gradient_i for the adapted rows."""
    rates.assign(rates.value - tf.scatter_nd(
        [[i] for i in indices], step * gradient, rates.shape))
