"""Writes TF Serving SavedModels: `<base>/<version>/` with integer versions.

Signatures:

* `serving_default`: uint8 images [N, H, W, 3] of any size -> `probabilities`
  float32 [N, H, W] (target class) and `masks` uint8 [N, H, W] (>= 0.5), at
  the input resolution; images are resized to the network size in the graph.
* `serve_bytes`: encoded JPEG/PNG images, string [N] -> the same outputs at
  the network resolution S x S (images of a batch may differ in size), plus
  each image's `heights` and `widths` so a client can resize back.
* `few_shot`: `support_images` uint8 [K, H, W, 3], `support_masks` uint8
  [K, H, W] (0 = background, any other value = target) and `query_images`
  uint8 [Q, H', W', 3] -> the query's `probabilities` and `masks`. It adapts
  inside the graph with the update routine in its tensor form (the
  variables are only read), with the exported omega = (lr, steps, batch
  size, optimizer), so concurrent requests never see each other.

A version is written to a temporary folder and renamed, so a crash never
leaves a half-written version for TF Serving to pick up.
"""

import os
import shutil
import tempfile

import keras
import tensorflow as tf

from efficientlab_tf.data import decode
from efficientlab_tf.model.efficientlab import foreground_probability

_FEW_SHOT_SEED = (0, 0)  # Same request, same answer.


def next_version(base_dir):
    """1 + the largest integer-named folder in `base_dir` (1 if none)."""
    if not os.path.isdir(base_dir):
        return 1
    versions = [int(d) for d in os.listdir(base_dir) if d.isdigit()]
    return max(versions, default=0) + 1


def _outputs(probs):
    return {"probabilities": probs, "masks": tf.cast(probs >= 0.5, tf.uint8)}


def _check_images(images, name):
    tf.debugging.assert_positive(
        tf.shape(images)[1] * tf.shape(images)[2],
        message=f"{name}: images must have a positive height and width")


def _resize_images(images, size):
    return tf.image.resize(tf.cast(images, tf.float32), [size, size])


def _serve_fn(model, size):
    def serve(images):
        _check_images(images, "serving_default")
        probs = foreground_probability(model(_resize_images(images, size),
                                             training=False))
        probs = tf.image.resize(probs[..., None], tf.shape(images)[1:3])[..., 0]
        return _outputs(probs)

    return serve


def _serve_bytes_fn(model, size):
    def serve_bytes(encoded):
        tf.debugging.assert_positive(
            tf.size(encoded), message="serve_bytes: no images in the request")

        images, hw = tf.map_fn(
            lambda c: decode.decode_image_and_size(c, size), encoded,
            fn_output_signature=(tf.float32, tf.int32))
        probs = foreground_probability(model(images, training=False))
        out = _outputs(probs)
        out.update(heights=hw[:, 0], widths=hw[:, 1])
        return out

    return serve_bytes


def _few_shot_fn(adapter, size, lr, steps):
    def few_shot(support_images, support_masks, query_images):
        k = tf.shape(support_images)[0]
        tf.debugging.assert_positive(
            k, message="few_shot: support_images is empty (need >= 1 example)")
        tf.debugging.assert_equal(
            k, tf.shape(support_masks)[0],
            message="few_shot: support_images and support_masks hold "
                    "different numbers of examples")
        tf.debugging.assert_equal(
            tf.shape(support_images)[1:3], tf.shape(support_masks)[1:3],
            message="few_shot: support_masks must have the height and width "
                    "of support_images")
        tf.debugging.assert_positive(
            tf.shape(query_images)[0],
            message="few_shot: query_images is empty")
        _check_images(query_images, "few_shot")
        images = _resize_images(support_images, size)
        masks = tf.image.resize(support_masks[..., None], [size, size],
                                method="nearest")
        masks = tf.cast(masks > 0, tf.float32)
        adapted, _ = adapter.adapt(images, masks, lr, steps,
                                   tf.constant(_FEW_SHOT_SEED, tf.int32))
        probs = adapter.predict(adapted, _resize_images(query_images, size))
        probs = tf.image.resize(probs[..., None],
                                tf.shape(query_images)[1:3])[..., 0]
        return _outputs(probs)

    return few_shot


def export_saved_model(model, base_dir, image_size, version=None,
                       few_shot_adapter=None, omega=None):
    """Exports `model` as `<base_dir>/<version>`; returns that path.

    Args:
        model: The network (images -> logits).
        base_dir: `saved_models/<name>` folder.
        image_size: Network input size S.
        version: Integer version; None = next free one.
        few_shot_adapter: An `Adapter` with `in_place=False` over `model`;
            when given, the `few_shot` signature is added.
        omega: (lr, steps) of the `few_shot` adaptation.

    Raises:
        FileExistsError: the version folder already exists.
        ValueError: a few-shot adapter that writes variables.
    """
    version = next_version(base_dir) if version is None else int(version)
    final = os.path.join(base_dir, str(version))
    if os.path.exists(final):
        raise FileExistsError(f"export version folder {final!r} already exists.")
    if few_shot_adapter is not None and few_shot_adapter.in_place:
        raise ValueError("the few_shot signature needs an Adapter with "
                         "in_place=False (served variables must not change).")
    os.makedirs(base_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=base_dir)
    try:
        archive = keras.export.ExportArchive()
        archive.track(model)
        uint8_images = lambda name: tf.TensorSpec(  # noqa: E731
            [None, None, None, 3], tf.uint8, name=name)
        # The first endpoint becomes `serving_default`.
        archive.add_endpoint("serve", _serve_fn(model, image_size),
                             input_signature=[uint8_images("images")])
        archive.add_endpoint(
            "serve_bytes", _serve_bytes_fn(model, image_size),
            input_signature=[tf.TensorSpec([None], tf.string, name="encoded")])
        if few_shot_adapter is not None:
            lr, steps = omega
            archive.add_endpoint(
                "few_shot",
                _few_shot_fn(few_shot_adapter, image_size,
                             tf.constant(lr, tf.float32),
                             tf.constant(steps, tf.int32)),
                input_signature=[
                    uint8_images("support_images"),
                    tf.TensorSpec([None, None, None], tf.uint8,
                                  name="support_masks"),
                    uint8_images("query_images"),
                ])
        archive.write_out(tmp, verbose=False)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final
