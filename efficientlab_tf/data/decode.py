"""The one image and mask decoder of the package (JPEG or PNG bytes).

Images are resized bilinearly to [S, S, 3] float32 in [0, 255]; masks by
nearest neighbour to [S, S, 1] float32 and binarised: a mask pixel is
target (1) when its value is >= MASK_THRESHOLD (128) on a 0-255 scale.
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


def _decode(contents, channels):
    # JPEGs with the accurate integer DCT (TF's default is the fast one),
    # so pixels match other decoders (PIL, OpenCV) to within rounding.
    return tf.cond(
        tf.io.is_jpeg(contents),
        lambda: tf.io.decode_jpeg(contents, channels=channels,
                                  dct_method="INTEGER_ACCURATE"),
        lambda: tf.io.decode_image(contents, channels=channels,
                                   expand_animations=False),
    )


def decode_image(contents, size):
    """JPEG/PNG bytes -> float32 [size, size, 3] in [0, 255]."""
    return decode_image_and_size(contents, size)[0]


def decode_image_and_size(contents, size):
    """(float32 [size, size, 3] in [0, 255], int32 [2] original height, width)."""
    image = _decode(contents, 3)
    original = tf.shape(image)[:2]
    image = tf.image.resize(tf.cast(image, tf.float32), [size, size],
                            method="bilinear")
    return (tf.ensure_shape(tf.clip_by_value(image, 0.0, 255.0), [size, size, 3]),
            original)


def decode_mask(contents, size):
    """PNG/JPEG mask bytes -> float32 [size, size, 1] in {0, 1}."""
    mask = _decode(contents, 1)
    mask = tf.image.resize(mask, [size, size], method="nearest")
    mask = tf.cast(mask >= MASK_THRESHOLD, tf.float32)
    return tf.ensure_shape(mask, [size, size, 1])


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
