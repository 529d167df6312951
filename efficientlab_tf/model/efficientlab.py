"""EfficientLab: EfficientNet encoder + residual skip decoder (paper section 4).

    images float32 [B, S, S, 3] in [0, 255]
      -> encoder stage 6 (1/16) --4x bilinear--> concat(stage 3 skip, 1/4)
      -> RSD -> dropout 0.2 -> 1x1 conv -> bilinear upsampling to S
      -> logits float32 [B, S, S, 2] (softmax over {background, target})

The network returns logits; `foreground_probability` applies the softmax.
"""

import contextlib

import keras
import tensorflow as tf

from efficientlab_tf.config import ADAPT_SCOPES
from efficientlab_tf.model.encoder import build_encoder
from efficientlab_tf.model.encoder import endpoint_name
from efficientlab_tf.model.encoder import with_mtl
from efficientlab_tf.model.layers import ASPP
from efficientlab_tf.model.layers import BatchNorm
from efficientlab_tf.model.layers import InnerRates
from efficientlab_tf.model.layers import mtl_variables
from efficientlab_tf.model.layers import ResidualSkipDecoder

# DeepLabv3+ reduces the low-level skip to 48 channels before the concat.
ASPP_SKIP_FILTERS = 48


def foreground_probability(logits):
    """Softmax probability of the target class: [B, H, W, 2] -> float32
    [B, H, W] (mixed-precision logits are upcast first)."""
    return tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1)[..., 1]


def _upsample(x, factor, name):
    if factor == 1:
        return x
    return keras.layers.UpSampling2D(
        size=factor, interpolation="bilinear", name=name
    )(x)


def _check_encoder(encoder, config):
    if not isinstance(encoder, keras.Model):
        raise TypeError(
            f"`encoder` must be a keras.Model; got {type(encoder).__name__}."
        )
    required = {endpoint_name(config.skip_stage), endpoint_name(config.cut_stage)}
    outputs = encoder.output if isinstance(encoder.output, dict) else {}
    if not required.issubset(outputs):
        raise ValueError(
            f"`encoder` must expose endpoints {sorted(required)}; "
            f"got {sorted(outputs)}."
        )


def _conv_bn_relu(x, filters, kernel, batch_stats, name):
    x = keras.layers.Conv2D(filters, kernel, padding="same", use_bias=False,
                            name=name)(x)
    x = BatchNorm(batch_stats=batch_stats, name=f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def _aspp_decoder(deep, skip, config):
    """DeepLabv3+-style decoder (Auto-DeepLab's): ASPP on the deep features,
    upsampled to the skip's resolution, concatenated with the skip reduced
    to 48 channels, then two 3x3 convolutions."""
    batch_stats = config.bn_mode == "batch"
    x = ASPP(config.decoder_filters, batch_stats=batch_stats,
             name=f"aspp_stage{config.cut_stage}")(deep)
    if skip.shape[1] % x.shape[1]:
        raise ValueError(
            f"skip features ({skip.shape[1]} px) are not a multiple of the "
            f"deep features ({x.shape[1]} px).")
    x = _upsample(x, skip.shape[1] // x.shape[1], "upsample_deep")
    skip = _conv_bn_relu(skip, ASPP_SKIP_FILTERS, 1, batch_stats, "aspp_skip")
    x = keras.layers.Concatenate(name="skip_concat")([x, skip])
    x = _conv_bn_relu(x, config.decoder_filters, 3, batch_stats, "aspp_fuse1")
    return _conv_bn_relu(x, config.decoder_filters, 3, batch_stats, "aspp_fuse2")


@contextlib.contextmanager
def dtype_policy(name):
    """Layers built inside use the Keras dtype policy `name` (e.g.
    "mixed_bfloat16": bfloat16 compute, float32 variables); the global
    policy is restored afterwards."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def build_efficientlab(config, encoder=None, precision="float32"):
    """Builds EfficientLab as a functional `keras.Model`.

    Args:
        config: `ModelConfig`.
        encoder: Optional encoder (see `model/encoder.py` for the contract);
            built from `config` when None. Tests pass a tiny one.
        precision: Keras dtype policy of the layers built here ("float32",
            "mixed_bfloat16", "mixed_float16"). Variables stay float32 in
            every policy, so checkpoints move freely between precisions.

    Returns:
        keras.Model: float32 [B, S, S, 3] in [0, 255] -> logits [B, S, S, C].

    Raises:
        ValueError: the encoder lacks the endpoints or its feature sizes do
            not divide each other.
    """
    with dtype_policy(precision):
        return _build(config, encoder)


def _build(config, encoder):
    if encoder is None:
        encoder = build_encoder(config)
    if config.mtl:  # After the weights are in: every source fits plain convs.
        encoder = with_mtl(encoder)
    _check_encoder(encoder, config)
    size = config.image_size
    batch_stats = config.bn_mode == "batch"
    images = keras.Input((size, size, 3), name="images")
    features = encoder(images)
    x = features[endpoint_name(config.cut_stage)]
    if config.decoder == "aspp":
        x = _aspp_decoder(x, features[endpoint_name(config.skip_stage)], config)
    elif config.decoder != "none":
        skip = features[endpoint_name(config.skip_stage)]
        if config.decoder == "rsd_3_6":
            x = ResidualSkipDecoder(
                config.decoder_filters, batch_stats=batch_stats,
                name=f"rsd_stage{config.cut_stage}",
            )(x)
        if skip.shape[1] % x.shape[1]:
            raise ValueError(
                f"skip features ({skip.shape[1]} px) are not a multiple of the "
                f"deep features ({x.shape[1]} px)."
            )
        x = _upsample(x, skip.shape[1] // x.shape[1], "upsample_deep")
        x = keras.layers.Concatenate(name="skip_concat")([x, skip])
        x = ResidualSkipDecoder(
            config.decoder_filters,
            residual=config.decoder != "rsd_no_residual",
            batch_stats=batch_stats,
            name=f"rsd_stage{config.skip_stage}",
        )(x)
    x = keras.layers.Dropout(config.dropout, name="head_dropout")(x)
    x = keras.layers.Conv2D(config.num_classes, 1, name="head_logits")(x)
    if size % x.shape[1]:
        raise ValueError(
            f"image size {size} is not a multiple of the decoder output "
            f"({x.shape[1]} px)."
        )
    logits = _upsample(x, size // x.shape[1], "upsample_logits")
    if config.learned_lr:  # One log-rate per trainable variable built so far.
        count = len(keras.Model(images, logits).trainable_variables)
        logits = InnerRates(count, name=RATES_LAYER)(logits)
    return keras.Model(images, logits, name="efficientlab")


# What the update routine moves (`--adapt_scope`, Omega.scope). "prototype"
# (evaluation only) moves nothing: see evaluation/features.py (prototype_eval_fn).
HEAD_LAYER = "head_logits"
RATES_LAYER = "inner_rates"


def inner_rates(model):
    """The learned log-rates variable of a model built with
    `ModelConfig.learned_lr` (one per trainable variable, in
    `model.trainable_variables` order), or None."""
    names = {layer.name for layer in model.layers}
    if RATES_LAYER not in names:
        return None
    return model.get_layer(RATES_LAYER).log_rates


def _encoder_layer(model):
    """The nested encoder model of an EfficientLab (the one keras.Model
    among its layers; tests' tiny encoders follow the same contract)."""
    nested = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    if len(nested) != 1:
        raise ValueError(
            f"expected one nested encoder model in {model.name!r}; found "
            f"{[layer.name for layer in nested]}.")
    return nested[0]


def _sublayers(layer):
    """`layer` and every layer nested in it."""
    return list(layer._flatten_layers(include_self=True, recursive=True))


def scope_variables(model, scope):
    """The trainable variables of EfficientLab `model` that the inner loop
    of `scope` adapts (the rest are frozen there).

    * "all": every trainable variable (the paper).
    * "decoder": everything after the encoder (RSD, head); the encoder is
      frozen, so no gradient flows into it at all.
    * "head": the final 1x1 convolution (`head_logits`) only.
    * "bn_affine": the encoder's convolution kernels frozen, its batch-norm
      gamma and beta and its biases adapted with the decoder. (A per-channel
      scale and shift in front of a batch norm reparameterize its gamma and
      beta, so this is MTL with per-channel instead of per-kernel scales; with
      --bn_mode=batch a scale in front of a batch norm is normalised away.)
    * "mtl": meta-transfer learning as Sun et al. built it (CVPR 2019; the
      authors' `_ConvNdMtl`): the model carries a per-kernel scale and a
      per-channel shift on every encoder convolution (`--mtl`,
      `layers.MTLConv2D`); the inner loop adapts the base learner (here the
      decoder and head), and the scaling and shifting are learned in the
      outer loop only (`outer_variables`). The encoder's own weights stay
      frozen.

    On a model built with --mtl no scope adapts MTL's scaling and shifting:
    they are learned in the outer loop only, as in MTL (`outer_variables`).
    A run trained without MTL and loaded into such a model (Phi at 1 and 0)
    therefore adapts exactly as in the plain model, in every scope.

    Raises:
        ValueError: unknown scope, or a model without the expected parts.
    """
    if scope not in ADAPT_SCOPES:
        raise ValueError(f"`adapt_scope` must be one of {ADAPT_SCOPES}; got {scope!r}.")
    phi = {id(v) for v in mtl_variables(model)}
    trainable = [v for v in model.trainable_variables if id(v) not in phi]
    if scope == "all":
        return list(trainable)
    if scope == "head":
        try:
            head = model.get_layer(HEAD_LAYER)
        except ValueError:
            raise ValueError(f"--adapt_scope=head needs a layer named "
                             f"{HEAD_LAYER!r} in {model.name!r}.") from None
        return list(head.trainable_variables)
    encoder = _encoder_layer(model)
    encoder_ids = {id(v) for v in encoder.trainable_variables}
    if scope == "mtl" and not mtl_variables(encoder):
        raise ValueError("--adapt_scope=mtl needs a model built with --mtl "
                         "(MTL's scaling and shifting on the encoder's "
                         "convolutions).")
    if scope in ("decoder", "mtl"):
        return [v for v in trainable if id(v) not in encoder_ids]
    kept = set()  # bn_affine: batch-norm gamma/beta and biases in the encoder.
    for layer in _sublayers(encoder):
        if isinstance(layer, keras.layers.BatchNormalization):
            kept.update(id(v) for v in layer.trainable_variables)
        elif getattr(layer, "bias", None) is not None:
            kept.add(id(layer.bias))
    return [v for v in trainable if id(v) not in encoder_ids or id(v) in kept]


def outer_variables(model, scope):
    """Variables meta-training moves that the inner loop of `scope` leaves
    frozen: MTL's scaling and shifting on a model built with --mtl (in
    every scope: `scope_variables` never adapts them), else none."""
    del scope  # The same for every scope.
    return mtl_variables(_encoder_layer(model))
