"""The one IoU of the package.

Binary IoU per image at threshold 0.5 (the FSS-1000 protocol): a pixel is
target when its foreground probability is >= 0.5. An image whose mask and
prediction are both empty scores 1. Pixels labelled 255 are ignored.
"""

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
