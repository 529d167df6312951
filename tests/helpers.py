"""Tiny models and tasks shared by the tests."""

import keras
import numpy as np
import tensorflow as tf

from efficientlab_tf.config import ModelConfig
from efficientlab_tf.data.tasks import TaskBatch
from efficientlab_tf.model.efficientlab import build_efficientlab
from efficientlab_tf.model.layers import BatchNorm


def tiny_encoder(image_size=32, batch_stats=False):
    """Two-conv encoder with the EfficientNet endpoint contract."""
    images = keras.Input((image_size, image_size, 3))
    x = keras.layers.Rescaling(1.0 / 255.0)(images)
    x = keras.layers.Conv2D(8, 3, strides=4, padding="same", use_bias=False)(x)
    s3 = keras.layers.ReLU()(BatchNorm(batch_stats=batch_stats)(x))
    x = keras.layers.Conv2D(12, 3, strides=4, padding="same")(s3)
    s6 = keras.layers.ReLU()(x)
    return keras.Model(images, {"stage_3": s3, "stage_6": s6}, name="tiny")


def tiny_config(**kwargs):
    base = dict(image_size=32, decoder_filters=8, bn_mode="running")
    base.update(kwargs)
    return ModelConfig(**base)


def tiny_efficientlab(**kwargs):
    config = tiny_config(**kwargs)
    return build_efficientlab(
        config, encoder=tiny_encoder(config.image_size,
                                     config.bn_mode == "batch"))


def random_task(shots=4, query=2, size=32, seed=0, meta_batch=None):
    rng = np.random.RandomState(seed)

    def make(n):
        lead = (n,) if meta_batch is None else (meta_batch, n)
        images = rng.uniform(0, 255, lead + (size, size, 3)).astype(np.float32)
        masks = (rng.uniform(size=lead + (size, size, 1)) > 0.6).astype(np.float32)
        return tf.constant(images), tf.constant(masks)

    si, sm = make(shots)
    qi, qm = make(query)
    return TaskBatch(si, sm, qi, qm)


def variable_values(model):
    return [np.array(v.numpy()) for v in model.variables]
