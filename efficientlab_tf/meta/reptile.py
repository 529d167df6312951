"""Reptile meta-gradient (paper eqs. 8-9; Nichol et al. 2018).

theta_both = U(theta; D_tr u D_val); meta-direction = theta_both - theta.
Plain TensorFlow; compiled by meta/learner.py.
"""

from efficientlab_tf.meta import weights as weights_lib


def meta_gradient(adapter, images, masks, lr, steps, seed, start):
    """Reptile direction for one task.

    Args:
        adapter: The update routine.
        images, masks: All training shots of the task [n, S, S, ...].
        lr, steps: Inner learning rate and number of steps.
        seed: int32 [2] task seed.
        start: AdaptState of theta (the meta-parameters).

    Returns:
        (trainable direction, stats direction, adapted AdaptState, mean
        inner loss). Directions point where the outer update moves theta.
    """
    adapted, loss = adapter.adapt(images, masks, lr, steps, seed, start=start)
    return (
        weights_lib.subtract(adapted.trainable, start.trainable),
        weights_lib.subtract(adapted.stats, start.stats),
        adapted,
        loss,
    )
