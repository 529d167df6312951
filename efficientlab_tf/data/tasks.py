"""The fixed-shape task tuple every step consumes.

One task arrives as a `TaskBatch` of four tensors with static shapes
(optionally with a leading meta-batch axis), so compiled steps trace once.
"""

from typing import NamedTuple

import tensorflow as tf


class TaskBatch(NamedTuple):
    """A few-shot binary segmentation task.

    support_images: float32 [(M,) K, S, S, 3] in [0, 255]
    support_masks:  float32 [(M,) K, S, S, 1] in {0, 1} (255 = ignore)
    query_images:   float32 [(M,) Q, S, S, 3]
    query_masks:    float32 [(M,) Q, S, S, 1]
    """

    support_images: tf.Tensor
    support_masks: tf.Tensor
    query_images: tf.Tensor
    query_masks: tf.Tensor

