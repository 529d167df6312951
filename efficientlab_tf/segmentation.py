"""Binary segmentation as a task for `meta/`: its loss, prediction and metric.

`meta/` accepts any Keras model plus these functions (`TaskFns`); this module
is the one place that wires the package's segmentation choices into it:
the loss H - log J + lambda ||theta||^2 (`model/losses.py`), the foreground
probability of the two-class softmax, and binary IoU per image at 0.5.
"""

import functools

from efficientlab_tf.meta.learner import MetaLearner
from efficientlab_tf.meta.learner import TaskFns
from efficientlab_tf.meta.learner import make_adapter
from efficientlab_tf.model.efficientlab import foreground_probability
from efficientlab_tf.model.efficientlab import scope_variables
from efficientlab_tf.model.losses import segmentation_loss
from efficientlab_tf.model.metrics import binary_iou


def task_fns(weight_decay):
    """TaskFns of binary segmentation with weight decay lambda."""
    return TaskFns(
        loss_fn=functools.partial(segmentation_loss, weight_decay=weight_decay),
        predict_fn=foreground_probability,
        metric_fn=binary_iou,
    )


def build_adapter(model, meta_config, in_place=True, batch_size=None,
                  optimizer=None, scope=None):
    """The update routine U for segmentation; omega's batch size, optimizer
    and scope default to the training ones of `meta_config`."""
    return make_adapter(model, task_fns(meta_config.weight_decay),
                        batch_size or meta_config.inner_batch,
                        optimizer or meta_config.inner_optimizer,
                        in_place=in_place,
                        variables=scope_variables(
                            model, scope or meta_config.adapt_scope))


def build_learner(model, config, strategy=None):
    """MetaLearner for an ExperimentConfig (meta loop, BN policy, XLA), with
    `strategy` (whose scope built `model`) spreading the meta-batch."""
    return MetaLearner(model, config.meta, task_fns(config.meta.weight_decay),
                       bn_mode=config.model.bn_mode,
                       jit_compile=config.run.jit_compile,
                       in_place=config.run.adapt_in_place,
                       strategy=strategy, scope_fn=scope_variables)
