"""Meta-update identities and trace counts of the compiled steps."""

import dataclasses

import keras
import numpy as np
import tensorflow as tf
import pytest
from absl.testing import parameterized

from efficientlab_tf.config import MetaConfig
from efficientlab_tf import segmentation
from efficientlab_tf.meta import fomaml
from efficientlab_tf.meta.adapter import seeded_permutation
from efficientlab_tf.meta.learner import MetaLearner
from efficientlab_tf.meta.learner import linear_meta_step
from efficientlab_tf.model.losses import segmentation_loss
from tests import helpers

SEED = tf.constant([3, 4])


def learner_for(algo, meta_batch=1, bn_mode="running", **kwargs):
    model = helpers.tiny_efficientlab(bn_mode=bn_mode)
    config = MetaConfig(algo=algo, train_shots=4, foml_tail=2, inner_iters=3,
                        inner_batch=2, inner_lr=0.05, meta_batch=meta_batch,
                        **kwargs)
    return MetaLearner(model, config, segmentation.task_fns(config.weight_decay),
                       bn_mode=bn_mode)


@pytest.mark.slow  # Over 7 s on the 2-core VM: not in the fast tier.
class XLATest(tf.test.TestCase):

    def test_meta_step_under_xla_equals_the_graph_one(self):
        # --jit_compile: every op of the meta step has an XLA kernel (the
        # seeded permutation is argsort of Philox keys). Without dropout the
        # two compilations compute the same numbers up to float rounding;
        # Keras draws dropout noise with an auto-selected generator that
        # differs under XLA, so with dropout they agree only in distribution.
        weights = {}
        for jit in (False, True):
            keras.utils.set_random_seed(0)
            model = helpers.tiny_efficientlab(bn_mode="batch", dropout=0.0)
            config = MetaConfig(algo="fomaml", train_shots=4, foml_tail=2,
                                inner_iters=3, inner_batch=2, inner_lr=0.05,
                                meta_batch=2)
            learner = MetaLearner(model, config,
                                  segmentation.task_fns(config.weight_decay),
                                  bn_mode="batch", jit_compile=jit)
            out = learner.meta_step(helpers.random_task(meta_batch=2),
                                    tf.constant(0.5), SEED)
            self.assertTrue(bool(out["finite"]))
            weights[jit] = [v.numpy() for v in model.trainable_variables]
        for a, b in zip(weights[False], weights[True]):
            self.assertAllClose(a, b, atol=1e-5)


    def test_evaluation_under_xla_equals_the_graph_one(self):
        # --jit_compile reaches evaluation (eval_task, an omega's eval_fn)
        # and UHO's stepper: same adaptation, same query probabilities up to
        # float rounding, and the model's weights are left untouched.
        task = helpers.random_task(shots=4, query=2)
        out = {}
        for jit in (False, True):
            keras.utils.set_random_seed(0)
            model = helpers.tiny_efficientlab(bn_mode="batch", dropout=0.0)
            config = MetaConfig(algo="fomaml", train_shots=4, foml_tail=2,
                                inner_iters=3, inner_batch=2, inner_lr=0.05)
            learner = MetaLearner(model, config,
                                  segmentation.task_fns(config.weight_decay),
                                  bn_mode="batch", jit_compile=jit)
            before = helpers.variable_values(model)
            args = (task.support_images, task.support_masks,
                    task.query_images, task.query_masks, tf.constant(0.05),
                    tf.constant(4), SEED)
            iou, probs = learner.eval_task(*args)
            iou3, probs3 = learner.eval_fn(dataclasses.replace(config.omega, batch_size=3))(*args)
            start, advance = learner.stepper(config.omega)
            state, pre = start(task.query_images, task.query_masks)
            state, post = advance(task.support_images, task.support_masks,
                                  task.query_images, task.query_masks, state,
                                  tf.constant(0.05), tf.constant(0), tf.constant(1),
                                  SEED)
            for b, a in zip(before, helpers.variable_values(model)):
                np.testing.assert_array_equal(a, b)
            out[jit] = [iou, probs, iou3, probs3, pre, post]
        graph, xla = out[False], out[True]
        # Adaptation moved the prediction, so the comparison has teeth.
        self.assertGreater(float(tf.reduce_max(tf.abs(graph[1] - graph[3]))), 1e-4)
        for a, b in zip(graph, xla):
            self.assertAllClose(a, b, atol=1e-5)


class LearnerTest(tf.test.TestCase, parameterized.TestCase):

    def test_reptile_meta_step_zero_leaves_weights(self):
        learner = learner_for("reptile", meta_batch=2)
        before = helpers.variable_values(learner.model)
        learner.meta_step(helpers.random_task(meta_batch=2), tf.constant(0.0), SEED)
        for b, a in zip(before, helpers.variable_values(learner.model)):
            np.testing.assert_array_equal(a, b)

    def test_reptile_meta_step_one_is_the_adapted_weights(self):
        learner = learner_for("reptile", meta_batch=1)
        task = helpers.random_task(meta_batch=1)
        # The meta step adapts task 0 with seed fold_in(SEED, 0).
        task_seed = tf.random.experimental.stateless_fold_in(SEED, 0)
        adapted, _ = learner.adapter.adapt(
            task.support_images[0], task.support_masks[0], 0.05, 3, task_seed)
        learner.meta_step(task, tf.constant(1.0), SEED)
        for v, a in zip(learner.adapter.trainable_variables, adapted.trainable):
            self.assertAllClose(v.numpy(), a.numpy(), rtol=1e-6, atol=1e-7)
        for v, a in zip(learner.adapter.stat_variables, adapted.stats):
            self.assertAllClose(v.numpy(), a.numpy(), rtol=1e-6, atol=1e-7)

    def test_fomaml_direction_is_tail_step_on_detached_weights(self):
        learner = learner_for("fomaml", meta_batch=1, weight_decay=0.0)
        adapter = learner.adapter
        task = helpers.random_task(meta_batch=1)
        images, masks = task.support_images[0], task.support_masks[0]
        task_seed = tf.random.experimental.stateless_fold_in(SEED, 0)
        theta = [v.numpy() for v in adapter.trainable_variables]
        theta_tr, _ = adapter.adapt(images[:2], masks[:2], 0.05, 2, task_seed)
        # Recompute the tail step by hand on a detached copy of theta_tr:
        # one SGD step on the 2 tail shots with the same dropout seed.
        detached = [tf.constant(w.numpy()) for w in theta_tr.trainable]
        # (the tail step is step index 2 of 3: its dropout seed folds in 2;
        # its minibatch is the 2 tail shots in the seeded order of the tail
        # adaptation, so each image meets the same dropout noise)
        tail_task_seed = tf.random.experimental.stateless_fold_in(
            task_seed, fomaml.D_VAL_SEED_TAG)
        tail_seed = tf.random.experimental.stateless_fold_in(tail_task_seed, 2)
        order = seeded_permutation(2, tail_task_seed)
        tail_images = tf.gather(images[2:], order)
        tail_masks = tf.gather(masks[2:], order)
        non_trainable = adapter._non_trainable_values(theta_tr.stats, tail_seed)
        with tf.GradientTape() as tape:
            tape.watch(detached)
            logits, _ = learner.model.stateless_call(
                detached, non_trainable, tail_images, training=True)
            loss = segmentation_loss(tail_masks, logits, detached, 0.0)
        grads = tape.gradient(loss, detached)
        learner.meta_step(task, tf.constant(1.0), SEED)
        for v, w, g in zip(adapter.trainable_variables, theta, grads):
            # meta_step = 1: theta' = theta + (theta_val - theta_tr)
            #                       = theta - lr * grad(theta_tr; D_val).
            self.assertAllClose(v.numpy() - w, -0.05 * g.numpy(),
                                rtol=1e-4, atol=1e-6)

    @parameterized.parameters("fomaml", "reptile")
    def test_meta_step_traces_once(self, algo):
        learner = learner_for(algo, meta_batch=2)
        for i in range(2):
            out = learner.meta_step(helpers.random_task(meta_batch=2, seed=i),
                                    tf.constant(0.5 / (i + 1)),
                                    tf.constant([0, i]))
        self.assertEqual(learner.meta_step.experimental_get_tracing_count(), 1)
        self.assertGreaterEqual(float(out["post_adapt_query_iou"]), 0.0)

    def test_eval_task_traces_once_and_restores(self):
        learner = learner_for("fomaml")
        before = helpers.variable_values(learner.model)
        for i, (lr, steps) in enumerate([(0.05, 2), (0.01, 0), (0.1, 5)]):
            task = helpers.random_task(seed=i)
            iou, probs = learner.eval_task(*task, tf.constant(lr),
                                           tf.constant(steps),
                                           tf.constant([0, i]))
            self.assertEqual(iou.shape, (2,))
            self.assertEqual(probs.shape, (2, 32, 32))
        self.assertEqual(learner.eval_task.experimental_get_tracing_count(), 1)
        for b, a in zip(before, helpers.variable_values(learner.model)):
            np.testing.assert_array_equal(a, b)

    def test_adam_meta_optimizer_moves_against_negative_direction(self):
        learner = learner_for("reptile", meta_optimizer="adam")
        before = [v.numpy() for v in learner.adapter.trainable_variables]
        task = helpers.random_task(meta_batch=1)
        task_seed = tf.random.experimental.stateless_fold_in(SEED, 0)
        adapted, _ = learner.adapter.adapt(
            task.support_images[0], task.support_masks[0], 0.05, 3, task_seed)
        learner.meta_step(task, tf.constant(0.01), SEED)
        # First Adam step: each weight moves by ~lr * sign(direction).
        for v, w, a in zip(learner.adapter.trainable_variables, before,
                           adapted.trainable):
            d = a.numpy() - w
            big = np.abs(d) > 1e-3  # Keras Adam epsilon (1e-7) is negligible here.
            self.assertAllClose((v.numpy() - w)[big], 0.01 * np.sign(d[big]),
                                atol=1e-4)

    def test_linear_annealing(self):
        cfg = MetaConfig(meta_step=0.1, meta_step_final=0.0, meta_iters=100)
        self.assertAllClose(linear_meta_step(cfg, 0), 0.1)
        self.assertAllClose(linear_meta_step(cfg, 50), 0.05)
        self.assertAllClose(linear_meta_step(cfg, 100), 0.0)
        cfg = dataclasses.replace(cfg, meta_step_final=1e-5)
        self.assertAllClose(linear_meta_step(cfg, 200), 1e-5)


class StepperTest(tf.test.TestCase):

    def test_stepping_matches_eval_task_at_every_step_count(self):
        # UHO's early stopping advances tasks one step at a time; after t
        # steps the score equals one t-step adaptation (eval_task).
        learner = learner_for("fomaml")
        task = helpers.random_task(seed=5)
        seed = tf.constant([1, 1])
        start_fn, advance_fn = learner.stepper(learner.omega)
        state, score = start_fn(task.query_images, task.query_masks)
        curve = [float(score)]
        for t in range(4):
            state, score = advance_fn(*task, state, tf.constant(0.1),
                                      tf.constant(t), tf.constant(1), seed)
            curve.append(float(score))
        for steps in (0, 2, 4):
            iou, _ = learner.eval_task(*task, tf.constant(0.1),
                                       tf.constant(steps), seed)
            self.assertAllClose(curve[steps], tf.reduce_mean(iou), atol=1e-4)
        # Several steps at once (the adaptation curve's jumps): 1 then 3.
        state, _ = start_fn(task.query_images, task.query_masks)
        state, _ = advance_fn(*task, state, tf.constant(0.1), tf.constant(0),
                              tf.constant(1), seed)
        _, score = advance_fn(*task, state, tf.constant(0.1), tf.constant(1),
                              tf.constant(3), seed)
        self.assertAllClose(float(score), curve[4], atol=1e-4)
        self.assertEqual(advance_fn.experimental_get_tracing_count(), 1)
        self.assertIs(learner.stepper(learner.omega)[1], advance_fn)  # Compiled once.
