"""Writes a TF Serving SavedModel: `<base>/<version>/` with integer versions.

`serving_default` takes uint8 images [N, H, W, 3] of any size, resizes them
to the network's input inside the graph, and returns the foreground
probability and a binary mask at the input resolution. The version is
written to a temporary folder and renamed, so a crash never leaves a
half-written version for TF Serving to pick up.
"""

import os
import shutil
import tempfile

import keras
import tensorflow as tf

from efficientlab_tf.model.efficientlab import foreground_probability


def next_version(base_dir):
    """1 + the largest integer-named folder in `base_dir` (1 if none)."""
    if not os.path.isdir(base_dir):
        return 1
    versions = [int(d) for d in os.listdir(base_dir) if d.isdigit()]
    return max(versions, default=0) + 1


def _serving_fn(model, image_size):
    def serve(images):
        shape = tf.shape(images)
        x = tf.image.resize(tf.cast(images, tf.float32), [image_size, image_size])
        probs = foreground_probability(model(x, training=False))
        probs = tf.image.resize(probs[..., None], shape[1:3])[..., 0]
        return {
            "probabilities": probs,
            "masks": tf.cast(probs >= 0.5, tf.uint8),
        }

    return serve


def export_saved_model(model, base_dir, image_size, version=None):
    """Exports `model` as `<base_dir>/<version>`; returns that path.

    Raises:
        FileExistsError: the version folder already exists.
    """
    version = next_version(base_dir) if version is None else int(version)
    final = os.path.join(base_dir, str(version))
    if os.path.exists(final):
        raise FileExistsError(f"export version folder {final!r} already exists.")
    os.makedirs(base_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=base_dir)
    try:
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint(
            "serve", _serving_fn(model, image_size),
            input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8,
                                           name="images")],
        )
        archive.write_out(tmp, verbose=False)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final
