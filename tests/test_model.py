"""EfficientLab: shapes, decoder variants, serialization, encoder endpoints."""

import os
import tempfile

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl.testing import parameterized

from efficientlab_tf.config import ModelConfig
from efficientlab_tf.model import encoder as encoder_lib
from efficientlab_tf.model.efficientlab import build_efficientlab
from efficientlab_tf.model.layers import ASPP
from efficientlab_tf.model.layers import BatchNorm
from tests import helpers


class EfficientLabTest(tf.test.TestCase, parameterized.TestCase):

    @parameterized.parameters("rsd", "rsd_3_6", "rsd_no_residual", "none", "aspp")
    def test_output_shape_and_config_round_trip(self, decoder):
        model = helpers.tiny_efficientlab(decoder=decoder)
        x = tf.random.uniform((2, 32, 32, 3), 0, 255)
        y = model(x, training=False)
        self.assertEqual(y.shape, (2, 32, 32, 2))
        clone = keras.Model.from_config(model.get_config())
        clone.set_weights(model.get_weights())
        self.assertAllClose(clone(x, training=False), y, atol=1e-5)

    def test_decoder_variants_differ_in_parameters(self):
        counts = {d: helpers.tiny_efficientlab(decoder=d).count_params()
                  for d in ("rsd", "rsd_3_6", "rsd_no_residual", "none")}
        # No decoder < RSD without the residual projection < RSD < two RSDs.
        self.assertLess(counts["none"], counts["rsd_no_residual"])
        self.assertLess(counts["rsd_no_residual"], counts["rsd"])
        self.assertLess(counts["rsd"], counts["rsd_3_6"])

    def test_aspp_by_hand(self):
        # One input channel, constant 2, filters 1, one dilated branch (rate
        # 1 here so the 3x3 sees 9 inputs at the centre). Fresh batch norm at
        # inference divides by s = sqrt(1 + eps). Centre pixel:
        #   1x1: 0.5 * 2 = 1.0;  3x3: 9 * 0.1 * 2 = 1.8;  pool: 0.25 * 2 = 0.5
        #   each / s, ReLU; projection with ones: 3.3 / s; its BN: / s again.
        layer = ASPP(filters=1, rates=(1,))
        x = tf.fill([1, 5, 5, 1], 2.0)
        layer.build(x.shape)
        layer.convs[0].kernel.assign(tf.fill([1, 1, 1, 1], 0.5))
        layer.convs[1].kernel.assign(tf.fill([3, 3, 1, 1], 0.1))
        layer.pool_proj.kernel.assign(tf.fill([1, 1, 1, 1], 0.25))
        layer.project.kernel.assign(tf.ones([1, 1, 3, 1]))
        eps = layer.bns[0].epsilon
        y = layer(x, training=False).numpy()
        self.assertAllClose(y[0, 2, 2, 0], 3.3 / (1 + eps), atol=1e-5)
        # A corner sees 4 of the 3x3's 9 inputs (zero padding): 0.8 instead of 1.8.
        self.assertAllClose(y[0, 0, 0, 0], 2.3 / (1 + eps), atol=1e-5)
        self.assertIn("aspp_stage6", [lyr.name for lyr in
                                      helpers.tiny_efficientlab(decoder="aspp").layers])

    def test_batch_stats_mode_uses_batch_statistics_at_inference(self):
        layer = BatchNorm(batch_stats=True)
        x = tf.constant(np.random.RandomState(0).normal(5, 3, (4, 2, 2, 3)),
                        tf.float32)
        layer.build(x.shape)
        y = layer(x, training=False).numpy()
        # Normalised with the batch's own moments (gamma=1, beta=0).
        mean = x.numpy().mean(axis=(0, 1, 2))
        std = np.sqrt(x.numpy().var(axis=(0, 1, 2)) + layer.epsilon)
        np.testing.assert_allclose(y, (x.numpy() - mean) / std, rtol=1e-4,
                                   atol=1e-4)
        # The moving averages were not touched in inference.
        np.testing.assert_array_equal(layer.moving_mean.numpy(), 0.0)
        plain = BatchNorm(batch_stats=False)
        plain.build(x.shape)
        np.testing.assert_allclose(plain(x, training=False).numpy(),
                                   x.numpy() / np.sqrt(1 + plain.epsilon),
                                   rtol=1e-5)

    def test_encoder_without_endpoints_is_rejected(self):
        images = keras.Input((32, 32, 3))
        bad = keras.Model(images, {"stage_2": keras.layers.Conv2D(4, 1)(images)})
        with self.assertRaisesRegex(ValueError, "must expose endpoints"):
            build_efficientlab(helpers.tiny_config(), encoder=bad)
        with self.assertRaisesRegex(TypeError, "must be a keras.Model"):
            build_efficientlab(helpers.tiny_config(), encoder="tiny")

    @parameterized.parameters(
        (dict(image_size=100), "multiple of 32"),
        (dict(decoder="deeplab"), "decoder"),
        (dict(encoder="resnet50"), "encoder"),
        (dict(bn_mode="frozen"), "bn_mode"),
        (dict(skip_stage=6, cut_stage=3), "skip_stage < cut_stage"),
    )
    def test_bad_model_config(self, kwargs, message):
        with self.assertRaisesRegex(ValueError, message):
            ModelConfig(**kwargs)

    def test_missing_weights_file(self):
        config = ModelConfig(image_size=32, encoder_weights="/nonexistent.h5")
        with self.assertRaisesRegex(FileNotFoundError, "/nonexistent.h5"):
            encoder_lib.build_encoder(config)

    def test_incompatible_weights_file(self):
        path = os.path.join(tempfile.mkdtemp(), "bad.weights.h5")
        helpers.tiny_encoder().save_weights(path)
        config = ModelConfig(image_size=32, encoder_weights=path)
        with self.assertRaisesRegex(encoder_lib.EncoderWeightsError,
                                    "does not fit encoder"):
            encoder_lib.build_encoder(config)


@pytest.mark.slow
class EfficientNetEncoderTest(tf.test.TestCase):

    def test_b0_endpoints_and_default_parameter_count(self):
        config = ModelConfig()  # B0, 224 px, RSD at stage 3: the paper's default.
        model = build_efficientlab(config)
        enc = model.get_layer("efficientnet_b0_encoder")
        self.assertEqual(enc.output["stage_3"].shape[1:], (56, 56, 24))
        self.assertEqual(enc.output["stage_6"].shape[1:], (14, 14, 112))
        self.assertEqual(model.output.shape[1:], (224, 224, 2))
        # Figure quoted in README.md ("Architecture").
        self.assertEqual(model.count_params(), EXPECTED_B0_PARAMS)

    def test_stochastic_depth_follows_the_reference_schedule(self):
        # Issue 24.3: block b of B drops rate * b / B (Keras's EfficientNet,
        # the EfficientNet reference and lite0.py), not `rate` everywhere.
        def drop_rates(model):
            return {l.name: l.rate for l in model.layers
                    if isinstance(l, keras.layers.Dropout) and l.name.endswith("_drop")}

        keras_b0 = drop_rates(keras.applications.EfficientNetB0(
            include_top=False, weights=None, input_shape=(32, 32, 3)))
        for rate in (0.2, 0.3):
            ours = drop_rates(encoder_lib.build_encoder(ModelConfig(
                image_size=32, cut_stage=8, drop_connect_rate=rate)))
            self.assertEqual(sorted(ours), sorted(keras_b0))
            for name, keras_rate in keras_b0.items():
                self.assertAllClose(ours[name], keras_rate * rate / 0.2)
        # By hand: B0 has 16 blocks; block2b is block 2 (0.2 * 2 / 16), the
        # last one, block7a, has no residual and so no drop.
        self.assertAllClose(keras_b0["block2b_drop"], 0.025)
        self.assertAllClose(keras_b0["block6d_drop"], 0.2 * 14 / 16)
        # Lite0: the same schedule over its 16 blocks.
        lite = drop_rates(encoder_lib.build_encoder(ModelConfig(
            encoder="efficientnet_lite0", image_size=32, cut_stage=8,
            drop_connect_rate=0.3)))
        self.assertAllClose(lite["block2b_drop"], 0.3 * 2 / 16)
        self.assertAllClose(lite["block6d_drop"], 0.3 * 14 / 16)
        self.assertLen(lite, len(keras_b0))

    def test_v2_encoder_endpoints(self):
        config = ModelConfig(encoder="efficientnet_v2_b0", image_size=64)
        model = build_efficientlab(config)
        enc = model.get_layer("efficientnet_v2_b0_encoder")
        self.assertEqual(enc.output["stage_3"].shape[1:3], (16, 16))
        self.assertEqual(enc.output["stage_6"].shape[1:3], (4, 4))
        self.assertEqual(model.output.shape[1:], (64, 64, 2))

    def test_stage_names_follow_the_efficientnet_paper(self):
        base = keras.applications.EfficientNetB0(
            include_top=False, weights=None, input_shape=(64, 64, 3))
        self.assertEqual(encoder_lib.stage_layer_name(base, 3), "block2b_add")
        self.assertEqual(encoder_lib.stage_layer_name(base, 6), "block5c_add")
        with self.assertRaisesRegex(ValueError, "stage 9 does not exist"):
            encoder_lib.stage_layer_name(base, 9)

    def test_weights_file_round_trip(self):
        config = ModelConfig(image_size=64)
        first = encoder_lib.build_encoder(config)
        path = os.path.join(tempfile.mkdtemp(), "enc.weights.h5")
        first.save_weights(path)
        import dataclasses
        second = encoder_lib.build_encoder(
            dataclasses.replace(config, encoder_weights=path))
        for a, b in zip(first.get_weights(), second.get_weights()):
            np.testing.assert_array_equal(a, b)


EXPECTED_B0_PARAMS = 1_391_913  # 1,374,626 trainable.


class ImageNetDownloadTest(tf.test.TestCase):

    def test_failed_download_is_one_clear_error(self):
        original = keras.applications.EfficientNetB0

        def offline(*args, weights=None, **kwargs):
            if weights == "imagenet":
                raise Exception("URL fetch failure on https://...: None")
            return original(*args, weights=weights, **kwargs)

        keras.applications.EfficientNetB0 = offline
        try:
            with self.assertRaisesRegex(
                    encoder_lib.EncoderWeightsError,
                    "could not download ImageNet weights for 'efficientnet_b0'"):
                encoder_lib.build_encoder(
                    ModelConfig(image_size=32, encoder_weights="imagenet"))
        finally:
            keras.applications.EfficientNetB0 = original
