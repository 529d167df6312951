"""The one IoU of the package, and the 95% confidence interval of a mean.

Binary IoU per image at threshold 0.5 (the FSS-1000 protocol): a pixel is
target when its foreground probability is >= 0.5. An image whose mask and
prediction are both empty scores 1. Pixels labelled 255 are ignored.
"""

import math

import numpy as np
import tensorflow as tf

from efficientlab_tf.model.losses import IGNORE_LABEL


def binary_iou(masks, probs, threshold=0.5):
    """IoU per image: masks [B,H,W(,1)] in {0,1,255}, probs [B,H,W] -> [B]."""
    masks = tf.cast(masks, tf.float32)
    if masks.shape.rank == 4:
        masks = masks[..., 0]
    valid = tf.not_equal(masks, IGNORE_LABEL)
    truth = tf.logical_and(tf.equal(masks, 1.0), valid)
    pred = tf.logical_and(probs >= threshold, valid)
    inter = tf.reduce_sum(tf.cast(tf.logical_and(truth, pred), tf.float32), [1, 2])
    union = tf.reduce_sum(tf.cast(tf.logical_or(truth, pred), tf.float32), [1, 2])
    return tf.where(union > 0, inter / tf.maximum(union, 1.0), tf.ones_like(union))


def mean_ci95(values):
    """(mean, half-width) with half-width = 1.96 sigma / sqrt(n) (paper).

    sigma is the population standard deviation of `values` (numpy's
    default, ddof=0); n = len(values).
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0:
        raise ValueError("mean_ci95 needs at least one value; got none.")
    return float(values.mean()), float(1.96 * values.std() / math.sqrt(values.size))
