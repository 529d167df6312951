"""MetaLearner: the compiled meta-training steps.

* `meta_step(tasks, meta_lr, seed, log)`: one meta-iteration over a
  meta-batch of tasks (FOMAML, Reptile or MAML directions, averaged, then the
  outer update); with a tf.distribute strategy of several replicas the tasks
  are split across them and their summed directions all-reduced once;
* `joint_step(tasks, seed)`: classical training on the tasks' pooled examples
  through the same update routine, without restore (`--algo=joint`).

Both run the training omega (`MetaConfig.omega`: lr, steps, batch size,
optimizer, scope) and return scalar metrics plus `finite`, a bool that is
False when the loss, the meta-direction or the adapted weights hold a NaN or
an Inf (the outer loop stops on it before anything is saved). Evaluation is
`meta/evaluator.py` (`MetaLearner.evaluator`), the learned-rate rule
`meta/meta_sgd.py`, the task contract `meta/contract.py`.

meta_lr and seeds are tensors and every task has a fixed shape, so each
function traces once per shape (tests count traces).
"""

from typing import NamedTuple

import keras
import tensorflow as tf

from efficientlab_tf.meta import fomaml
from efficientlab_tf.meta import maml
from efficientlab_tf.meta import meta_sgd
from efficientlab_tf.meta import reptile
from efficientlab_tf.meta.compiling import compiler
from efficientlab_tf.meta.contract import all_variables
from efficientlab_tf.meta.contract import make_adapter
from efficientlab_tf.meta.contract import no_outer_variables
from efficientlab_tf.meta.contract import pool_support
from efficientlab_tf.meta.evaluator import Evaluator


def _all_finite(tensors):
    """Scalar bool: every element of every tensor is finite."""
    return tf.reduce_all([tf.reduce_all(tf.math.is_finite(t)) for t in tensors])


def linear_meta_step(meta_config, step):
    """Meta step size epsilon annealed linearly to meta_step_final."""
    frac = min(max(step / max(meta_config.meta_iters, 1), 0.0), 1.0)
    return (1.0 - frac) * meta_config.meta_step + frac * meta_config.meta_step_final


class TaskSums(NamedTuple):
    """What a meta-step sums over its tasks (and all-reduces across replicas).

    Attributes:
        direction: Meta-directions of `adapter.meta_variables` (the adapted
            variables, then the outer-only ones).
        stats: Directions of the batch-norm statistics.
        loss: Training losses.
        pre, post: Query scores before / after adaptation (0 unless logged).
        scores: [meta-batch] post-adaptation score of each task, at its
            position in the meta-batch (the hard-task pool reads it).
        rates: First-order gradient of the learned log-rates ([0] if none).
    """

    direction: list
    stats: list
    loss: tf.Tensor
    pre: tf.Tensor
    post: tf.Tensor
    scores: tf.Tensor
    rates: tf.Tensor

    def __add__(self, other):
        return TaskSums(*tf.nest.map_structure(lambda a, b: a + b,
                                               tuple(self), tuple(other)))


class MetaLearner:
    """Compiled meta-training steps for a Keras model.

    Args:
        model: Built keras.Model (images -> logits).
        meta_config: MetaConfig: the outer loop and, as `meta_config.omega`,
            the inner loop's omega.
        task: TaskFns (loss, prediction, metric) of the task family.
        bn_mode: "running" (statistics are meta-learned toward their
            post-adaptation values) or "batch" (statistics unused; left as
            they are).
        jit_compile: XLA for the compiled steps.
        in_place: Adapt on the model's variables (snapshot, steps in place,
            restore) instead of on carried tensors (the default: the same
            numbers and a faster meta-step, bench/bench_limit.py).
        strategy: A tf.distribute.Strategy whose scope created `model`
            (and so the meta optimizer's slots); with more than one replica
            the meta-batch is split across them (`meta_batch` must be a
            multiple of the replica count). None: one device.
        scope_fn: `scope_fn(model, scope) -> variables` (None: all) naming
            what an adaptation scope ("all", "mtl", ...) moves.
        train_model, train_task: What meta-training's inner loop (and joint
            training) runs instead of (`model`, `task`): a view of `model`
            with more outputs and a loss with training-only terms (the
            feature-clustering regulariser). They must share `model`'s
            variables. Evaluation always adapts `model` with `task`.
        consensus: lambda of the inner loop's consensus penalty
            lambda/2 ||phi - theta||^2 (training only).
        rates: The model's learned log inner learning rates (Meta-SGD /
            LSLR; `Adapter`'s `rates`), used by every adaptation and, with
            FOMAML, meta-learned (`meta_sgd.py`); None: omega's lr for all.
        outer_fn: `outer_fn(model, scope) -> variables` the outer loop moves
            but the inner loop leaves frozen (MTL's scaling and shifting;
            FOMAML only: their direction is the first-order outer gradient).
    """

    def __init__(self, model, meta_config, task, bn_mode="running",
                 jit_compile=False, in_place=False, strategy=None,
                 scope_fn=all_variables, train_model=None, train_task=None,
                 consensus=0.0, rates=None, outer_fn=no_outer_variables):
        self.model = model
        self.config = meta_config
        self.omega = meta_config.omega
        self.task = task
        self.bn_mode = bn_mode
        self.in_place = bool(in_place)
        self.rates = rates
        if rates is not None and (meta_config.algo in ("reptile", "maml")
                                  or self.omega.optimizer != "sgd"):
            raise ValueError("learned inner learning rates are meta-learned "
                             "with FOMAML on SGD inner steps.")
        self.strategy = strategy or tf.distribute.get_strategy()
        replicas = self.strategy.num_replicas_in_sync
        if replicas > 1 and in_place:
            raise ValueError("adaptation in place cannot run on several "
                             "replicas (mirrored variables cannot diverge per "
                             "replica); drop --adapt_in_place.")
        if replicas > 1 and meta_config.meta_batch % replicas:
            raise ValueError(
                f"--meta_batch={meta_config.meta_batch} cannot be split across "
                f"{replicas} replicas; use a multiple of {replicas}.")
        self._compile = compiler(jit_compile)
        self.evaluator = Evaluator(model, task, self._compile, scope_fn, rates,
                                   self.strategy, self.in_place)
        # The training U: omega, plus the training-only loss terms (if any).
        self.adapter = make_adapter(train_model or model, train_task or task,
                                    self.omega, lambda _, s: scope_fn(model, s),
                                    self.in_place, consensus, rates,
                                    lambda _, s: outer_fn(model, s))
        if self.adapter.outer_variables and meta_config.algo != "fomaml":
            raise ValueError(f"--adapt_scope={self.omega.scope} learns variables "
                             "outside the inner loop from FOMAML's first-order "
                             "outer gradient: use --algo=fomaml.")
        self.meta_optimizer = None
        if meta_config.meta_optimizer == "adam":
            with self.strategy.scope():
                self.meta_optimizer = keras.optimizers.Adam(meta_config.meta_step)
                self.meta_optimizer.build(self.adapter.meta_variables)
        if replicas > 1:
            self._replicated_step = self._compile(self._replicated_step_impl)
            self.meta_step = self._sharded_meta_step
        else:
            self.meta_step = self._compile(self._meta_step_impl)
        self.joint_step = self._compile(self._joint_step_impl)
        self.eval_fn = self.evaluator.eval_fn
        self.stepper = self.evaluator.stepper
        self.eval_task = self.eval_fn(self.omega)

    # ------------------------------------------------------------ training
    def _direction(self, images, masks, seed, start):
        omega, cfg = self.omega, self.config
        lr = tf.constant(omega.lr, tf.float32)
        if cfg.algo == "maml":  # Static step count: unrolled.
            return maml.meta_gradient(self.adapter, images, masks, lr,
                                      omega.steps, cfg.foml_tail, seed, start)
        steps = tf.constant(omega.steps, tf.int32)
        if cfg.algo == "fomaml":
            return fomaml.meta_gradient(self.adapter, images, masks, lr, steps,
                                        cfg.foml_tail, seed, start)
        return reptile.meta_gradient(self.adapter, images, masks, lr, steps,
                                     seed, start)

    def _task_sums(self, tasks, seed, log, first_task=0, total_tasks=None):
        """`TaskSums` over `tasks` (leading axis M). Task i is seeded with
        fold_in(seed, first_task + i), so a replica holding tasks
        first_task.. of the meta-batch adapts them exactly as the one-device
        step does.

        `log` (a bool tensor; one trace for both values) asks for the pre-
        and post-adaptation query scores, two predictions per task that only
        feed the logs and the hard-task pool: the outer loop passes True on
        logging steps (and every step with hard tasks), and the scores are 0
        otherwise. `scores` is `total_tasks` long (this call fills positions
        first_task..), so an all-reduce SUM assembles it across replicas.
        """
        adapter = self.adapter
        start = adapter.initial_state()
        num_tasks = tasks.support_images.shape[0]
        total_tasks = total_tasks or num_tasks
        use_rates = self.rates is not None and self.config.algo == "fomaml"

        def body(i, sums):
            task_seed = tf.random.experimental.stateless_fold_in(
                seed, first_task + i)
            direction, stats_dir, adapted, task_loss = self._direction(
                tasks.support_images[i], tasks.support_masks[i], task_seed,
                start)
            q_img, q_mask = tasks.query_images[i], tasks.query_masks[i]
            if q_img.shape[0] == 0:  # No training query: log support IoU.
                q_img, q_mask = tasks.support_images[i], tasks.support_masks[i]

            def scores():
                return (tf.reduce_mean(self.task.metric_fn(
                            q_mask, adapter.predict(start, q_img))),
                        tf.reduce_mean(self.task.metric_fn(
                            q_mask, adapter.predict(adapted, q_img))))

            pre, post = tf.cond(tf.convert_to_tensor(log), scores,
                                lambda: (0.0, 0.0))
            rates = (meta_sgd.rate_gradient(
                         self.rates, adapter.adapted_indices, start,
                         direction[:len(start.trainable)], adapted,
                         self.omega.lr)
                     if use_rates else tf.zeros([0]))
            return i + 1, sums + TaskSums(
                direction, stats_dir, task_loss, pre, post,
                post * tf.one_hot(first_task + i, total_tasks), rates)

        zeros = TaskSums(
            [tf.zeros_like(w) for w in start.trainable]
            + [tf.zeros_like(v) for v in adapter.outer_variables],
            [tf.zeros_like(w) for w in start.stats], 0.0, 0.0, 0.0,
            tf.zeros([total_tasks]),
            tf.zeros([len(start.trainable) if use_rates else 0]))
        _, sums = tf.while_loop(lambda i, _: i < num_tasks, body,
                                (tf.constant(0), zeros))
        return sums

    def _outer_update(self, sums, num_tasks, meta_lr):
        """theta <- theta + meta_lr * mean direction (or the meta optimizer),
        BN statistics likewise in "running" mode; returns the metrics."""
        adapter = self.adapter
        scale = 1.0 / num_tasks
        direction = [a * scale for a in sums.direction]
        # One scalar the outer loop reads every step: a NaN/Inf loss or
        # meta-direction stops training before anything is saved.
        finite = _all_finite([sums.loss] + direction + list(sums.stats))
        if self.meta_optimizer is None:
            for v, d in zip(adapter.meta_variables, direction, strict=True):
                v.assign_add(meta_lr * d)
        else:
            self.meta_optimizer.learning_rate.assign(meta_lr)
            self.meta_optimizer.apply([-d for d in direction],
                                      adapter.meta_variables)
        if self.bn_mode == "running":
            for v, d in zip(adapter.stat_variables, sums.stats):
                v.assign_add(meta_lr * d * scale)
        if sums.rates.shape[0]:  # Gradient descent on the log-rates.
            meta_sgd.descend(self.rates, adapter.adapted_indices, sums.rates,
                             meta_lr * self.config.learned_lr_step * scale)
        return {
            "meta_train_loss": sums.loss * scale,
            "pre_adapt_query_iou": sums.pre * scale,
            "post_adapt_query_iou": sums.post * scale,
            "meta_grad_norm": tf.linalg.global_norm(direction),
            "task_scores": sums.scores,
            "finite": finite,
        }

    def _meta_step_impl(self, tasks, meta_lr, seed, log=True):
        """tasks: TaskBatch with a leading meta-batch axis M."""
        return self._outer_update(self._task_sums(tasks, seed, log),
                                  tasks.support_images.shape[0], meta_lr)

    def _replicated_step_impl(self, shards, meta_lr, seed, log):
        """The meta-step over a meta-batch split across replicas: each
        replica sums its tasks' directions on carried tensors, the sums are
        all-reduced, and the outer update is applied once (cross-replica)."""
        strategy = self.strategy
        structure = []  # Filled while tracing: the sums' nesting and shapes.

        def replica_fn(shard):
            ctx = tf.distribute.get_replica_context()
            count = shard.support_images.shape[0]
            sums = self._task_sums(shard, seed, log,
                                   ctx.replica_id_in_sync_group * count,
                                   count * strategy.num_replicas_in_sync)
            # One flat vector, one all-reduce (not one per variable).
            flat = tf.nest.flatten(sums)
            structure[:] = [sums, [t.shape for t in flat]]
            return tf.concat([tf.reshape(t, [-1]) for t in flat], 0)

        total = strategy.reduce(tf.distribute.ReduceOp.SUM,
                                strategy.run(replica_fn, args=(shards,)),
                                axis=None)
        template, shapes = structure
        sizes = [s.num_elements() for s in shapes]
        parts = [tf.reshape(p, s) for p, s in
                 zip(tf.split(total, sizes), shapes)]
        sums = tf.nest.pack_sequence_as(template, parts)
        local = strategy.experimental_local_results(shards)[0]
        num_tasks = (local.support_images.shape[0]
                     * strategy.num_replicas_in_sync)
        return self._outer_update(sums, num_tasks, meta_lr)

    def _sharded_meta_step(self, tasks, meta_lr, seed, log=True):
        """Splits the meta-batch across the strategy's replicas (replica r
        gets tasks r*M/R .. (r+1)*M/R - 1) and runs the compiled step."""
        replicas = self.strategy.num_replicas_in_sync
        count = tasks.support_images.shape[0] // replicas

        def shard(ctx):
            first = ctx.replica_id_in_sync_group * count
            return tf.nest.map_structure(lambda x: x[first:first + count], tasks)

        shards = self.strategy.experimental_distribute_values_from_function(shard)
        return self._replicated_step(shards, meta_lr, seed,
                                     tf.convert_to_tensor(log))

    def _joint_step_impl(self, tasks, seed):
        """Classical training: omega's steps on all tasks' pooled examples."""
        pool = self.task.pool_fn or pool_support
        images, targets = pool(tasks.support_images, tasks.support_masks)
        adapted, loss = self.adapter.adapt(
            images, targets, self.omega.lr, self.omega.steps, seed,
            restore=False)
        q_img, q_mask = tasks.query_images[0], tasks.query_masks[0]
        if q_img.shape[0] == 0:
            q_img, q_mask = tasks.support_images[0], tasks.support_masks[0]
        iou = tf.reduce_mean(self.task.metric_fn(
            q_mask, self.adapter.predict(adapted, q_img)))
        return {"meta_train_loss": loss, "pre_adapt_query_iou": iou,
                "post_adapt_query_iou": iou,
                "finite": _all_finite([loss] + adapted.trainable + adapted.stats)}
