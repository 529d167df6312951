"""What `meta/` needs from a task family (`TaskFns`), and the one factory of
the update routine for an omega (`make_adapter`).

`meta/` works on any built Keras model: a task family is three functions
(loss, prediction, metric), plus optionally how joint training pools the
tasks of a meta-batch into one batch. `segmentation.py` is the package's own
task family; `docs/python_api.md` shows another model.
"""

from typing import Callable
from typing import NamedTuple
from typing import Optional

import tensorflow as tf

from efficientlab_tf.meta import inner_opt
from efficientlab_tf.meta.adapter import Adapter


def pool_support(support_images, support_masks):
    """Joint training's default pooling: the meta-batch's support sets
    [M, K, ...] as one batch [M * K, ...]."""
    def flat(x):
        return tf.reshape(x, [-1] + x.shape[2:].as_list())
    return flat(support_images), flat(support_masks)


class TaskFns(NamedTuple):
    """What meta-learning needs to know about a task family (injected).

    Attributes:
        loss_fn: `loss_fn(targets, logits, trainable_weights) -> scalar`.
        predict_fn: `predict_fn(logits) -> prediction` (e.g. probabilities).
        metric_fn: `metric_fn(targets, predictions) -> [B]` per-example
            score, higher is better (logged, evaluated, searched by UHO).
        pool_fn: `pool_fn(support_images [M, K, ...], support_targets [M, K,
            ...]) -> (images, targets)`, the one batch joint training steps
            on (`pool_support` by default; segmentation adds each example's
            task index to its targets for the feature-clustering loss).
    """

    loss_fn: Callable
    predict_fn: Callable
    metric_fn: Callable
    pool_fn: Optional[Callable] = None


def all_variables(model, scope):
    """Default scope resolver: only "all" (every trainable variable)."""
    if scope != "all":
        raise ValueError(f"this model defines no adaptation scope {scope!r}.")
    return None


def no_outer_variables(model, scope):
    """Default outer resolver: the inner loop's scope is all meta-training moves."""
    del model, scope
    return []


def make_adapter(model, task, omega, scope_fn=all_variables, in_place=False,
                 consensus=0.0, rates=None, outer_fn=no_outer_variables):
    """The update routine U(.; ., omega) of `model` for `task` (TaskFns).

    omega (`config.Omega`) fixes what a built Adapter cannot change: the
    batch size, the inner optimizer and the scope (`scope_fn(model, scope) ->
    variables or None`, `outer_fn(model, scope) -> variables` the outer loop
    alone moves); its lr and steps are passed to every call.
    """
    return Adapter(model, task.loss_fn,
                   inner_opt.get_inner_optimizer(omega.optimizer),
                   batch_size=omega.batch_size, in_place=in_place,
                   predict_fn=task.predict_fn,
                   variables=scope_fn(model, omega.scope),
                   consensus=consensus, rates=rates,
                   outer_variables=outer_fn(model, omega.scope))
