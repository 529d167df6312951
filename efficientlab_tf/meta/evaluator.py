"""Compiled evaluation with the update routine: adapt, predict, score.

* `eval_fn(omega)`: `eval_task(support_images, support_masks, query_images,
  query_masks, lr, steps, seed) -> (score per query, predictions)`, adapting
  from the model's weights with omega's batch size, optimizer and scope (lr
  and steps are tensors: one trace serves every value); with several
  replicas of a MirroredStrategy a `ReplicatedEval`, which also adapts one
  task per replica;
* `stepper(omega)`: adaptation one step at a time over carried states, for
  early stopping over many tasks (UHO).

The model's variables are never written (the tensor form of `Adapter`,
unless `in_place`).
"""

import tensorflow as tf

from efficientlab_tf.meta.contract import all_variables
from efficientlab_tf.meta.contract import make_adapter



# The message of the evaluation's NaN/Inf check; callers that run evaluations
# inside a longer job (training's meta-validation and image summaries) match
# it to report the divergence as their own (training.NonFiniteError).
NONFINITE_PREDICTION = ("evaluation: the adapted network predicts NaN/Inf "
                        "(lower the omega lr, or use float32)")

class ReplicatedEval:
    """An eval function that also adapts `replicas` tasks at once, one per
    replica of a tf.distribute strategy.

    Called, it scores one task like any eval function. `group(tasks, lr,
    steps, seeds)` scores a list of exactly `replicas` TaskBatch (task r on
    replica r, with seed `seeds[r]`) and returns their mean query scores,
    the numbers the single-task call gives for the same task and seed.
    """

    def __init__(self, task_fn, group_fn, replicas):
        self.task_fn = task_fn
        self.group = group_fn
        self.replicas = int(replicas)

    def __call__(self, *args):
        return self.task_fn(*args)


class Evaluator:
    """Compiled evaluation functions of `model` for `task` (TaskFns).

    Args:
        model, task: The network and its task family.
        compile_fn: `compiling.compiler(...)`.
        scope_fn: `scope_fn(model, scope) -> variables` (None: all).
        rates: The model's learned log inner learning rates, or None.
        strategy: The tf.distribute strategy whose scope built `model`.
        in_place: Evaluation adapts on the variables (then restores).
    """

    def __init__(self, model, task, compile_fn, scope_fn=all_variables,
                 rates=None, strategy=None, in_place=False):
        self.model = model
        self.task = task
        self._compile = compile_fn
        self.scope_fn = scope_fn
        self.rates = rates
        self.strategy = strategy or tf.distribute.get_strategy()
        self.in_place = in_place
        self._eval_fns = {}
        self._steppers = {}

    def adapter(self, omega, in_place=None):
        """U for omega (the tensor form unless `in_place`)."""
        return make_adapter(self.model, self.task, omega, self.scope_fn,
                            in_place=self.in_place if in_place is None else in_place,
                            rates=self.rates)

    @staticmethod
    def _key(omega):  # What a compiled function cannot take as a tensor.
        return (omega.batch_size, omega.optimizer, omega.scope)

    def eval_fn(self, omega):
        """The compiled one-task eval function for omega (module doc)."""
        key = self._key(omega)
        if key not in self._eval_fns:
            self._eval_fns[key] = self._compile_eval(self.adapter(omega))
        return self._eval_fns[key]

    def _compile_eval(self, adapter):
        """With several replicas in this process (MirroredStrategy), a
        `ReplicatedEval`. Across workers the chief evaluates alone (the
        others are not there to join a collective), one task at a time."""
        metric = self.task.metric_fn

        def eval_task(support_images, support_masks, query_images,
                      query_masks, lr, steps, seed):
            adapted, _ = adapter.adapt(support_images, support_masks, lr,
                                       steps, seed)
            # A NaN/Inf adaptation fails loudly instead of scoring IoU 0.
            probs = tf.debugging.check_numerics(
                adapter.predict(adapted, query_images), NONFINITE_PREDICTION)
            return metric(query_masks, probs), probs

        task_fn = self._compile(eval_task)
        strategy = self.strategy
        replicas = strategy.num_replicas_in_sync
        if replicas == 1 or not isinstance(strategy, tf.distribute.MirroredStrategy):
            return task_fn

        def replica_fn(shard, lr, steps):
            support_images, support_masks, query_images, query_masks, seed = (
                x[0] for x in shard)
            score, _ = eval_task(support_images, support_masks, query_images,
                                 query_masks, lr, steps, seed)
            return tf.reduce_mean(score)[None]

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

        return ReplicatedEval(task_fn, group, replicas)

    def stepper(self, omega):
        """Compiled (start_fn, advance_fn) over carried adaptation states.

        `start_fn(query_images, query_masks) -> (state, mean score)` before
        adaptation; `advance_fn(support_images, support_masks, query_images,
        query_masks, state, lr, first_step, steps, seed) -> (state, mean
        score)` after `steps` more steps from step `first_step` (continuing
        `state`: the same result as one adaptation of first_step + steps
        steps). Early stopping over many tasks advances them all one step
        at a time and stops computing when it stops looking (UHO); an
        adaptation curve advances from one reported step count to the next
        (`protocol.evaluate_curve`).
        """
        key = self._key(omega)
        if key in self._steppers:  # Compiled once per batch size and scope.
            return self._steppers[key]
        adapter = self.adapter(omega, in_place=False)
        metric = self.task.metric_fn

        def start(query_images, query_masks):
            state = adapter.initial_state()
            return state, tf.reduce_mean(metric(
                query_masks, adapter.predict(state, query_images)))

        def advance(support_images, support_masks, query_images, query_masks,
                    state, lr, first_step, steps, seed):
            state, _ = adapter.adapt(support_images, support_masks, lr, steps,
                                     seed, start=state, first_step=first_step)
            return state, tf.reduce_mean(metric(
                query_masks, adapter.predict(state, query_images)))

        self._steppers[key] = (self._compile(start), self._compile(advance))
        return self._steppers[key]
