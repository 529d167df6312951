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


def task_seed(seed, index):
    """int32 [2] seed of task `index` of a stream seeded by `seed`."""
    return tf.stack([tf.cast(seed, tf.int32), tf.cast(index, tf.int32)])


def draw_class(seed, index, num_classes):
    """(class position in [0, num_classes), seed of its examples) of task
    `index` of a stream seeded by `seed`: the one seed chain every source
    follows, so `TaskSource.task_class` names the class of a stream task."""
    seeds = tf.random.experimental.stateless_split(task_seed(seed, index), 2)
    position = tf.random.stateless_uniform([], seeds[0], 0, num_classes,
                                           dtype=tf.int32)
    return position, seeds[1]
