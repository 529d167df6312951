"""The one image and mask decoder of the package (JPEG or PNG bytes).

Images are resized bilinearly to [S, S, 3] float32 in [0, 255]; masks by
nearest neighbour to [S, S, 1] float32 and binarised by `binarize_mask`, the
one mask rule of the package (loaders, shards and the served `few_shot`
signature): 0/255 masks are target where the value is >= MASK_THRESHOLD
(128), and a mask whose largest value is 1 is a 0/1 mask, target where it is
1. The rule is applied per mask, so both kinds may be mixed in a dataset.
Label-map masks (PASCAL VOC `SegmentationClass` palette PNGs and the SBD
`SegmentationClassAug` grey PNGs) hold a class index per pixel and 255 on
object boundaries; `decode_label_mask` reads the indices themselves (TF's PNG
decoder expands palettes to RGB, so this one decodes with PIL inside the
graph) and maps them to {0: other, 1: the class, 255: ignore}.
"""

import io

import numpy as np
import tensorflow as tf
from PIL import Image

from efficientlab_tf.model.losses import IGNORE_LABEL  # 255.0

MASK_THRESHOLD = 128


def decode_pixels(contents, channels):
    """Encoded bytes -> uint8 [H, W, channels]: the one decode of the package
    (training, evaluation, shards, serving and the scan of `validate.py`).

    JPEG, PNG, BMP and GIF (first frame); 16-bit PNGs come out rescaled to 8
    bits (TensorFlow's rule: v x 255 / 65535). Anything else is an
    InvalidArgumentError.
    """
    # JPEGs with the accurate integer DCT (TF's default is the fast one),
    # so pixels match other decoders (PIL, OpenCV) to within rounding.
    return tf.cond(
        tf.io.is_jpeg(contents),
        lambda: tf.io.decode_jpeg(contents, channels=channels,
                                  dct_method="INTEGER_ACCURATE"),
        lambda: tf.io.decode_image(contents, channels=channels,
                                   expand_animations=False),
    )


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_bit_depth(path):
    """The bit depth in the IHDR header of the PNG file `path`; None for a
    file that is not a PNG (or cannot be read)."""
    try:
        with open(path, "rb") as f:
            head = f.read(25)
    except OSError:
        return None
    if len(head) < 25 or head[:8] != _PNG_SIGNATURE:
        return None
    return head[24]


def encoded_image_size(contents):
    """int64 [2] (height, width) read from a JPEG or PNG header, without
    decoding the pixels; [-1, -1] for bytes that are neither."""

    def png_size():
        # IHDR: width and height, big-endian uint32, at bytes 16-23.
        b = tf.cast(tf.io.decode_raw(tf.strings.substr(contents, 16, 8),
                                     tf.uint8), tf.int64)
        width = ((b[0] * 256 + b[1]) * 256 + b[2]) * 256 + b[3]
        height = ((b[4] * 256 + b[5]) * 256 + b[6]) * 256 + b[7]
        return tf.stack([height, width])

    is_png = tf.logical_and(tf.strings.length(contents) >= 24,
                            tf.strings.substr(contents, 0, 8) == _PNG_SIGNATURE)
    return tf.cond(
        tf.io.is_jpeg(contents),
        lambda: tf.cast(tf.image.extract_jpeg_shape(contents)[:2], tf.int64),
        lambda: tf.cond(is_png, png_size,
                        lambda: tf.constant([-1, -1], tf.int64)))


def decode_image(contents, size):
    """JPEG/PNG bytes -> float32 [size, size, 3] in [0, 255]."""
    return decode_image_and_size(contents, size)[0]


def decode_image_and_size(contents, size):
    """(float32 [size, size, 3] in [0, 255], int32 [2] original height, width)."""
    image = decode_pixels(contents, 3)
    original = tf.shape(image)[:2]
    image = tf.image.resize(tf.cast(image, tf.float32), [size, size],
                            method="bilinear")
    return (tf.ensure_shape(tf.clip_by_value(image, 0.0, 255.0), [size, size, 3]),
            original)


def binarize_mask(mask):
    """uint8 masks [..., H, W, 1] -> float32 {0, 1}, each mask by its own kind.

    A mask whose largest value is <= 1 is a 0/1 mask (target: 1); any other
    is a 0-255 mask (target: >= 128).
    """
    mask = tf.cast(mask, tf.uint8)
    top = tf.reduce_max(mask, axis=[-3, -2, -1], keepdims=True)
    threshold = tf.where(top <= 1, tf.constant(1, tf.uint8),
                         tf.constant(MASK_THRESHOLD, tf.uint8))
    return tf.cast(mask >= threshold, tf.float32)


def decode_mask(contents, size):
    """PNG/JPEG mask bytes -> float32 [size, size, 1] in {0, 1}."""
    mask = decode_pixels(contents, 1)
    mask = tf.image.resize(mask, [size, size], method="nearest")
    return tf.ensure_shape(binarize_mask(mask), [size, size, 1])


def png_indices(contents):
    """bytes of a palette ("P") or grey ("L") PNG -> uint8 [H, W] indices."""
    if isinstance(contents, np.ndarray):  # From tf.numpy_function: 0-d object.
        contents = contents.item()
    with Image.open(io.BytesIO(contents)) as im:
        if im.mode not in ("P", "L"):
            raise ValueError(
                f"label mask must be a palette or 8-bit grey PNG; got mode {im.mode!r}")
        return np.asarray(im, dtype=np.uint8)


def decode_label_mask(contents, size, label):
    """Label-map PNG bytes -> float32 [size, size, 1]: 1 where the pixel's
    index is `label`, 255 where it is 255 (ignored), else 0. Nearest resize."""
    indices = tf.numpy_function(png_indices, [contents], tf.uint8, stateful=False)
    indices = tf.ensure_shape(indices, [None, None])[..., None]
    indices = tf.image.resize(indices, [size, size], method="nearest")
    label = tf.cast(label, tf.uint8)
    mask = tf.where(indices == label, 1.0,
                    tf.where(indices == int(IGNORE_LABEL), IGNORE_LABEL, 0.0))
    return tf.ensure_shape(mask, [size, size, 1])


def decode_any_mask(contents, size, label):
    """`decode_mask` when `label` < 0 (binary masks), else `decode_label_mask`."""
    return tf.cond(label < 0, lambda: decode_mask(contents, size),
                   lambda: decode_label_mask(contents, size, label))
