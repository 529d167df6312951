"""The segmentation loss of the paper: H - log(J) + lambda ||theta||^2.

H is pixel-wise cross entropy over {background, target}; J = 2 IoU / (IoU + 1)
with the soft IoU of eq. 14, IoU = (sum y p + eps) / (sum (y + p - y p) + eps),
computed per image; lambda ||theta||^2 is L2 over the weights passed in.
Mask pixels equal to `IGNORE_LABEL` (PASCAL's 255 boundary) are ignored.
"""

import tensorflow as tf

IGNORE_LABEL = 255.0
IOU_EPSILON = 1.0


def _flatten_masks(masks):
    masks = tf.cast(masks, tf.float32)
    if masks.shape.rank == 4:
        masks = masks[..., 0]
    valid = tf.cast(tf.not_equal(masks, IGNORE_LABEL), tf.float32)
    return masks * valid, valid


def soft_iou(masks, probs, epsilon=IOU_EPSILON):
    """Soft IoU per image (eq. 14): masks [B,H,W(,1)], probs [B,H,W] -> [B]."""
    y, valid = _flatten_masks(masks)
    p = probs * valid
    inter = tf.reduce_sum(y * p, axis=[1, 2])
    union = tf.reduce_sum(y + p - y * p, axis=[1, 2])
    return (inter + epsilon) / (union + epsilon)


def l2_penalty(weights):
    """sum ||w||^2 over a list of weight tensors (float32 scalar)."""
    return tf.add_n([tf.reduce_sum(tf.square(w)) for w in weights])


def segmentation_loss(masks, logits, weights=(), weight_decay=5e-4):
    """H - log(J) + lambda ||theta||^2, averaged over the batch.

    Args:
        masks: [B, H, W] or [B, H, W, 1] with 0 (background), 1 (target) and
            optionally 255 (ignored).
        logits: [B, H, W, 2], float32 or a mixed-precision policy's
            bfloat16/float16 (computed in float32 here).
        weights: Tensors the L2 term covers (the trainable weights).
        weight_decay: lambda.

    Returns:
        Scalar float32 loss.
    """
    y, valid = _flatten_masks(masks)
    log_probs = tf.nn.log_softmax(tf.cast(logits, tf.float32), axis=-1)
    pixel_ce = -(y * log_probs[..., 1] + (1.0 - y) * log_probs[..., 0])
    ce = tf.reduce_sum(pixel_ce * valid) / tf.maximum(tf.reduce_sum(valid), 1.0)
    iou = soft_iou(masks, tf.exp(log_probs[..., 1]))
    jaccard = 2.0 * iou / (iou + 1.0)
    loss = ce - tf.reduce_mean(tf.math.log(jaccard))
    if weight_decay and weights:
        loss += weight_decay * l2_penalty(weights)
    return loss
