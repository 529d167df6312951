"""The one image and mask decoder of the package (JPEG or PNG bytes).

Images are resized bilinearly to [S, S, 3] float32 in [0, 255]; masks by
nearest neighbour to [S, S, 1] float32 and binarised: a mask pixel is
target (1) when its value is >= MASK_THRESHOLD (128) on a 0-255 scale.
Masks that carry the 255 "ignore" label (PASCAL) are decoded by the PASCAL
reader, not here.
"""

import tensorflow as tf

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
