"""MetaLearner: the one place that compiles (tf.function) steps.

It owns the update routine, the outer update and the compiled functions:

* `meta_step(tasks, meta_lr, seed)`: one meta-iteration over a meta-batch of
  tasks (FOMAML or Reptile directions, averaged, then the outer update); with
  a tf.distribute strategy of several replicas the tasks are split across
  them and their summed directions all-reduced once;
* `joint_step(tasks, lr, seed)`: classical training on the tasks' examples
  through the same update routine, without restore (`--algo=joint`);
* `eval_task(support, query, lr, steps, seed)`: adapt, predict the query,
  restore; returns IoU per query image (with several replicas a
  `protocol.ReplicatedEval`, which also adapts one task per replica).

Both training steps return scalar metrics plus `finite`, a bool that is
False when the loss, the meta-direction or the adapted weights hold a NaN or
an Inf (the outer loop stops on it before anything is saved).

lr, steps and meta_lr are tensors and every task has a fixed shape, so each
function traces once per shape (tests count traces).
"""

import functools
from typing import Callable
from typing import NamedTuple

import keras
import tensorflow as tf

from efficientlab_tf.evaluation import protocol
from efficientlab_tf.meta import fomaml
from efficientlab_tf.meta import inner_opt
from efficientlab_tf.meta import maml
from efficientlab_tf.meta import reptile
from efficientlab_tf.meta.adapter import Adapter


class TaskFns(NamedTuple):
    """What meta-learning needs to know about a task family (injected).

    Attributes:
        loss_fn: `loss_fn(targets, logits, trainable_weights) -> scalar`.
        predict_fn: `predict_fn(logits) -> prediction` (e.g. probabilities).
        metric_fn: `metric_fn(targets, predictions) -> [B]` per-example
            score, higher is better (logged, evaluated, searched by UHO).
    """

    loss_fn: Callable
    predict_fn: Callable
    metric_fn: Callable


def make_adapter(model, task, batch_size, optimizer="sgd", in_place=True,
                 variables=None, consensus=0.0, rates=None):
    """An `Adapter` for `task` (TaskFns) with omega's batch size, optimizer
    and adapted `variables` (None: all trainable ones)."""
    return Adapter(model, task.loss_fn, inner_opt.get_inner_optimizer(optimizer),
                   batch_size=batch_size, in_place=in_place,
                   predict_fn=task.predict_fn, variables=variables,
                   consensus=consensus, rates=rates)


def all_variables(model, scope):
    """Default scope resolver: only "all" (every trainable variable)."""
    if scope != "all":
        raise ValueError(f"this model defines no adaptation scope {scope!r}.")
    return None


def _all_finite(tensors):
    """Scalar bool: every element of every tensor is finite."""
    return tf.reduce_all([tf.reduce_all(tf.math.is_finite(t)) for t in tensors])


def linear_meta_step(meta_config, step):
    """Meta step size epsilon annealed linearly to meta_step_final."""
    frac = min(max(step / max(meta_config.meta_iters, 1), 0.0), 1.0)
    return (1.0 - frac) * meta_config.meta_step + frac * meta_config.meta_step_final


class MetaLearner:
    """Compiled meta-training and evaluation steps for a Keras model.

    Args:
        model: Built keras.Model (images -> logits).
        meta_config: MetaConfig (inner and outer loop).
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
            what an adaptation scope ("all", "mtl", ...) moves; training
            uses `meta_config.adapt_scope`, evaluation an omega's scope.
        train_model, train_task: What meta-training's inner loop (and joint
            training) runs instead of (`model`, `task`): a view of `model`
            with more outputs and a loss with training-only terms (the
            feature-clustering regulariser). They must share `model`'s
            variables. Evaluation always adapts `model` with `task`.
        consensus: lambda of the inner loop's consensus penalty
            lambda/2 ||phi - theta||^2 (training only).
        rates: The model's learned log inner learning rates (Meta-SGD /
            LSLR; `Adapter`'s `rates`), used by every adaptation and, with
            FOMAML, meta-learned by the first-order rule of
            `_rate_gradient`; None: omega's lr for every variable.
    """

    def __init__(self, model, meta_config, task, bn_mode="running",
                 jit_compile=False, in_place=False, strategy=None,
                 scope_fn=all_variables, train_model=None, train_task=None,
                 consensus=0.0, rates=None):
        self.model = model
        self.config = meta_config
        self.task = task
        self.bn_mode = bn_mode
        self.in_place = bool(in_place)
        self.scope_fn = scope_fn
        self.rates = rates
        if rates is not None and (meta_config.algo in ("reptile", "maml")
                                  or meta_config.inner_optimizer != "sgd"):
            raise ValueError("learned inner learning rates are meta-learned "
                             "with FOMAML on SGD inner steps.")
        # The training U and the test-time U: the same omega, the training
        # one with the training-only loss terms (if any).
        self.eval_adapter = self._adapter(meta_config.inner_batch,
                                          meta_config.inner_optimizer,
                                          meta_config.adapt_scope, in_place)
        self.adapter = self.eval_adapter
        if train_model is not None or train_task is not None or consensus:
            self.adapter = make_adapter(
                train_model or model, train_task or task,
                meta_config.inner_batch, meta_config.inner_optimizer, in_place,
                scope_fn(model, meta_config.adapt_scope), consensus=consensus,
                rates=rates)
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
        self.meta_optimizer = None
        if meta_config.meta_optimizer == "adam":
            with self.strategy.scope():
                self.meta_optimizer = keras.optimizers.Adam(meta_config.meta_step)
                self.meta_optimizer.build(self.adapter.trainable_variables)
        # One trace per task shape. XLA (`jit_compile`) is opt-in, for
        # training and evaluation alike: it is for GPUs; on CPU the B0
        # meta-step compiles in ~2 minutes and then runs 25x slower than the
        # graph executor's oneDNN kernels (BENCHMARKS.md).
        self._compile = functools.partial(
            tf.function, jit_compile=jit_compile, reduce_retracing=True)
        if replicas > 1:
            self._replicated_step = self._compile(self._replicated_step_impl)
            self.meta_step = self._sharded_meta_step
        else:
            self.meta_step = self._compile(self._meta_step_impl)
        self.joint_step = self._compile(self._joint_step_impl)
        self._eval_fns = {}
        self._steppers = {}
        cfg = meta_config
        self._eval_fns[(cfg.inner_batch, cfg.inner_optimizer,
                        cfg.adapt_scope)] = self._compile_eval(self.eval_adapter)
        self.eval_task = self.eval_fn()

    def _adapter(self, batch_size, optimizer, scope, in_place):
        return make_adapter(self.model, self.task, batch_size, optimizer,
                            in_place, self.scope_fn(self.model, scope),
                            rates=self.rates)

    def _rate_gradient(self, start, direction, adapted, lr):
        """First-order d L_val / d log r_i of one FOMAML task, per adapted
        variable i (Meta-SGD's rule without second-order terms).

        With SGD steps theta_tr = theta - sum_t lr r_i g_t, so (ignoring
        how the g_t depend on r) d theta_tr / d r_i = (theta_tr - theta)_i
        / r_i; the tail step gives g_val = (theta_tr - theta_val)_i /
        (lr r_i). Hence d L_val / d log r_i = r_i d L_val / d r_i
        = <theta_tr - theta_val, theta_tr - theta>_i / (lr r_i): FOMAML's two
        directions already hold everything.
        """
        r = tf.exp(tf.gather(self.rates, self.adapter.adapted_indices))
        theta_tr = [a - d for a, d in zip(adapted.trainable, direction)]
        dots = tf.stack([
            tf.reduce_sum(-d * (t - s))
            for d, t, s in zip(direction, theta_tr, start.trainable)])
        return dots / (lr * r)

    # ------------------------------------------------------------ training
    def _direction(self, images, masks, lr, steps, seed, start):
        if self.config.algo == "maml":  # Static step count: unrolled.
            return maml.meta_gradient(
                self.adapter, images, masks, lr, self.config.inner_iters,
                self.config.foml_tail, seed, start)
        if self.config.algo == "fomaml":
            return fomaml.meta_gradient(
                self.adapter, images, masks, lr, steps,
                self.config.foml_tail, seed, start)
        return reptile.meta_gradient(
            self.adapter, images, masks, lr, steps, seed, start)

    def _task_sums(self, tasks, seed, log, first_task=0, total_tasks=None):
        """Sums over `tasks` (leading axis M) of the meta-directions, the
        stats directions, the losses and (if `log`) the pre/post-adaptation
        query scores. Task i is seeded with fold_in(seed, first_task + i), so
        a replica holding tasks first_task.. of the meta-batch adapts them
        exactly as the one-device step does.

        `log` (a bool tensor; one trace for both values) asks for the pre-
        and post-adaptation query scores, two predictions per task that only
        feed the logs and the hard-task pool: the outer loop passes True on
        logging steps (and every step with hard tasks), and the scores are 0
        otherwise. The last sum is the vector of post-adaptation scores of
        the whole meta-batch (`total_tasks` long; this call fills positions
        first_task..), which an all-reduce SUM assembles across replicas.
        """
        cfg = self.config
        adapter = self.adapter
        start = adapter.initial_state()
        num_tasks = tasks.support_images.shape[0]
        total_tasks = total_tasks or num_tasks
        lr = tf.constant(cfg.inner_lr, tf.float32)
        steps = tf.constant(cfg.inner_iters, tf.int32)

        use_rates = self.rates is not None and cfg.algo == "fomaml"

        def body(i, acc, acc_stats, loss, pre, post, per_task, acc_rates):
            task_seed = tf.random.experimental.stateless_fold_in(
                seed, first_task + i)
            direction, stats_dir, adapted, task_loss = self._direction(
                tasks.support_images[i], tasks.support_masks[i], lr, steps,
                task_seed, start)
            q_img, q_mask = tasks.query_images[i], tasks.query_masks[i]
            if q_img.shape[0] == 0:  # No training query: log support IoU.
                q_img, q_mask = tasks.support_images[i], tasks.support_masks[i]
            def scores():
                return (tf.reduce_mean(self.task.metric_fn(
                            q_mask, adapter.predict(start, q_img))),
                        tf.reduce_mean(self.task.metric_fn(
                            q_mask, adapter.predict(adapted, q_img))))

            pre_iou, post_iou = tf.cond(tf.convert_to_tensor(log), scores,
                                        lambda: (0.0, 0.0))
            per_task += post_iou * tf.one_hot(first_task + i, total_tasks)
            if use_rates:
                acc_rates += self._rate_gradient(start, direction, adapted, lr)
            return (i + 1,
                    [a + d for a, d in zip(acc, direction)],
                    [a + d for a, d in zip(acc_stats, stats_dir)],
                    loss + task_loss, pre + pre_iou, post + post_iou, per_task,
                    acc_rates)

        zeros = [tf.zeros_like(w) for w in start.trainable]
        zeros_stats = [tf.zeros_like(w) for w in start.stats]
        rate_count = len(start.trainable) if use_rates else 0
        _, acc, acc_stats, loss, pre, post, per_task, acc_rates = tf.while_loop(
            lambda i, *_: i < num_tasks, body,
            (tf.constant(0), zeros, zeros_stats, 0.0, 0.0, 0.0,
             tf.zeros([total_tasks]), tf.zeros([rate_count])),
        )
        return acc, acc_stats, loss, pre, post, per_task, acc_rates

    def _outer_update(self, sums, num_tasks, meta_lr):
        """theta <- theta + meta_lr * mean direction (or the meta optimizer),
        BN statistics likewise in "running" mode; returns the metrics."""
        acc, acc_stats, loss, pre, post, per_task, acc_rates = sums
        adapter = self.adapter
        scale = 1.0 / num_tasks
        direction = [a * scale for a in acc]
        # One scalar the outer loop reads every step: a NaN/Inf loss or
        # meta-direction stops training before anything is saved.
        finite = _all_finite([loss] + direction + list(acc_stats))
        if self.meta_optimizer is None:
            for v, d in zip(adapter.trainable_variables, direction):
                v.assign_add(meta_lr * d)
        else:
            self.meta_optimizer.learning_rate.assign(meta_lr)
            self.meta_optimizer.apply([-d for d in direction],
                                      adapter.trainable_variables)
        if self.bn_mode == "running":
            for v, d in zip(adapter.stat_variables, acc_stats):
                v.assign_add(meta_lr * d * scale)
        if acc_rates.shape[0]:  # Gradient descent on the log-rates.
            step = meta_lr * self.config.learned_lr_step * acc_rates * scale
            self.rates.assign(self.rates.value - tf.scatter_nd(
                [[i] for i in adapter.adapted_indices], step, self.rates.shape))
        return {
            "meta_train_loss": loss * scale,
            "pre_adapt_query_iou": pre * scale,
            "post_adapt_query_iou": post * scale,
            "meta_grad_norm": tf.linalg.global_norm(direction),
            "task_scores": per_task,
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

    def _joint_step_impl(self, tasks, lr, seed):
        """Classical training: `inner_iters` updates on all tasks' examples."""
        shape = tasks.support_images.shape
        images = tf.reshape(tasks.support_images, [-1] + shape[2:].as_list())
        # Masks get a second channel: the index of the example's task in the
        # meta-batch (its class). Losses read channel 0 as the mask; the
        # feature-clustering loss reads channel 1 to keep classes apart.
        masks = tf.cast(tasks.support_masks, tf.float32)
        if masks.shape.rank == 4:
            masks = masks[..., None]
        ids = tf.broadcast_to(
            tf.cast(tf.range(shape[0]), tf.float32)[:, None, None, None, None],
            masks.shape)
        masks = tf.concat([masks, ids], -1)
        masks = tf.reshape(masks, [-1] + masks.shape[2:].as_list())
        adapted, loss = self.adapter.adapt(
            images, masks, lr, self.config.inner_iters, seed, restore=False)
        q_img, q_mask = tasks.query_images[0], tasks.query_masks[0]
        if q_img.shape[0] == 0:
            q_img, q_mask = tasks.support_images[0], tasks.support_masks[0]
        iou = tf.reduce_mean(self.task.metric_fn(q_mask, self.adapter.predict(adapted, q_img)))
        return {"meta_train_loss": loss, "pre_adapt_query_iou": iou,
                "post_adapt_query_iou": iou,
                "finite": _all_finite([loss] + adapted.trainable + adapted.stats)}

    # ---------------------------------------------------------- evaluation
    def _eval_task_fn(self, adapter):
        def eval_task(support_images, support_masks, query_images,
                      query_masks, lr, steps, seed):
            adapted, _ = adapter.adapt(support_images, support_masks, lr,
                                       steps, seed)
            probs = adapter.predict(adapted, query_images)
            return self.task.metric_fn(query_masks, probs), probs

        return eval_task

    def _compile_eval(self, adapter):
        """The compiled one-task eval function; with several replicas in this
        process (MirroredStrategy) a `protocol.ReplicatedEval` that also
        adapts one task per replica. Across workers the chief evaluates
        alone (the others are not there to join a collective), one task at
        a time."""
        eval_task = self._eval_task_fn(adapter)
        task_fn = self._compile(eval_task)
        strategy = self.strategy
        replicas = strategy.num_replicas_in_sync
        if replicas == 1 or not isinstance(strategy, tf.distribute.MirroredStrategy):
            return task_fn

        def replica_fn(shard, lr, steps):
            support_images, support_masks, query_images, query_masks, seed = (
                x[0] for x in shard)
            iou, _ = eval_task(support_images, support_masks, query_images,
                               query_masks, lr, steps, seed)
            return tf.reduce_mean(iou)[None]

        def replicated(shards, lr, steps):
            scores = strategy.run(replica_fn, args=(shards, lr, steps))
            return strategy.gather(scores, axis=0)

        replicated = self._compile(replicated)

        def group(tasks, lr, steps, seeds):
            stacked = [tf.stack(parts) for parts in zip(*tasks)] + [seeds]

            def shard(ctx):
                r = ctx.replica_id_in_sync_group
                return tuple(x[r:r + 1] for x in stacked)

            shards = strategy.experimental_distribute_values_from_function(shard)
            return [float(x) for x in replicated(shards, lr, steps).numpy()]

        return protocol.ReplicatedEval(task_fn, group, replicas)

    def eval_fn(self, batch_size=None, optimizer=None, scope=None):
        """Compiled `eval_task(support_images, support_masks, query_images,
        query_masks, lr, steps, seed) -> (IoU per query, probs)` for an
        omega's batch size, inner optimizer and scope (the training ones by
        default): adapt from the model's weights, predict the query. The
        model's variables are left as they were."""
        cfg = self.config
        key = (batch_size or cfg.inner_batch, optimizer or cfg.inner_optimizer,
               scope or cfg.adapt_scope)
        if key not in self._eval_fns:
            self._eval_fns[key] = self._compile_eval(
                self._adapter(*key, in_place=self.in_place))
        return self._eval_fns[key]

    def stepper(self, batch_size=None, scope=None):
        """Compiled (start_fn, advance_fn) over carried adaptation states.

        `start_fn(query_images, query_masks) -> (state, mean score)` before
        adaptation; `advance_fn(support_images, support_masks, query_images,
        query_masks, state, lr, t, seed) -> (state, mean score)` after step t
        (continuing `state`: the same result as one adaptation of t + 1
        steps). Early stopping over many tasks advances them all one step at
        a time and stops computing when it stops looking (UHO).
        """
        key = (batch_size or self.config.inner_batch,
               scope or self.config.adapt_scope)
        if key in self._steppers:  # Compiled once per batch size and scope.
            return self._steppers[key]
        adapter = self._adapter(key[0], self.config.inner_optimizer, key[1],
                                in_place=False)
        metric = self.task.metric_fn

        def start(query_images, query_masks):
            state = adapter.initial_state()
            return state, tf.reduce_mean(metric(
                query_masks, adapter.predict(state, query_images)))

        def advance(support_images, support_masks, query_images, query_masks,
                    state, lr, t, seed):
            state, _ = adapter.adapt(support_images, support_masks, lr, 1, seed,
                                     start=state, first_step=t)
            return state, tf.reduce_mean(metric(
                query_masks, adapter.predict(state, query_images)))

        self._steppers[key] = (self._compile(start), self._compile(advance))
        return self._steppers[key]
