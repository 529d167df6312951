"""First-order MAML meta-gradient (paper eqs. 5-7; SR's FOML with tail shots).

theta_tr = U(theta; D_tr) with `steps - 1` updates on the first n - tail
shots; theta_val = U(theta_tr; D_val), one update on the last `tail` shots
(never seen before). Meta-direction = theta_val - theta_tr, i.e. minus the
first-order MAML gradient scaled by the inner learning rate. Batch-norm
statistics move toward their post-adaptation values (theta_val's stats).
"""

import tensorflow as tf

from efficientlab_tf.meta import weights as weights_lib


D_VAL_SEED_TAG = 7919  # A prime far above any inner step index.


def meta_gradient(adapter, images, masks, lr, steps, tail, seed, start):
    """FOMAML direction for one task.

    Args:
        adapter: The update routine.
        images, masks: The task's training shots [n, S, S, ...]; the last
            `tail` of them form D_val.
        lr, steps: Inner learning rate and total number of inner steps.
        tail: Static number of D_val shots.
        seed: int32 [2] task seed.
        start: AdaptState of theta.

    Returns:
        (direction of `adapter.meta_variables`, stats direction, theta_val
        AdaptState, loss of the D_val step evaluated at theta_tr).
    """
    n = images.shape[0]
    steps = tf.cast(steps, tf.int32)
    # The D_val step gets its own seed stream (shuffle and dropout noise),
    # derived from the task seed with a fixed tag so it never coincides
    # with the D_tr steps' seeds, which fold in step indices 0..steps-2.
    # Any constant far above the step count works; the value is arbitrary
    # but fixed, because changing it changes every FOMAML run.
    theta_tr, _ = adapter.adapt(
        images[: n - tail], masks[: n - tail], lr, steps - 1, seed, start=start
    )
    theta_val, tail_loss = adapter.adapt(
        images[n - tail:], masks[n - tail:], lr, 1,
        tf.random.experimental.stateless_fold_in(seed, D_VAL_SEED_TAG),
        start=theta_tr, first_step=steps - 1,
        anchor=start.trainable if adapter.consensus else None,
    )
    # MTL: variables the inner loop leaves frozen get the first-order outer
    # gradient of the D_val loss at theta_tr, on the same -lr * g scale as
    # theta_val - theta_tr (the tail step's -lr * g_val).
    outer = [-lr * g for g in adapter.outer_gradient(
        theta_tr, images[n - tail:], masks[n - tail:],
        tf.random.experimental.stateless_fold_in(seed, D_VAL_SEED_TAG))
    ] if adapter.outer_variables else []
    return (
        weights_lib.subtract(theta_val.trainable, theta_tr.trainable) + outer,
        weights_lib.subtract(theta_val.stats, start.stats),
        theta_val,
        tail_loss,
    )
