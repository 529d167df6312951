"""Meta-transfer learning as Sun et al. built it (CVPR 2019; the authors'
PyTorch `_ConvNdMtl` in yaoyao-liu/meta-transfer-learning: a scale of shape
[out, in, 1, 1] and a shift [out] on each frozen convolution): shapes and
counts from that definition, the convolution by hand, and the two loops
(inner: the base learner; outer: the scaling and shifting)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from efficientlab_tf import segmentation
from efficientlab_tf.config import ExperimentConfig
from efficientlab_tf.config import MetaConfig
from efficientlab_tf.config import ModelConfig
from efficientlab_tf.experiment import load_model_weights
from efficientlab_tf.model.efficientlab import _encoder_layer
from efficientlab_tf.model.efficientlab import build_efficientlab
from efficientlab_tf.model.efficientlab import outer_variables
from efficientlab_tf.model.efficientlab import scope_variables
from efficientlab_tf.model.encoder import build_encoder
from efficientlab_tf.model.encoder import with_mtl
from efficientlab_tf.model.layers import MTLConv2D
from efficientlab_tf.model.layers import MTLDepthwiseConv2D
from efficientlab_tf.model.layers import mtl_variables
from efficientlab_tf.model.losses import segmentation_loss
from tests import helpers


def conv_net():
    """Conv 3x3 (3 -> 4, bias), depthwise 3x3 (4 channels, no bias), 1x1
    conv (4 -> 6, no bias)."""
    x = keras.Input((8, 8, 3))
    y = keras.layers.Conv2D(4, 3, padding="same", name="c3")(x)
    y = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw")(y)
    y = keras.layers.Conv2D(6, 1, use_bias=False, name="c1")(y)
    return keras.Model(x, y)


def test_shapes_and_counts_follow_the_authors_definition():
    keras.utils.set_random_seed(0)
    plain = conv_net()
    mtl = with_mtl(plain)
    c3, dw, c1 = (mtl.get_layer(n) for n in ("c3", "dw", "c1"))
    assert isinstance(c3, MTLConv2D) and isinstance(dw, MTLDepthwiseConv2D)
    # One scale per kernel: [1, 1, in, out] against [kh, kw, in, out].
    assert c3.mtl_scale.shape == (1, 1, 3, 4) and c3.mtl_shift.shape == (4,)
    # Depthwise: one kernel per channel, so one scale per channel.
    assert dw.mtl_scale.shape == (1, 1, 4, 1) and dw.mtl_shift.shape == (4,)
    # A 1x1 convolution gets as many scales as weights.
    assert c1.mtl_scale.shape == (1, 1, 4, 6) and c1.mtl_shift.shape == (6,)
    assert sum(int(np.prod(v.shape)) for v in mtl_variables(mtl)) == (
        (12 + 4) + (4 + 4) + (24 + 6))
    # At 1 and 0 the network is the plain one, weights copied.
    x = tf.random.uniform([2, 8, 8, 3], seed=1)
    np.testing.assert_allclose(mtl(x), plain(x), atol=1e-6)


def test_mtl_convolution_by_hand():
    keras.utils.set_random_seed(1)
    mtl = with_mtl(conv_net())
    rng = np.random.RandomState(0)
    for v in mtl_variables(mtl):
        v.assign(rng.uniform(0.5, 1.5, v.shape).astype(np.float32))
    x = tf.constant(rng.uniform(size=(1, 8, 8, 3)).astype(np.float32))
    c3, dw, c1 = (mtl.get_layer(n) for n in ("c3", "dw", "c1"))
    # y = (W (.) Phi_S1) * x + (b + Phi_S2), each layer with tf.nn ops.
    y = tf.nn.conv2d(x, c3.kernel * c3.mtl_scale, 1, "SAME") + c3.bias + c3.mtl_shift
    y = tf.nn.depthwise_conv2d(y, dw.kernel * dw.mtl_scale, [1, 1, 1, 1],
                               "SAME") + dw.mtl_shift
    y = tf.nn.conv2d(y, c1.kernel * c1.mtl_scale, 1, "VALID") + c1.mtl_shift
    np.testing.assert_allclose(mtl(x), y, rtol=1e-5, atol=1e-5)


def test_scopes_of_an_mtl_model():
    model = helpers.tiny_efficientlab(bn_mode="batch", mtl=True)
    encoder = _encoder_layer(model)
    mtl_ids = {id(v) for v in mtl_variables(encoder)}
    encoder_ids = {id(v) for v in encoder.trainable_variables}
    inner = scope_variables(model, "mtl")
    outer = outer_variables(model, "mtl")
    assert {id(v) for v in outer} == mtl_ids and len(outer) == 4  # 2 convs
    # The inner loop adapts the base learner (decoder, head) only.
    assert inner and not ({id(v) for v in inner} & encoder_ids)
    # No scope adapts Phi (outer loop only), so "all" on an MTL model is
    # the plain model's "all"; Phi is meta-learned under every scope.
    plain = helpers.tiny_efficientlab(bn_mode="batch")
    everything = scope_variables(model, "all")
    assert not ({id(v) for v in everything} & mtl_ids)
    assert [v.shape for v in everything] == [v.shape for v in scope_variables(plain, "all")]
    assert {id(v) for v in outer_variables(model, "all")} == mtl_ids
    assert outer_variables(plain, "all") == []
    with pytest.raises(ValueError, match="needs a model built with --mtl"):
        scope_variables(helpers.tiny_efficientlab(), "mtl")


def test_fomaml_moves_the_scaling_by_its_first_order_outer_gradient():
    # One task, meta-batch 1, meta step 1: Phi moves by -lr * dL_val/dPhi at
    # theta_tr, checked against an ordinary Keras forward pass and tape;
    # the encoder's own weights do not move at all.
    keras.utils.set_random_seed(0)
    model = helpers.tiny_efficientlab(bn_mode="batch", dropout=0.0, mtl=True)
    meta = MetaConfig(algo="fomaml", train_shots=4, foml_tail=2, inner_iters=3,
                      inner_batch=2, inner_lr=0.1, meta_batch=1,
                      adapt_scope="mtl", weight_decay=0.0)
    learner = segmentation.build_learner(model, ExperimentConfig(
        model=helpers.tiny_config(bn_mode="batch", dropout=0.0, mtl=True),
        meta=meta))
    task = helpers.random_task(shots=4, meta_batch=1, seed=3)
    encoder = _encoder_layer(model)
    phi = mtl_variables(encoder)
    frozen = [v for v in encoder.trainable_variables
              if id(v) not in {id(p) for p in phi}]
    before_phi = [v.numpy() for v in phi]
    before_frozen = [v.numpy() for v in frozen]
    seed = tf.constant([5, 0])
    # theta_tr as FOMAML computes it (the adapter's own D_tr adaptation).
    adapter = learner.adapter
    start = adapter.initial_state()
    task_seed = tf.random.experimental.stateless_fold_in(seed, 0)
    theta_tr, _ = adapter.adapt(task.support_images[0][:2], task.support_masks[0][:2],
                                0.1, 2, task_seed, start=start)
    # Independent: put theta_tr into the variables, ordinary tape.
    inner_vars = adapter.trainable_variables
    saved = [v.numpy() for v in inner_vars]
    for v, x in zip(inner_vars, theta_tr.trainable):
        v.assign(x)
    with tf.GradientTape() as tape:
        logits = model(task.support_images[0][2:], training=True)
        loss = segmentation_loss(task.support_masks[0][2:], logits, [], 0.0)
    grads = tape.gradient(loss, phi)
    for v, x in zip(inner_vars, saved):
        v.assign(x)
    out = learner.meta_step(task, tf.constant(1.0), seed)
    assert bool(out["finite"])
    for v, b, g in zip(phi, before_phi, grads):
        np.testing.assert_allclose(v.numpy() - b, -0.1 * g.numpy(), rtol=1e-3,
                                   atol=1e-6)
    assert max(float(np.abs(v.numpy() - b).max()) for v, b in zip(phi, before_phi)) > 1e-6
    for v, b in zip(frozen, before_frozen):
        np.testing.assert_array_equal(v.numpy(), b)


def test_config_refusals():
    with pytest.raises(ValueError, match="needs --mtl"):
        ExperimentConfig.build("demo", adapt_scope="mtl")
    with pytest.raises(ValueError, match="use --algo=fomaml"):
        ExperimentConfig.build("demo", adapt_scope="mtl", mtl=True, algo="reptile")
    with pytest.raises(ValueError, match="use --algo=fomaml"):
        ExperimentConfig.build("demo", mtl=True, algo="joint")
    config = ExperimentConfig.build("demo", adapt_scope="mtl", mtl=True)
    assert config.train_omega.scope == "mtl"


@pytest.mark.slow  # Builds full EfficientNets.
@pytest.mark.parametrize("encoder, conv_weights, one_by_one, scales, shifts", [
    ("efficientnet_b0", 831808, 762496, 766272, 11920),
    ("efficientnet_lite0", 684608, 615296, 619072, 8080)])
def test_parameters_added_on_full_encoders(encoder, conv_weights, one_by_one,
                                           scales, shifts):
    """The counts docs/extensions.md reports (EfficientLab's encoder, cut at
    stage 6): 1x1 convolutions hold 92% of the convolution weights and get
    one scale per weight, so MTL adds ~93% of them, not 1/9."""
    plain = build_encoder(ModelConfig(encoder=encoder, image_size=32))
    mtl = with_mtl(plain)
    layers = list(mtl._flatten_layers())
    convs = [l for l in plain._flatten_layers()
             if isinstance(l, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D))]
    assert sum(int(np.prod(l.kernel.shape)) for l in convs) == conv_weights
    assert sum(int(np.prod(l.kernel.shape)) for l in convs
               if type(l) is keras.layers.Conv2D and l.kernel.shape[0] == 1) == one_by_one
    assert sum(int(np.prod(l.mtl_scale.shape)) for l in layers
               if hasattr(l, "mtl_scale")) == scales
    assert sum(int(np.prod(l.mtl_shift.shape)) for l in layers
               if hasattr(l, "mtl_shift")) == shifts


def test_warm_start_from_a_plain_run_and_the_refusal_back(tmp_path):
    # MTL meta-transfers a pre-trained network: a plain run's checkpoint
    # loads into an MTL model with Phi at 1 and 0 (whatever an earlier load
    # left there), so the MTL model computes what the plain one computes.
    keras.utils.set_random_seed(0)
    plain = helpers.tiny_efficientlab(bn_mode="batch")
    prefix = tf.train.Checkpoint(model=plain).save(str(tmp_path / "plain" / "ckpt"))
    mtl = helpers.tiny_efficientlab(bn_mode="batch", mtl=True)
    for v in mtl_variables(mtl):  # As another run would leave them.
        v.assign(v.numpy() + 0.5)
    load_model_weights(mtl, prefix)
    for v in mtl_variables(mtl):
        expected = 1.0 if v.path.endswith("mtl_scale") else 0.0
        np.testing.assert_array_equal(v.numpy(), np.full(v.shape, expected))
    x = tf.random.uniform([2, 32, 32, 3], maxval=255.0, seed=2)
    np.testing.assert_allclose(mtl(x, training=False), plain(x, training=False),
                               atol=1e-5)
    # An MTL run's checkpoint into a plain model would drop Phi silently.
    trained = tf.train.Checkpoint(model=mtl).save(str(tmp_path / "mtl" / "ckpt"))
    with pytest.raises(ValueError, match="load it with --mtl"):
        load_model_weights(helpers.tiny_efficientlab(bn_mode="batch"), trained)
    # Optional means Phi only: a model that differs elsewhere still fails.
    with pytest.raises(ValueError, match="does not match this model"):
        load_model_weights(helpers.tiny_efficientlab(
            bn_mode="batch", mtl=True, decoder_filters=4), prefix)
