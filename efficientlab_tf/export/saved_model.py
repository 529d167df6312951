"""Writes TF Serving SavedModels: `<base>/<version>/` with integer versions.

Signatures:

* `serving_default`: uint8 images [N, H, W, 3] of any size -> `probabilities`
  float32 [N, H, W] (target class) and `masks` uint8 [N, H, W] (>= 0.5), at
  the input resolution; images are resized to the network size in the graph.
* `serve_bytes`: encoded JPEG/PNG images, string [N] -> the same outputs at
  the network resolution S x S (images of a batch may differ in size), plus
  each image's `heights` and `widths` so a client can resize back. Images
  over `max_pixels` (default `decode.MAX_SERVED_PIXELS`, 4096 x 4096) are
  refused from their header, before decoding.
* `few_shot`: `support_images` uint8 [K, H, W, 3], `support_masks` uint8
  [K, H, W] or [K, H, W, 1] (0/255 or 0/1 masks, the rule of
  `decode.binarize_mask`) and `query_images` uint8 [Q, H', W', 3] -> the
  query's `probabilities` and `masks`. It adapts inside the graph with the
  update routine in its tensor form (the variables are only read), with the
  exported omega = (lr, steps, batch size, optimizer), so concurrent
  requests never see each other.

Image inputs accept any channel count in the signature so that a wrong one
(RGBA, grey) gets an error that says so instead of a shape mismatch; empty
batches and 0 x 0 images are refused the same way.

A version is written to a temporary folder, made readable as the umask
allows (TF Serving often runs as another user), and renamed, so a crash
never leaves a half-written version for TF Serving to pick up.
"""

import os
import re
import shutil
import tempfile

import keras
import tensorflow as tf

from efficientlab_tf.data import decode
from efficientlab_tf.model.efficientlab import foreground_probability

_FEW_SHOT_SEED = (0, 0)  # Same request, same answer.


def next_version(base_dir):
    """1 + the largest integer-named folder in `base_dir` (1 if none).

    Other entries (`.tmp-*` folders of an export in progress, `latest`, a
    README, names of Unicode digits such as "²") are not versions.
    """
    if not os.path.isdir(base_dir):
        return 1
    versions = [int(d) for d in os.listdir(base_dir)
                if re.fullmatch(r"[0-9]+", d)
                and os.path.isdir(os.path.join(base_dir, d))]
    return max(versions, default=0) + 1


def _outputs(probs):
    return {"probabilities": probs, "masks": tf.cast(probs >= 0.5, tf.uint8)}


def _after(checks, *tensors):
    """`tensors`, computed only once every check in `checks` has passed.

    Assertions are stateful but the ops that read the inputs are not, so
    without this a resize can fail first with a message that names no input.
    """
    with tf.control_dependencies(checks):
        out = [tf.identity(t) for t in tensors]
    return out[0] if len(out) == 1 else out


def _image_checks(images, name):
    """In-graph checks with clear messages for the usual wrong image tensors."""
    shape = tf.shape(images)
    return [
        tf.debugging.assert_equal(
            shape[3], 3, message=f"{name}: images must have 3 channels (RGB); "
            "convert RGBA or grey images to RGB first. Channels received"),
        tf.debugging.assert_positive(
            shape[0], message=f"{name}: the batch is empty (need >= 1 image)"),
        tf.debugging.assert_positive(
            shape[1] * shape[2],
            message=f"{name}: images must have a positive height and width"),
    ]


def _mask_stack(masks):
    """uint8 [K, H, W] or [K, H, W, 1] -> [K, H, W], else a clear error."""
    rank = tf.rank(masks)
    check = tf.debugging.Assert(
        tf.logical_or(tf.equal(rank, 3), tf.logical_and(
            tf.equal(rank, 4), tf.equal(tf.shape(masks)[-1], 1))),
        ["few_shot: support_masks must be uint8 [K, H, W] or [K, H, W, 1]; "
         "got shape", tf.shape(masks)])
    masks = _after([check], masks)
    return tf.ensure_shape(tf.reshape(masks, tf.shape(masks)[:3]),
                           [None, None, None])


def _resize_images(images, size):
    return tf.image.resize(tf.cast(images, tf.float32), [size, size])


def _serve_fn(model, size):
    def serve(images):
        images = _after(_image_checks(images, "serving_default"), images)
        probs = foreground_probability(model(_resize_images(images, size),
                                             training=False))
        probs = tf.image.resize(probs[..., None], tf.shape(images)[1:3])[..., 0]
        return _outputs(probs)

    return serve


def _serve_bytes_fn(model, size, max_pixels):
    def serve_bytes(encoded):
        encoded = _after([tf.debugging.assert_positive(
            tf.size(encoded), message="serve_bytes: no images in the request")],
            encoded)
        hw = tf.map_fn(decode.encoded_image_size, encoded,
                       fn_output_signature=tf.int64)
        encoded = _after([
            tf.debugging.assert_non_negative(
                hw, message="serve_bytes: only JPEG and PNG images are accepted"),
            tf.debugging.assert_less_equal(
                hw[:, 0] * hw[:, 1], tf.constant(max_pixels, tf.int64),
                message=f"serve_bytes: an image is larger than the limit of "
                f"{max_pixels} pixels set at export (height x width read from "
                "its header, before decoding); pixels per image"),
        ], encoded)

        images, hw = tf.map_fn(
            lambda c: decode.decode_image_and_size(c, size), encoded,
            fn_output_signature=(tf.float32, tf.int32))
        probs = foreground_probability(model(images, training=False))
        out = _outputs(probs)
        out.update(heights=hw[:, 0], widths=hw[:, 1])
        return out

    return serve_bytes


def _few_shot_core(adapter, size):
    """The few-shot computation shared by `few_shot` and `few_shot_omega`."""

    def few_shot(support_images, support_masks, query_images, lr, steps):
        support_masks = _mask_stack(support_masks)
        k = tf.shape(support_images)[0]
        checks = [
            tf.debugging.assert_positive(
                k, message="few_shot: support_images is empty (need >= 1 "
                "example)"),
            tf.debugging.assert_equal(
                k, tf.shape(support_masks)[0],
                message="few_shot: support_images and support_masks hold "
                        "different numbers of examples"),
            tf.debugging.assert_equal(
                tf.shape(support_images)[1:3], tf.shape(support_masks)[1:3],
                message="few_shot: support_masks must have the height and "
                        "width of support_images"),
            tf.debugging.assert_positive(
                tf.shape(query_images)[0],
                message="few_shot: query_images is empty"),
        ]
        checks += _image_checks(query_images, "few_shot query")
        checks += _image_checks(support_images, "few_shot support")
        support_images, support_masks, query_images = _after(
            checks, support_images, support_masks, query_images)
        images = _resize_images(support_images, size)
        masks = tf.image.resize(support_masks[..., None], [size, size],
                                method="nearest")
        masks = decode.binarize_mask(masks)  # 0/255 or 0/1, per mask.
        adapted, _ = adapter.adapt(images, masks, lr, steps,
                                   tf.constant(_FEW_SHOT_SEED, tf.int32))
        probs = adapter.predict(adapted, _resize_images(query_images, size))
        probs = tf.image.resize(probs[..., None],
                                tf.shape(query_images)[1:3])[..., 0]
        return _outputs(probs)

    return few_shot


def _few_shot_fn(adapter, size, lr, steps):
    core = _few_shot_core(adapter, size)

    def few_shot(support_images, support_masks, query_images):
        return core(support_images, support_masks, query_images, lr, steps)

    return few_shot


def _few_shot_omega_fn(adapter, size, max_lr, max_steps):
    core = _few_shot_core(adapter, size)

    def few_shot_omega(support_images, support_masks, query_images, lr, steps):
        checks = [
            tf.debugging.assert_positive(
                lr, message="few_shot_omega: lr must be > 0"),
            tf.debugging.assert_less_equal(
                lr, tf.constant(max_lr, tf.float32),
                message=f"few_shot_omega: lr must be <= {max_lr:g}, the limit "
                "set at export; lr received"),
            tf.debugging.assert_non_negative(
                steps, message="few_shot_omega: steps must be >= 0"),
            tf.debugging.assert_less_equal(
                steps, tf.constant(max_steps, tf.int32),
                message=f"few_shot_omega: steps must be <= {max_steps}, the "
                "limit set at export; steps received"),
        ]
        lr, steps = _after(checks, lr, steps)
        return core(support_images, support_masks, query_images, lr, steps)

    return few_shot_omega


def export_saved_model(model, base_dir, image_size, version=None,
                       few_shot_adapter=None, omega=None,
                       max_pixels=decode.MAX_SERVED_PIXELS,
                       max_request_lr=1.0, max_request_steps=200,
                       warmup=True):
    """Exports `model` as `<base_dir>/<version>`; returns that path.

    Args:
        model: The network (images -> logits).
        base_dir: `saved_models/<name>` folder.
        image_size: Network input size S.
        version: Integer version; None = next free one.
        few_shot_adapter: An `Adapter` with `in_place=False` over `model`;
            when given, the `few_shot` signature is added.
        omega: (lr, steps) of the `few_shot` adaptation.
        max_pixels: Largest image (height x width) `serve_bytes` decodes.
        max_request_lr, max_request_steps: Limits of the omega a
            `few_shot_omega` request may ask for.
        warmup: Write `assets.extra/tf_serving_warmup_requests` (one small
            request per signature) so TF Serving traces every signature when
            it loads the version, not on the first user request.

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
        # Channels unconstrained: _image_checks names a wrong count.
        uint8_images = lambda name: tf.TensorSpec(  # noqa: E731
            [None, None, None, None], tf.uint8, name=name)
        # The first endpoint becomes `serving_default`.
        archive.add_endpoint("serve", _serve_fn(model, image_size),
                             input_signature=[uint8_images("images")])
        archive.add_endpoint(
            "serve_bytes", _serve_bytes_fn(model, image_size, max_pixels),
            input_signature=[tf.TensorSpec([None], tf.string, name="encoded")])
        if few_shot_adapter is not None:
            lr, steps = omega
            few_shot_inputs = [
                uint8_images("support_images"),
                tf.TensorSpec(None, tf.uint8, name="support_masks"),
                uint8_images("query_images"),
            ]
            archive.add_endpoint(
                "few_shot",
                _few_shot_fn(few_shot_adapter, image_size,
                             tf.constant(lr, tf.float32),
                             tf.constant(steps, tf.int32)),
                input_signature=few_shot_inputs)
            archive.add_endpoint(
                "few_shot_omega",
                _few_shot_omega_fn(few_shot_adapter, image_size,
                                   float(max_request_lr), int(max_request_steps)),
                input_signature=few_shot_inputs + [
                    tf.TensorSpec([], tf.float32, name="lr"),
                    tf.TensorSpec([], tf.int32, name="steps"),
                ])
        archive.write_out(tmp, verbose=False)
        if warmup:
            from efficientlab_tf.export import warmup as warmup_lib

            warmup_lib.write_warmup(
                tmp, warmup_lib.warmup_requests(
                    os.path.basename(os.path.normpath(base_dir)), image_size,
                    few_shot=few_shot_adapter is not None,
                    omega=omega))
        # mkdtemp makes the folder 0700; give it the umask's usual mode.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final
