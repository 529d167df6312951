"""--precision: mixed policies compute the network in 16 bits, while the
weights, the adaptation math and the meta-update stay float32."""

import tempfile

import keras
import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from efficientlab_tf import segmentation
from efficientlab_tf.config import MetaConfig
from efficientlab_tf.export.saved_model import export_saved_model
from efficientlab_tf.meta.adapter import FLOAT16_LOSS_SCALE
from efficientlab_tf.meta.learner import MetaLearner
from efficientlab_tf.model.efficientlab import build_efficientlab
from efficientlab_tf.model.efficientlab import dtype_policy
from tests import helpers

CONFIG = MetaConfig(algo="fomaml", train_shots=4, foml_tail=2, inner_iters=3,
                    inner_batch=2, inner_lr=0.05, meta_batch=2)


def tiny(precision, weights=None):
    """The tests' tiny EfficientLab under `precision` (encoder included);
    no dropout: its noise is drawn in the compute dtype, so the masks of
    the two precisions differ."""
    config = helpers.tiny_config(bn_mode="running", dropout=0.0)
    with dtype_policy(precision):
        encoder = helpers.tiny_encoder(config.image_size)
    model = build_efficientlab(config, encoder=encoder, precision=precision)
    if weights is not None:
        model.set_weights(weights)
    return model


def one_step_direction(model, task):
    adapter = segmentation.build_adapter(model, CONFIG.omega, CONFIG.weight_decay)
    start = adapter.initial_state()
    state, loss = tf.function(lambda: adapter.step(
        start, task.support_images[:2], task.support_masks[:2], 1.0, 0,
        tf.constant([1, 2])))()
    return [a - b for a, b in zip(state.trainable, start.trainable)], loss, adapter


class PrecisionTest(tf.test.TestCase, parameterized.TestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        keras.utils.set_random_seed(0)
        cls.weights = tiny("float32").get_weights()
        cls.task = helpers.random_task(shots=4, query=2)

    @parameterized.parameters("mixed_bfloat16", "mixed_float16")
    def test_policy_keeps_float32_weights_and_16_bit_compute(self, precision):
        model = tiny(precision, self.weights)
        self.assertTrue(all(v.dtype == "float32" for v in model.variables
                            if "seed" not in v.path))
        logits = model(self.task.support_images[:1])
        self.assertEqual(logits.dtype, precision.split("_")[1])
        self.assertEqual(keras.config.dtype_policy().name, "float32")  # Restored.

    @parameterized.parameters(("mixed_bfloat16", 0.15), ("mixed_float16", 0.03))
    def test_inner_step_matches_float32(self, precision, tolerance):
        # The gradient step, taken in float32 on float32 weights, from a
        # 16-bit forward/backward pass: relative error of the whole update
        # vector within what the format's mantissa allows through a
        # network's worth of rounding (measured: bfloat16, 8 bits, 0.078;
        # float16, 11 bits, 0.010). float16 also scales the loss by 1024 and
        # divides it out of the gradients (forgetting to would be off by
        # 1023x; no loss scale at all underflows small gradients).
        ref, ref_loss, _ = one_step_direction(tiny("float32", self.weights),
                                              self.task)
        got, loss, adapter = one_step_direction(tiny(precision, self.weights),
                                                self.task)
        self.assertEqual(adapter.loss_scale, FLOAT16_LOSS_SCALE
                         if precision == "mixed_float16" else 1.0)
        self.assertTrue(all(g.dtype == tf.float32 for g in got))
        ref_vec = np.concatenate([r.numpy().ravel() for r in ref])
        got_vec = np.concatenate([g.numpy().ravel() for g in got])
        rel = np.linalg.norm(got_vec - ref_vec) / np.linalg.norm(ref_vec)
        self.assertLess(rel, tolerance)
        self.assertGreater(np.linalg.norm(ref_vec), 0.0)
        self.assertAllClose(loss, ref_loss, rtol=0.02)

    def test_bfloat16_meta_step_matches_float32(self):
        moved = {}
        for precision in ("float32", "mixed_bfloat16"):
            model = tiny(precision, self.weights)
            learner = MetaLearner(model, CONFIG,
                                  segmentation.task_fns(CONFIG.weight_decay))
            out = learner.meta_step(helpers.random_task(meta_batch=2),
                                    tf.constant(1.0), tf.constant([3, 4]))
            self.assertTrue(bool(out["finite"]))
            moved[precision] = np.concatenate(
                [(a - b).ravel() for a, b in
                 zip(model.get_weights(), self.weights)])
        ref = moved["float32"]
        rel = np.linalg.norm(moved["mixed_bfloat16"] - ref) / np.linalg.norm(ref)
        self.assertLess(rel, 0.1)

    def test_mixed_model_exports_float32_probabilities(self):
        model = tiny("mixed_bfloat16", self.weights)
        path = export_saved_model(model, tempfile.mkdtemp(), 32, warmup=False)
        images = tf.constant(np.random.RandomState(0).randint(
            0, 256, (1, 32, 32, 3)), tf.uint8)
        probs = tf.saved_model.load(path).signatures["serving_default"](
            images=images)["probabilities"]
        self.assertEqual(probs.dtype, tf.float32)
        ref = tf.nn.softmax(tf.cast(tiny("float32", self.weights)(
            tf.cast(images, tf.float32)), tf.float32))[..., 1]
        self.assertAllClose(probs, ref, atol=0.05)


class Float16OverflowTest(tf.test.TestCase):
    """Issue 24.6: float16 gradients that overflow at the loss scale are not
    applied; the scale halves and the step is taken again (Keras
    LossScaleOptimizer's skip-and-halve, per step), instead of a NaN that
    stops training or, in evaluation and serving, passes silently."""

    def setUp(self):
        super().setUp()
        from efficientlab_tf.meta import inner_opt
        from efficientlab_tf.meta.adapter import Adapter

        def build(precision):
            keras.utils.set_random_seed(0)
            with dtype_policy(precision):
                x = keras.Input((4,))
                model = keras.Model(x, keras.layers.Dense(1, name="d")(x))
            model.get_layer("d").set_weights(
                [np.full((4, 1), 0.1, np.float32), np.zeros(1, np.float32)])
            return model

        # dL/dlogits = 100 per example: x 1024 it is 102,400 in the float16
        # backward pass, above float16's largest value (65,504): inf. At
        # scale 512 it is 51,200: finite.
        def loss(targets, logits, weights):
            del targets, weights
            return 100.0 * tf.reduce_sum(tf.cast(logits, tf.float32))

        self.adapters = {p: Adapter(build(p), loss, inner_opt.SGD(), batch_size=2)
                         for p in ("float32", "mixed_float16")}
        self.x = tf.constant([[1.0, 2.0, 3.0, 4.0], [0.5, 0.5, 0.5, 0.5]])
        self.y = tf.zeros([2, 1])

    def test_overflowing_step_is_retried_at_half_the_scale(self):
        fp16 = self.adapters["mixed_float16"]
        start = fp16.initial_state()
        seed = tf.constant([0, 0])
        # The old static scale: the step's gradients are inf.
        (_, _), finite = fp16._step_at(start, self.x, self.y, 0.001, 0, seed,
                                       None, tf.constant(1024.0))
        self.assertFalse(bool(finite))
        state, loss = fp16.step(start, self.x, self.y, 0.001, 0, seed)
        ref_start = self.adapters["float32"].initial_state()
        ref, ref_loss = self.adapters["float32"].step(
            ref_start, self.x, self.y, 0.001, 0, seed)
        # By hand: dL/dW = 100 * sum of the inputs = [150, 250, 350, 450].
        self.assertAllClose(ref.trainable[0][:, 0],
                            0.1 - 0.001 * np.array([150, 250, 350, 450]))
        for got, want in zip(state.trainable, ref.trainable):
            self.assertTrue(bool(tf.reduce_all(tf.math.is_finite(got))))
            self.assertAllClose(got, want, rtol=1e-3, atol=1e-4)
        self.assertAllClose(loss, ref_loss, rtol=1e-2)
        # A whole adaptation takes all its steps and stays finite.
        adapted, _ = tf.function(lambda: fp16.adapt(
            self.x, self.y, 0.001, 3, seed))()
        reference, _ = self.adapters["float32"].adapt(self.x, self.y, 0.001, 3, seed)
        self.assertAllClose(adapted.trainable[0], reference.trainable[0], rtol=1e-3)

    def test_maml_refuses_float16(self):
        from efficientlab_tf.config import ExperimentConfig

        with self.assertRaisesRegex(ValueError, "--algo=maml .* --precision=mixed_bfloat16"):
            ExperimentConfig.build("demo", algo="maml", precision="mixed_float16")
