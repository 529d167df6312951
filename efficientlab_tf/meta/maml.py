"""Second-order MAML meta-gradient (Finn et al. 2017; the paper's future work).

Same split as FOMAML (`meta/fomaml.py`): theta_tr = U(theta; D_tr) with
`steps - 1` updates on the first n - tail shots, and the meta-loss is the
loss on the last `tail` shots D_val at theta_tr. MAML differentiates that
loss with respect to theta *through* the inner updates:

    g = d L_val(U(theta)) / d theta = J_U(theta)^T grad L_val(theta_tr),

J_U containing the inner loss's Hessian. FOMAML drops J_U (takes it as the
identity) and steps once on D_val; the direction here keeps FOMAML's
convention and scale, direction = -lr * g, so `--algo=maml` and
`--algo=fomaml` share the outer update and meta step size.

The inner loop is unrolled in Python (`Adapter.adapt_unrolled`, the same
steps as `Adapter.adapt`) under an outer GradientTape that records each
inner step's own gradient computation: memory grows with the number of inner
steps, as for any exact MAML.
"""

import tensorflow as tf

from efficientlab_tf.meta import weights as weights_lib
from efficientlab_tf.meta.fomaml import D_VAL_SEED_TAG


def meta_gradient(adapter, images, masks, lr, steps, tail, seed, start):
    """Exact MAML direction for one task.

    Args:
        adapter: The update routine (its tensor form).
        images, masks: The task's training shots [n, S, S, ...]; the last
            `tail` of them form D_val.
        lr: Inner learning rate.
        steps: Static Python int: total inner steps (steps - 1 on D_tr).
        tail: Static number of D_val shots.
        seed: int32 [2] task seed.
        start: AdaptState of theta.

    Returns:
        (trainable direction -lr * dL_val/dtheta, stats direction,
        theta_tr AdaptState, D_val loss at theta_tr).
    """
    n = images.shape[0]
    theta = list(start.trainable)
    with tf.GradientTape() as tape:
        tape.watch(theta)
        theta_tr = adapter.adapt_unrolled(
            images[: n - tail], masks[: n - tail], lr, int(steps) - 1, seed,
            start._replace(trainable=theta))
        loss = adapter.loss(
            theta_tr, images[n - tail:], masks[n - tail:],
            tf.random.experimental.stateless_fold_in(seed, D_VAL_SEED_TAG))
    grads = tape.gradient(loss, theta)
    grads = [tf.zeros_like(p) if g is None else g for p, g in zip(theta, grads)]
    lr = tf.cast(lr, tf.float32)
    return (
        [-lr * g for g in grads],
        weights_lib.subtract(theta_tr.stats, start.stats),
        theta_tr,
        loss,
    )
