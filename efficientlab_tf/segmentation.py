"""Binary segmentation as a task for `meta/`: its loss, prediction and metric.

`meta/` accepts any Keras model plus these functions (`TaskFns`); this module
is the one place that wires the package's segmentation choices into it:
the loss H - log J + lambda ||theta||^2 (`model/losses.py`), the foreground
probability of the two-class softmax, and binary IoU per image at 0.5.
"""

import functools

import keras
import tensorflow as tf

from efficientlab_tf.config import MetaConfig
from efficientlab_tf.evaluation import features
from efficientlab_tf.meta.contract import TaskFns
from efficientlab_tf.meta.contract import make_adapter
from efficientlab_tf.meta.contract import pool_support
from efficientlab_tf.meta.learner import MetaLearner
from efficientlab_tf.model.efficientlab import foreground_probability
from efficientlab_tf.model.efficientlab import inner_rates
from efficientlab_tf.model.efficientlab import outer_variables
from efficientlab_tf.model.efficientlab import scope_variables
from efficientlab_tf.model.losses import segmentation_loss
from efficientlab_tf.model.metrics import binary_iou


def pool_with_task_ids(support_images, support_masks):
    """Joint training's batch: the meta-batch's support sets [M, K, ...]
    pooled, each mask given a second channel holding its task's index in the
    meta-batch (its class). Losses read channel 0 as the mask; the
    feature-clustering loss reads channel 1 to keep classes apart."""
    masks = tf.cast(support_masks, tf.float32)
    if masks.shape.rank == 4:
        masks = masks[..., None]
    ids = tf.broadcast_to(
        tf.cast(tf.range(masks.shape[0]), tf.float32)[:, None, None, None, None],
        masks.shape)
    return pool_support(support_images, tf.concat([masks, ids], -1))


def task_fns(weight_decay=MetaConfig.weight_decay):
    """TaskFns of binary segmentation with weight decay lambda."""
    return TaskFns(
        loss_fn=functools.partial(segmentation_loss, weight_decay=weight_decay),
        predict_fn=foreground_probability,
        metric_fn=binary_iou,
        pool_fn=pool_with_task_ids,
    )


def clustering_task(weight_decay, weight, num_classes):
    """TaskFns of a two-output model (logits, penultimate features) whose
    loss adds `weight` * R_FC, Goldblum et al.'s feature-clustering ratio
    (`evaluation/features.py`), to the segmentation loss. Masks may carry
    each image's class in channel 1 (joint training's minibatches mix
    classes); without it the minibatch is one task, one class."""

    def loss_fn(masks, outputs, weights):
        logits, feats = outputs
        loss = segmentation_loss(masks, logits, weights, weight_decay)
        masks = tf.cast(masks, tf.float32)
        ids = None
        if masks.shape.rank == 4 and masks.shape[-1] == 2:
            ids = tf.cast(masks[:, 0, 0, 1], tf.int32)
            masks = masks[..., :1]
        ratio = features.clustering_ratio(
            feats, features.resize_masks(masks, feats.shape[1:3]), ids,
            num_classes)
        return loss + weight * ratio

    def predict_fn(outputs):
        return foreground_probability(outputs[0])

    return TaskFns(loss_fn=loss_fn, predict_fn=predict_fn, metric_fn=binary_iou,
                   pool_fn=pool_with_task_ids)


def feature_view(model):
    """A model sharing `model`'s layers and variables that returns
    [logits, penultimate features]."""
    return keras.Model(model.inputs,
                       [model.outputs[0], features.feature_model(model).outputs[0]],
                       name=f"{model.name}_with_features")


def build_adapter(model, omega, weight_decay=MetaConfig.weight_decay,
                  in_place=False):
    """The update routine U(.; ., omega) of segmentation on `model` (its
    scopes and learned rates, if any)."""
    return make_adapter(model, task_fns(weight_decay), omega, scope_variables,
                        in_place=in_place, rates=inner_rates(model))


def build_learner(model, config, strategy=None):
    """MetaLearner for an ExperimentConfig (meta loop, BN policy, XLA), with
    `strategy` (whose scope built `model`) spreading the meta-batch, and the
    training-only terms of `config.meta` (feature clustering, consensus)."""
    meta = config.meta
    train_model = train_task = None
    if meta.clustering_weight:
        train_model = feature_view(model)
        train_task = clustering_task(meta.weight_decay, meta.clustering_weight,
                                     meta.meta_batch)
    return MetaLearner(model, meta, task_fns(meta.weight_decay),
                       bn_mode=config.model.bn_mode,
                       jit_compile=config.run.jit_compile,
                       in_place=config.run.adapt_in_place,
                       strategy=strategy, scope_fn=scope_variables,
                       train_model=train_model, train_task=train_task,
                       consensus=meta.consensus_weight, rates=inner_rates(model),
                       outer_fn=outer_variables)
