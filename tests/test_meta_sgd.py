"""Learned inner learning rates (--learned_lr, Meta-SGD / LSLR): the step
uses them, FOMAML gives them a gradient (checked by the formula from an
independent adaptation), and the exported few_shot signature uses them."""

import dataclasses
import os
import tempfile

import numpy as np
import tensorflow as tf

from efficientlab_tf import segmentation
from efficientlab_tf.config import ExperimentConfig
from efficientlab_tf.config import MetaConfig
from efficientlab_tf.config import Omega
from efficientlab_tf.experiment import load_model_weights
from efficientlab_tf.export.saved_model import export_saved_model
from efficientlab_tf.meta import fomaml
from efficientlab_tf.model.efficientlab import inner_rates
from efficientlab_tf.model.losses import segmentation_loss
from tests import helpers

LR = 0.1


def rated_model():
    tf.keras.utils.set_random_seed(0)
    return helpers.tiny_efficientlab(bn_mode="batch", dropout=0.0,
                                     learned_lr=True)


class LearnedRatesTest(tf.test.TestCase):

    def test_model_carries_one_rate_per_trainable_variable(self):
        model = rated_model()
        plain = helpers.tiny_efficientlab(bn_mode="batch", dropout=0.0)
        rates = inner_rates(model)
        self.assertIsNone(inner_rates(plain))
        self.assertEqual(rates.shape, (len(plain.trainable_variables),))
        self.assertLen(model.trainable_variables, len(plain.trainable_variables))
        self.assertAllEqual(rates, np.zeros(rates.shape))

    def test_step_uses_lr_times_exp_rate_per_variable(self):
        model = rated_model()
        rates = inner_rates(model)
        log_rates = np.linspace(-1.0, 1.0, rates.shape[0]).astype(np.float32)
        rates.assign(log_rates)
        adapter = segmentation.build_adapter(model, Omega())
        self.assertNotIn(id(rates), [id(v) for v in adapter.stat_variables])
        task = helpers.random_task(shots=2)
        new, _ = adapter.step(adapter.initial_state(), task.support_images,
                              task.support_masks, LR, 0, tf.constant([0, 0]))
        variables = model.trainable_variables
        with tf.GradientTape() as tape:
            loss = segmentation_loss(task.support_masks,
                                     model(task.support_images, training=True),
                                     variables, 5e-4)
        grads = tape.gradient(loss, variables)
        for i, (got, v, g) in enumerate(zip(new.trainable, variables, grads)):
            self.assertAllClose(got, v - LR * np.exp(log_rates[i]) * g,
                                rtol=1e-5, atol=1e-7)

    def test_fomaml_meta_step_moves_the_rates_by_the_first_order_rule(self):
        model = rated_model()
        cfg = dataclasses.replace(
            ExperimentConfig(), model=helpers.tiny_config(
                bn_mode="batch", dropout=0.0, learned_lr=True),
            meta=MetaConfig(train_shots=4, foml_tail=2, inner_iters=3,
                            inner_batch=2, inner_lr=LR, meta_batch=1,
                            learned_lr_step=0.5))
        learner = segmentation.build_learner(model, cfg)
        tasks = helpers.random_task(shots=4, meta_batch=1)
        seed = tf.constant([2, 3])
        # Independently: the task's FOMAML directions and the rule
        # d L / d log r_i = <theta_tr - theta_val, theta_tr - theta>_i / lr.
        adapter = learner.adapter
        start = adapter.initial_state()
        direction, _, theta_val, _ = fomaml.meta_gradient(
            adapter, tasks.support_images[0], tasks.support_masks[0], LR, 3, 2,
            tf.random.experimental.stateless_fold_in(seed, 0), start)
        expected = []
        for d, val, theta in zip(direction, theta_val.trainable, start.trainable):
            theta_tr = val - d
            expected.append(float(tf.reduce_sum(-d * (theta_tr - theta))) / LR)
        expected = -0.5 * 0.8 * np.array(expected)  # -step * meta_lr * grad
        learner.meta_step(tasks, tf.constant(0.8), seed)
        got = inner_rates(model).numpy()
        self.assertAllClose(got, expected, rtol=1e-4, atol=1e-9)
        self.assertGreater(np.count_nonzero(got), len(got) // 2)

    def test_checkpoints_between_models_with_and_without_rates(self):
        # A run without rates warm-starts a --learned_lr model (rates stay
        # 1); a --learned_lr run refuses to load into a model without them.
        folder = tempfile.mkdtemp()
        rated = rated_model()
        inner_rates(rated).assign(np.ones(inner_rates(rated).shape, np.float32))
        rated_prefix = tf.train.Checkpoint(model=rated).save(folder + "/rated")
        plain = helpers.tiny_efficientlab(bn_mode="batch", dropout=0.0)
        plain_prefix = tf.train.Checkpoint(model=plain).save(folder + "/plain")
        with self.assertRaisesRegex(ValueError, "--learned_lr"):
            load_model_weights(helpers.tiny_efficientlab(bn_mode="batch"),
                               rated_prefix)
        target = rated_model()
        load_model_weights(target, plain_prefix)
        self.assertAllEqual(inner_rates(target), np.zeros(inner_rates(target).shape))
        for a, b in zip(target.trainable_variables, plain.trainable_variables):
            self.assertAllEqual(a, b)
        load_model_weights(target, rated_prefix)
        self.assertAllEqual(inner_rates(target), np.ones(inner_rates(target).shape))

    def test_config_refuses_reptile_and_adam(self):
        base = ExperimentConfig()
        model = dataclasses.replace(base.model, learned_lr=True)
        with self.assertRaisesRegex(ValueError, "learned_lr"):
            dataclasses.replace(base, model=model, meta=MetaConfig(
                algo="reptile", foml_tail=None))
        with self.assertRaisesRegex(ValueError, "learned_lr"):
            dataclasses.replace(base, model=model,
                                meta=MetaConfig(inner_optimizer="adam"))

    def test_few_shot_signature_uses_the_rates(self):
        model = rated_model()
        inner_rates(model).assign(np.full(inner_rates(model).shape, np.log(3.0),
                                          np.float32))
        adapter = segmentation.build_adapter(model, Omega(batch_size=2))
        path = export_saved_model(model, os.path.join(tempfile.mkdtemp(), "m"),
                                  image_size=32, few_shot_adapter=adapter,
                                  omega=Omega(lr=LR, steps=2))
        loaded = tf.saved_model.load(path)
        rng = np.random.RandomState(0)
        support = tf.constant(rng.randint(0, 256, (2, 32, 32, 3)), tf.uint8)
        masks = tf.constant((rng.uniform(size=(2, 32, 32)) > 0.5) * 255, tf.uint8)
        query = tf.constant(rng.randint(0, 256, (1, 32, 32, 3)), tf.uint8)
        out = loaded.signatures["few_shot"](support_images=support,
                                            support_masks=masks,
                                            query_images=query)["probabilities"]

        def adapted(lr):
            state, _ = adapter.adapt(tf.cast(support, tf.float32),
                                     tf.cast(masks[..., None] > 0, tf.float32),
                                     lr, 2, tf.constant([0, 0]))
            return adapter.predict(state, tf.cast(query, tf.float32))

        self.assertAllClose(out, adapted(LR), atol=1e-4)
        # Rates of 3 = omega's lr times 3 on a model without rates.
        plain = helpers.tiny_efficientlab(bn_mode="batch", dropout=0.0)
        for a, b in zip(plain.variables, [v for v in model.variables
                                          if v is not inner_rates(model)]):
            a.assign(b)
        plain_adapter = segmentation.build_adapter(plain, Omega(batch_size=2))
        state, _ = plain_adapter.adapt(tf.cast(support, tf.float32),
                                       tf.cast(masks[..., None] > 0, tf.float32),
                                       3 * LR, 2, tf.constant([0, 0]))
        self.assertAllClose(out, plain_adapter.predict(
            state, tf.cast(query, tf.float32)), atol=1e-4)


if __name__ == "__main__":
    tf.test.main()
