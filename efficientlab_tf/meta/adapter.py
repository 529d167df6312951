"""The update routine U(theta; D, omega): the only inner loop of the package.

Meta-training (FOMAML, Reptile, joint), evaluation, UHO and the exported
few-shot signature all adapt weights through `Adapter.adapt`, whose single
step is `Adapter.step`. The step is written over weight *tensors* with Keras
3's `model.stateless_call`, and the loop runs it in one of two ways over the
same math:

* on tensors carried through the loop (`in_place=False`; what MetaLearner
  uses by default): the snapshot is the start state, the variables are
  never written, so there is nothing to restore. The served few-shot
  signature needs this (concurrent requests must not see each other), so
  does per-replica adaptation under tf.distribute, and it is the fast form
  of the meta-step (bench/bench_limit.py: no per-step assignments, no
  per-task snapshot/restore of every variable);
* in place (`in_place=True`, `--adapt_in_place`): snapshot every model
  variable, run the steps writing the new values into the variables, read
  the adapted values, restore the snapshot bit for bit. Same numbers
  (tests/test_adapter.py), slower meta-step.

State of one adaptation (`AdaptState`): the trainable weights, the float
non-trainable state (batch-norm moving statistics) and the inner optimizer's
slots (fresh per task). Random state (Keras seed generators, used by dropout)
is never written: each step feeds the seed generators values derived from
the task seed and the step index, so tasks get fresh but reproducible noise
and a restore is exact.

omega = (lr, steps, batch_size, optimizer, scope): lr and steps are tensors,
so UHO can try many values without retracing; batch_size, optimizer and the
scope are fixed when the Adapter is built (they change shapes and state
structure).

The scope is the subset of the model's trainable variables that U moves
(`variables`; all of them by default). The others are *frozen*: their
current values enter the forward pass as constants, so they are not
watched by the tape (no gradient is computed for them), not carried,
snapshot or restored, and the outer update of meta-training, which moves
`Adapter.trainable_variables`, never touches them either (meta-transfer
learning, decoder-only or last-layer fine-tuning).
"""

from typing import NamedTuple

import tensorflow as tf

from efficientlab_tf.meta import philox
from efficientlab_tf.meta import weights as weights_lib


class AdaptState(NamedTuple):
    """Weights being adapted: trainable, float non-trainable, optimizer slots."""

    trainable: list
    stats: list
    opt: tuple


def _is_seed_state(variable):
    return variable.path.endswith("seed_generator_state")


def _is_float(variable):
    return tf.as_dtype(variable.dtype).is_floating


# Loss scale of a gradient when the network computes in float16
# (`--precision=mixed_float16`): small gradients survive the float16
# backward pass, the float32 update divides the scale out again. Dynamic, as
# Keras's LossScaleOptimizer (skip and halve on non-finite gradients), per
# step: a step whose gradients overflow is not applied, the scale is halved
# and the step computed again, at most FLOAT16_HALVINGS times (down to 1),
# so an inner loop of k steps still takes k steps. Each step starts at 1024,
# where no growth is needed: an inner loop is 1-200 steps, and 1024 kept
# small gradients of EfficientLab alive (tests/test_precision.py). A step
# still non-finite at scale 1 is a real overflow of the forward pass; it
# stays non-finite, and training stops on it, evaluation and `few_shot`
# refuse it (check_numerics).
FLOAT16_LOSS_SCALE = 1024.0
FLOAT16_HALVINGS = 10


def seeded_permutation(n, seed):
    """A permutation of 0..n-1 determined by `seed`: the stable argsort of n
    Philox keys (TensorFlow's CPU `stateless_uniform(..., alg="philox")`
    stream). Unlike `stateless_shuffle` every op has an XLA kernel, and
    unlike `stateless_uniform` the keys are the same under XLA, so
    `--jit_compile` walks the support set in the same order."""
    return tf.argsort(philox.uniform(n, seed), stable=True)


class Adapter:
    """U(theta; D, omega) for a Keras model and a loss.

    Args:
        model: Any built `keras.Model` mapping images to logits.
        loss_fn: `loss_fn(masks, logits, trainable_weights) -> scalar`.
        optimizer: Inner optimizer from `meta/inner_opt.py`.
        batch_size: Inner minibatch size; a support set of n < batch_size
            examples is used whole.
        in_place: Run the loop on the model's variables (snapshot, steps in
            place, restore) rather than on carried tensors.
        predict_fn: `predict_fn(logits) -> prediction` applied by `predict`
            (e.g. the foreground probability); None returns the logits.
        variables: The trainable variables U adapts (a subset of
            `model.trainable_variables`, in any order); None: all of them.
            The rest are frozen (read, never written, no gradient).
        consensus: lambda of the consensus penalty lambda/2 ||phi - theta||^2
            added to every inner loss (Goldblum et al. 2020, "Unraveling
            Meta-Learning", section 4.2: Reptile with a consensus term),
            theta being the start of the task's adaptation (`adapt`'s
            `anchor`); 0: the plain loss.
        rates: A non-trainable variable of the model holding one log
            learning-rate multiplier per trainable variable (in
            `model.trainable_variables` order; Meta-SGD/LSLR): variable i
            steps with lr * exp(rates[i]). None: omega's lr for all.
        outer_variables: Trainable variables outside `variables` that
            meta-training moves but the inner loop leaves frozen (MTL's
            scaling and shifting): `outer_gradient` differentiates the loss
            with respect to them.
    """

    def __init__(self, model, loss_fn, optimizer, batch_size=8, in_place=False,
                 predict_fn=None, variables=None, consensus=0.0, rates=None,
                 outer_variables=()):
        if batch_size <= 0:
            raise ValueError(f"`batch_size` must be positive; got {batch_size}.")
        self.model = model
        self.loss_fn = loss_fn
        self.optimizer = optimizer
        self.batch_size = int(batch_size)
        self.in_place = bool(in_place)
        self.predict_fn = predict_fn
        if consensus < 0:
            raise ValueError(f"`consensus` must be >= 0; got {consensus}.")
        self.consensus = float(consensus)
        self.rates = rates
        # Written down by the model's dtype policy; 1 unless it is float16.
        self.loss_scale = (FLOAT16_LOSS_SCALE
                           if model.dtype_policy.compute_dtype == "float16"
                           else 1.0)
        trainable = model.trainable_variables
        if variables is None:
            self._adapted_idx = list(range(len(trainable)))
        else:
            position = {id(v): i for i, v in enumerate(trainable)}
            missing = [v.path for v in variables if id(v) not in position]
            if missing:
                raise ValueError(
                    "`variables` must be trainable variables of the model; "
                    f"not: {missing[:3]}")
            self._adapted_idx = sorted(position[id(v)] for v in variables)
            if not self._adapted_idx:
                raise ValueError("`variables` is empty: nothing to adapt.")
        adapted = set(self._adapted_idx)
        self._frozen_idx = [i for i in range(len(trainable)) if i not in adapted]
        position = {id(v): i for i, v in enumerate(trainable)}
        self._outer_idx = [position.get(id(v)) for v in outer_variables]
        if None in self._outer_idx or adapted & set(self._outer_idx):
            raise ValueError("`outer_variables` must be trainable variables of "
                             "the model outside the adapted `variables`.")
        non_trainable = model.non_trainable_variables
        self._seed_idx = [
            i for i, v in enumerate(non_trainable) if _is_seed_state(v)
        ]
        self._stat_idx = [
            i for i, v in enumerate(non_trainable)
            if _is_float(v) and not _is_seed_state(v)
            and (rates is None or v is not rates)
        ]

    # ----------------------------------------------------------------- state
    @property
    def trainable_variables(self):
        """The variables U adapts (and meta-training moves), model order."""
        trainable = self.model.trainable_variables
        return [trainable[i] for i in self._adapted_idx]

    @property
    def adapted_indices(self):
        """Positions of `trainable_variables` in the model's
        `trainable_variables` (the rows of the learned rates they use)."""
        return list(self._adapted_idx)

    @property
    def outer_variables(self):
        """Variables meta-training moves that the inner loop leaves frozen."""
        trainable = self.model.trainable_variables
        return [trainable[i] for i in self._outer_idx]

    @property
    def meta_variables(self):
        """What the outer update moves: `trainable_variables`, then
        `outer_variables` (the order of a meta-direction)."""
        return self.trainable_variables + self.outer_variables

    @property
    def frozen_variables(self):
        """Trainable variables of the model outside the scope (constants)."""
        trainable = self.model.trainable_variables
        return [trainable[i] for i in self._frozen_idx]

    def _full_trainable(self, adapted, outer=None):
        """The model's whole trainable list for stateless_call: the adapted
        tensors in their places, the frozen variables' current values (or
        `outer`, tensors for the outer variables, in their places)."""
        if not self._frozen_idx:
            return list(adapted)
        values = [None] * (len(self._adapted_idx) + len(self._frozen_idx))
        for i, x in zip(self._adapted_idx, adapted, strict=True):
            values[i] = x
        for i, v in zip(self._frozen_idx, self.frozen_variables, strict=True):
            values[i] = v.value
        for i, x in zip(self._outer_idx, outer or [], strict=outer is not None):
            values[i] = x
        return values

    @property
    def stat_variables(self):
        non_trainable = self.model.non_trainable_variables
        return [non_trainable[i] for i in self._stat_idx]

    def initial_state(self):
        """AdaptState holding the current variable values and fresh slots."""
        trainable = weights_lib.snapshot(self.trainable_variables)
        stats = weights_lib.snapshot(self.stat_variables)
        return AdaptState(trainable, stats, self.optimizer.init(trainable))

    def _non_trainable_values(self, stats, seed):
        """Full non-trainable list for stateless_call: stats + derived seeds."""
        values = [v.value for v in self.model.non_trainable_variables]
        for i, x in zip(self._stat_idx, stats, strict=True):
            values[i] = x
        if self._seed_idx:
            draws = tf.random.stateless_uniform(
                [len(self._seed_idx), 2], seed, minval=0, maxval=2**30,
                dtype=tf.int32,
            )
            for j, i in enumerate(self._seed_idx):
                values[i] = tf.cast(draws[j], values[i].dtype)
        return values

    # ------------------------------------------------------------------ math
    def step(self, state, images, masks, lr, step, seed, anchor=None):
        """One inner update on a minibatch: the single definition of the math.

        Args:
            state: AdaptState before the step.
            images: float32 [b, S, S, 3]; masks: [b, S, S, 1]. The weights
                and the update are float32 whatever the network computes in
                (a mixed policy's layers cast them; gradients come back in
                float32; float16 scales the loss, `FLOAT16_LOSS_SCALE`).
            lr: Scalar learning rate alpha.
            step: Scalar int step index (for optimizer bias correction).
            seed: int32 [2] seed of this step's dropout noise.
            anchor: theta of the consensus penalty (tensors like
                `state.trainable`); used only when `consensus` > 0.

        Returns:
            (AdaptState after the step, loss before the step).
        """
        return self._loss_scaled(lambda scale: self._step_at(
            state, images, masks, lr, step, seed, anchor, scale))

    def _loss_scaled(self, fn):
        """`fn(scale) -> (outputs, finite)` at the float16 loss scale, halved
        and computed again while the gradients are not finite (see
        `FLOAT16_LOSS_SCALE`); other precisions call `fn(None)` once."""
        if self.loss_scale == 1.0:
            return fn(None)[0]
        scale = tf.constant(self.loss_scale, tf.float32)
        outputs, finite = fn(scale)  # The common case, outside the loop.

        def again(k, scale, outputs, finite):
            del outputs, finite
            return (k + 1, scale / 2.0) + tuple(fn(scale / 2.0))

        _, _, outputs, _ = tf.while_loop(
            lambda k, s, o, finite: tf.logical_and(
                tf.logical_not(finite), k < FLOAT16_HALVINGS),
            again, (tf.constant(0), scale, outputs, finite))
        return outputs

    def _step_at(self, state, images, masks, lr, step, seed, anchor, scale):
        """`step` with loss scale `scale` (None: unscaled): ((AdaptState,
        loss), whether every gradient is finite)."""
        non_trainable = self._non_trainable_values(state.stats, seed)
        trainable = list(state.trainable)
        # Only the adapted tensors are watched: frozen variables are read
        # inside the tape, and auto-watching them would make the backward
        # pass compute their (unused) kernel gradients: --adapt_scope=bn_affine
        # measured 1.12x the full step with it, 0.86x without (Lite0 96 px).
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(trainable)
            logits, new_non_trainable = self.model.stateless_call(
                self._full_trainable(trainable), non_trainable, images,
                training=True,
            )
            loss = self.loss_fn(masks, logits, trainable)
            if self.consensus and anchor is not None:
                loss += 0.5 * self.consensus * tf.add_n(
                    [tf.reduce_sum(tf.square(p - a))
                     for p, a in zip(trainable, anchor, strict=True)])
            scaled = loss if scale is None else loss * scale
        grads = tape.gradient(scaled, trainable)
        grads = [tf.zeros_like(p) if g is None else g
                 for p, g in zip(trainable, grads)]
        finite = tf.constant(True)
        if scale is not None:
            grads = [g / scale for g in grads]
            finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g))
                                    for g in grads])
        new_trainable, new_opt = self.optimizer.update(
            trainable, grads, state.opt, self.learning_rates(lr), step
        )
        new_stats = [new_non_trainable[i] for i in self._stat_idx]
        return (AdaptState(new_trainable, new_stats, new_opt), loss), finite

    def learning_rates(self, lr):
        """omega's lr, or one per adapted variable: lr * exp(learned rate)."""
        if self.rates is None:
            return lr
        multipliers = tf.exp(tf.gather(self.rates, self._adapted_idx))
        return tf.unstack(lr * multipliers, num=len(self._adapted_idx))

    def outer_gradient(self, state, images, masks, seed):
        """d loss / d `outer_variables` on `images` at `state` (training
        mode): MTL's first-order outer gradient of the scaling and shifting
        at the adapted base learner (float16: loss-scaled as `step`)."""
        outer = [v.value for v in self.outer_variables]
        non_trainable = self._non_trainable_values(state.stats, seed)

        def at(scale):
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(outer)
                logits, _ = self.model.stateless_call(
                    self._full_trainable(state.trainable, outer), non_trainable,
                    images, training=True)
                loss = self.loss_fn(masks, logits, list(state.trainable))
                scaled = loss if scale is None else loss * scale
            grads = [tf.zeros_like(x) if g is None else g for x, g in
                     zip(outer, tape.gradient(scaled, outer))]
            if scale is None:
                return grads, tf.constant(True)
            grads = [g / scale for g in grads]
            return grads, tf.reduce_all([tf.reduce_all(tf.math.is_finite(g))
                                         for g in grads])

        return self._loss_scaled(at)

    def loss(self, state, images, masks, seed):
        """The training-mode loss of `images` under `state`, no update
        (differentiable with respect to `state.trainable`: MAML's meta-loss)."""
        non_trainable = self._non_trainable_values(state.stats, seed)
        logits, _ = self.model.stateless_call(
            self._full_trainable(state.trainable), non_trainable, images,
            training=True)
        return self.loss_fn(masks, logits, list(state.trainable))

    def adapt_unrolled(self, images, masks, lr, steps, seed, start):
        """`adapt` (on tensors, no restore) with a static Python step count,
        unrolled: the same updates, minibatches and seeds, and an outer
        GradientTape can differentiate the result with respect to `start`
        through every step (second-order MAML). Returns the AdaptState."""
        seed = tf.cast(seed, tf.int32)
        lr = tf.cast(lr, tf.float32)
        order = seeded_permutation(tf.shape(images)[0], seed)
        anchor = list(start.trainable) if self.consensus else None
        state = start
        for t in range(int(steps)):
            x, y = self._minibatch(images, masks, order, t)
            step_seed = tf.random.experimental.stateless_fold_in(seed, t)
            state, _ = self.step(state, x, y, lr, t, step_seed, anchor)
        return state

    def predict(self, state, images, seed=(0, 0)):
        """`predict_fn(logits)` of `images` under `state` (inference)."""
        non_trainable = self._non_trainable_values(
            state.stats, tf.constant(seed, tf.int32)
            if not isinstance(seed, tf.Tensor) else seed
        )
        logits, _ = self.model.stateless_call(
            self._full_trainable(state.trainable), non_trainable, images,
            training=False,
        )
        return logits if self.predict_fn is None else self.predict_fn(logits)

    # ------------------------------------------------------------------ loop
    def _minibatch(self, images, masks, order, t):
        """Minibatch t: min(batch_size, n) examples of the permutation `order`.

        With a static support size n (training, evaluation) the batch size
        is static; with a dynamic one (a served few-shot request) it is
        computed in the graph, with the same value for the same n.
        """
        n = images.shape[0]
        if n is None:
            n = tf.shape(images)[0]
            b = tf.minimum(self.batch_size, n)
        else:
            b = min(self.batch_size, n)
        idx = tf.gather(order, tf.math.floormod(t * b + tf.range(b), n))
        return tf.gather(images, idx), tf.gather(masks, idx)

    def adapt(self, images, masks, lr, steps, seed, start=None, first_step=0,
              restore=True, anchor=None):
        """Runs U: `steps` inner updates over the support set.

        Minibatches walk through a seeded permutation of the support set
        (without replacement within a pass, as SR's Reptile).

        Args:
            images: float32 [n, S, S, 3] support images (n static).
            masks: [n, S, S, 1] support masks.
            lr: Scalar learning rate (tensor or float).
            steps: Scalar number of steps (tensor: no retracing per value).
            seed: int32 [2] task seed.
            start: AdaptState to start from; None = current variables.
            first_step: Index of the first step: minibatch position, step
                seed and optimizer bias correction continue from it, so
                adapt(a steps) then adapt(b steps, first_step=a) from its
                result equals adapt(a + b steps).
            restore: False leaves the adapted values in the model's
                variables (classical training, `--mode=adapt`): in place
                they are simply not restored; on tensors they are assigned
                once at the end.
            anchor: theta of the consensus penalty (None: `start`'s
                weights, i.e. where this adaptation begins).

        Returns:
            (AdaptState after adaptation, mean inner loss over the steps).
        """
        seed = tf.cast(seed, tf.int32)
        lr = tf.cast(lr, tf.float32)
        steps = tf.cast(steps, tf.int32)
        order = seeded_permutation(tf.shape(images)[0], seed)
        if start is None:
            start = self.initial_state()
        if anchor is None and self.consensus:
            anchor = list(start.trainable)
        if self.in_place:
            return self._adapt_in_place(
                images, masks, lr, steps, seed, start, first_step, order,
                restore, anchor)

        def body(t, state, loss_sum):
            i = t + first_step
            x, y = self._minibatch(images, masks, order, i)
            step_seed = tf.random.experimental.stateless_fold_in(seed, i)
            state, loss = self.step(state, x, y, lr, i, step_seed, anchor)
            return t + 1, state, loss_sum + loss

        _, state, loss_sum = tf.while_loop(
            lambda t, *_: t < steps, body,
            (tf.constant(0), start, tf.constant(0.0)),
        )
        if not restore:
            weights_lib.restore(self.trainable_variables, state.trainable)
            weights_lib.restore(self.stat_variables, state.stats)
        return state, loss_sum / tf.maximum(tf.cast(steps, tf.float32), 1.0)

    def _adapt_in_place(self, images, masks, lr, steps, seed, start,
                        first_step, order, restore, anchor):
        variables = self.model.variables
        saved = weights_lib.snapshot(variables) if restore else None
        trainable_vars = self.trainable_variables
        stat_vars = self.stat_variables
        weights_lib.restore(trainable_vars, start.trainable)
        weights_lib.restore(stat_vars, start.stats)

        def body(t, opt, loss_sum):
            state = AdaptState(
                [v.value for v in trainable_vars],
                [v.value for v in stat_vars],
                opt,
            )
            i = t + first_step
            x, y = self._minibatch(images, masks, order, i)
            step_seed = tf.random.experimental.stateless_fold_in(seed, i)
            state, loss = self.step(state, x, y, lr, i, step_seed, anchor)
            weights_lib.restore(trainable_vars, state.trainable)
            weights_lib.restore(stat_vars, state.stats)
            return t + 1, state.opt, loss_sum + loss

        _, opt, loss_sum = tf.while_loop(
            lambda t, *_: t < steps, body,
            (tf.constant(0), start.opt, tf.constant(0.0)),
        )
        adapted = AdaptState(
            weights_lib.snapshot(trainable_vars),
            weights_lib.snapshot(stat_vars),
            opt,
        )
        if restore:
            weights_lib.restore(variables, saved)
        return adapted, loss_sum / tf.maximum(tf.cast(steps, tf.float32), 1.0)
