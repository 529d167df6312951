"""Writes TF Serving SavedModels: `<base>/<version>/` with integer versions.

Signatures (every input of unknown rank, checked in the graph with a
message that names the input; no scalar inputs):

* `serving_default`: uint8 images [N, H, W, 3] of any size -> `probabilities`
  float32 [N, H, W] (target class) and `masks` uint8 [N, H, W] (>= 0.5), at
  the input resolution; images are resized to the network size in the graph.
* `serve_bytes`: encoded JPEG/PNG images, string [N] -> the same outputs at
  the network resolution S x S (images of a batch may differ in size), plus
  each image's `heights` and `widths`. Images over `max_image_pixels`, and
  requests over `max_request_images` or `max_request_pixels` in all, are
  refused from the headers, before decoding.
* `few_shot`: `support_images` uint8 [K, H, W, 3], `support_masks` uint8
  [K, H, W] or [K, H, W, 1] (0/255 or 0/1 masks, the rule of
  `decode.binarize_mask`) and `query_images` uint8 [Q, H', W', 3] -> the
  query's `probabilities` and `masks`. It adapts inside the graph with the
  update routine in its tensor form (the variables are only read), with the
  exported omega = (lr, steps, batch size, optimizer).
* `few_shot_omega`: the same with `lr` float32 [1] and `steps` int32 [1]
  of the request (bounded by the limits set at export).

Request independence, by construction (docs/serving.md, "Batching"): a
request's answer never depends on another request. `serving_default` and
`serve_bytes` decode and resize each request alone, then share one network
core on fixed-size S x S tensors that may batch concurrent requests in the
graph (`BatchFunction`; every image's rows are its own, and a network with
batch statistics runs each image as a batch of one). The few-shot
signatures are never batched across requests. The model server's own
`--enable_batching` is not used: it would concatenate concurrent few-shot
requests into one adaptation and zero-pad images of different sizes before
the in-graph resize.

Image inputs accept any channel count in the signature so that a wrong one
(RGBA, grey) gets an error that says so instead of a shape mismatch; empty
batches and 0 x 0 images are refused the same way.

A version is written to a temporary folder (`.tmp-export-<host>.<pid>-*`,
removed by the next export when its process died), made readable as the
umask allows (TF Serving often runs as another user), and renamed, so a
crash never leaves a half-written version for TF Serving to pick up.
"""

import os
import re
import shutil
import tempfile

import keras
import tensorflow as tf
from absl import logging

from efficientlab_tf import storage
from efficientlab_tf.config import ExportConfig
from efficientlab_tf.config import Omega
from efficientlab_tf.data import decode
from efficientlab_tf.model.efficientlab import foreground_probability

_FEW_SHOT_SEED = (0, 0)  # Same request, same answer.
EXPORT_TMP = ".tmp-export-"  # + storage.temp_prefix's <host>.<pid>-
# Queue bound of the in-graph batching: beyond 64 waiting batches a request
# fails at once (UNAVAILABLE) instead of waiting.
MAX_ENQUEUED_BATCHES = 64


def next_version(base_dir):
    """1 + the largest integer-named folder in `base_dir` (1 if none).

    Other entries (`.tmp-export-*` folders of an export in progress, `latest`, a
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


def _rank_checks(tensor, ranks, name, expected):
    """(rank ok, [the rank check]): an error naming the input and the
    expected shape when `tensor`'s rank is not one of `ranks`."""
    ok = tf.reduce_any(tf.equal(tf.rank(tensor), tf.constant(ranks, tf.int32)))
    return ok, [tf.debugging.Assert(
        ok, [f"{name} must be {expected}; got a tensor of shape",
             tf.shape(tensor)])]


def _unless_rank_wrong(ok, condition, message, *data):
    """A check that holds whenever the rank is wrong, so the rank error is
    the one reported (checks run in any order; a shape read of a tensor of
    the wrong rank would otherwise fail with a message that names nothing)."""
    return tf.debugging.Assert(tf.logical_or(tf.logical_not(ok), condition),
                               [message, *data])


def _shape4(tensor):
    """The first four dimensions of `tensor`, 1 where it has fewer."""
    return tf.concat([tf.shape(tensor), tf.ones([4], tf.int32)], 0)[:4]


def _checked_images(images, name, max_images=None):
    """uint8 [N, H, W, 3] with N, H, W >= 1 (at most `max_images`), else an
    error that names `name`: rank, channels, empty batch, 0 x 0 images."""
    ok, checks = _rank_checks(images, [4], name, "uint8 [N, H, W, 3] (a batch "
                              "of RGB images)")
    shape = _shape4(images)
    checks += [
        _unless_rank_wrong(
            ok, tf.equal(shape[3], 3), f"{name}: images must have 3 channels "
            "(RGB); convert RGBA or grey images to RGB first. Channels "
            "received:", shape[3]),
        _unless_rank_wrong(ok, shape[0] > 0, f"{name}: the batch is empty "
                           "(need >= 1 image)"),
        _unless_rank_wrong(ok, shape[1] * shape[2] > 0, f"{name}: images must "
                           "have a positive height and width; got",
                           shape[1:3]),
    ]
    if max_images is not None:
        checks.append(_unless_rank_wrong(
            ok, shape[0] <= max_images, f"{name}: more than {max_images} "
            "images in one request (the limit set at export); images "
            "received:", shape[0]))
    # A reshape, not tf.ensure_shape, gives the static rank: Grappler takes
    # an EnsureShape's claim back to the input and folds the rank check away.
    images = _after(checks, images)
    shape = _shape4(images)
    return tf.reshape(images, tf.stack([shape[0], shape[1], shape[2], 3]))


def _mask_stack(masks):
    """uint8 [K, H, W] or [K, H, W, 1] -> [K, H, W], else a clear error."""
    expected = "uint8 [K, H, W] or [K, H, W, 1]"
    ok, checks = _rank_checks(masks, [3, 4], "few_shot: support_masks", expected)
    channels = tf.where(tf.equal(tf.rank(masks), 4), _shape4(masks)[3], 1)
    checks.append(_unless_rank_wrong(
        ok, tf.equal(channels, 1), f"few_shot: support_masks must be "
        f"{expected}; channels received:", channels))
    masks = _after(checks, masks)
    return tf.ensure_shape(tf.reshape(masks, tf.shape(masks)[:3]),
                           [None, None, None])


def _resize_images(images, size):
    return tf.image.resize(tf.cast(images, tf.float32), [size, size])


def _uses_batch_statistics(model):
    """Whether a layer of `model` normalises with the statistics of the
    batch it sees at inference (`--bn_mode=batch`)."""
    return any(getattr(layer, "batch_stats", False)
               for layer in model._flatten_layers())  # noqa: SLF001


def _network_core(model, limits):
    """float32 [n, S, S, 3] -> target probabilities [n, S, S]: the one
    network call of `serving_default` and `serve_bytes`.

    Each image's answer depends on that image alone, so the core may batch
    images of concurrent requests: with `limits.serve_batch_size` > 0 it is
    an in-graph `BatchFunction` (a core TensorFlow op, so TF Serving runs it
    without --enable_batching) that gathers the fixed-size tensors of
    concurrent calls to either signature, runs them as one batch, and hands
    each call its own rows back. A network that normalises with batch
    statistics (`--bn_mode=batch`) runs each image as a batch of one, so a
    served image is normalised by its own statistics whatever the batch.
    """
    per_image = _uses_batch_statistics(model)

    def core(images):
        if per_image:
            probs = tf.map_fn(
                lambda x: foreground_probability(
                    model(x[None], training=False))[0],
                images, fn_output_signature=tf.float32)
        else:
            probs = foreground_probability(model(images, training=False))
        return probs

    if not limits.serve_batch_size:
        return core
    # max_batch_size bounds one call's images (a whole request, up to
    # max_request_images); allowed_batch_sizes bounds what runs at once:
    # with large-batch splitting (the op's default) a request of more images
    # than serve_batch_size is split into batches of at most that many. Every
    # size up to it is allowed, so a batch is never padded with extra rows.
    batched = tf.nondifferentiable_batch_function(
        num_batch_threads=limits.serve_batch_threads,
        max_batch_size=max(limits.max_request_images, limits.serve_batch_size),
        allowed_batch_sizes=list(range(1, limits.serve_batch_size + 1)),
        enable_large_batch_splitting=True,
        batch_timeout_micros=limits.serve_batch_timeout_micros,
        max_enqueued_batches=MAX_ENQUEUED_BATCHES)(core)
    return lambda images: tf.ensure_shape(batched(images), images.shape[:3])


def _serve_fn(core, size, max_images):
    def serve(images):
        images = _checked_images(images, "serving_default: images", max_images)
        probs = core(_resize_images(images, size))
        probs = tf.image.resize(probs[..., None], tf.shape(images)[1:3])[..., 0]
        return _outputs(probs)

    return serve


def _serve_bytes_fn(core, size, limits):
    def serve_bytes(encoded):
        name = "serve_bytes: encoded"
        ok, checks = _rank_checks(encoded, [1], name,
                                  "string [N] (a list of encoded images)")
        count = tf.size(encoded)
        encoded = _after(checks + [
            _unless_rank_wrong(ok, count > 0,
                               "serve_bytes: no images in the request"),
            _unless_rank_wrong(
                ok, count <= limits.max_request_images,
                f"serve_bytes: more than {limits.max_request_images} images in "
                "one request (the limit set at export); images received:",
                count),
        ], encoded)
        hw = tf.map_fn(decode.encoded_image_size, encoded,
                       fn_output_signature=tf.int64)
        encoded = _after([
            tf.debugging.assert_non_negative(
                hw, message="serve_bytes: only JPEG and PNG images are accepted"),
            tf.debugging.assert_less_equal(
                hw[:, 0] * hw[:, 1], tf.constant(limits.max_image_pixels, tf.int64),
                message=f"serve_bytes: an image is larger than the limit of "
                f"{limits.max_image_pixels} pixels set at export (height x width read "
                "from its header, before decoding); pixels per image"),
            tf.debugging.assert_less_equal(
                tf.reduce_sum(hw[:, 0] * hw[:, 1]),
                tf.constant(limits.max_request_pixels, tf.int64),
                message=f"serve_bytes: the images of the request hold more than "
                f"{limits.max_request_pixels} pixels in all (the limit set at "
                "export, read from their headers before decoding); pixels "
                "received"),
        ], encoded)

        images, hw = tf.map_fn(
            lambda c: decode.decode_image_and_size(c, size), encoded,
            fn_output_signature=(tf.float32, tf.int32))
        out = _outputs(core(images))
        out.update(heights=hw[:, 0], widths=hw[:, 1])
        return out

    return serve_bytes


def _adapt_and_predict_fn(adapter, size, per_image=False):
    """U(theta; support, omega), then the queries' probabilities: one
    tf.function on S x S tensors that both few-shot signatures call, so the
    adaptation loop is traced and stored once (an export traced it twice).

    The support set is adapted to once per request; each query is predicted
    on its own account: with `per_image` (a network that normalises with
    batch statistics) each query runs as a batch of one, as in
    `serving_default`, so a photo's mask never depends on the other photos
    of its request. (The evaluation protocol's query sets are still
    normalised together: an evaluation choice, never a serving one.)
    """

    @tf.function(input_signature=[
        tf.TensorSpec([None, size, size, 3], tf.float32),
        tf.TensorSpec([None, size, size, 1], tf.float32),
        tf.TensorSpec([None, size, size, 3], tf.float32),
        tf.TensorSpec([], tf.float32), tf.TensorSpec([], tf.int32)])
    def adapt_and_predict(images, masks, queries, lr, steps):
        adapted, _ = adapter.adapt(images, masks, lr, steps,
                                   tf.constant(_FEW_SHOT_SEED, tf.int32))
        if per_image:
            probs = tf.map_fn(lambda q: adapter.predict(adapted, q[None])[0],
                              queries, fn_output_signature=tf.float32)
        else:
            probs = adapter.predict(adapted, queries)
        return tf.debugging.check_numerics(
            probs, "few_shot: the adapted network predicts NaN/Inf (lower lr)")

    return adapt_and_predict


def _few_shot_core(adapt_and_predict, size, max_images):
    """The few-shot computation shared by `few_shot` and `few_shot_omega`:
    input checks, resizes, then `adapt_and_predict`."""

    def few_shot(support_images, support_masks, query_images, lr, steps):
        support_images = _checked_images(
            support_images, "few_shot: support_images", max_images)
        query_images = _checked_images(
            query_images, "few_shot: query_images", max_images)
        support_masks = _mask_stack(support_masks)
        k = tf.shape(support_images)[0]
        checks = [
            tf.debugging.assert_equal(
                k, tf.shape(support_masks)[0],
                message="few_shot: support_images and support_masks hold "
                        "different numbers of examples"),
            tf.debugging.assert_equal(
                tf.shape(support_images)[1:3], tf.shape(support_masks)[1:3],
                message="few_shot: support_masks must have the height and "
                        "width of support_images"),
        ]
        support_images, support_masks, query_images = _after(
            checks, support_images, support_masks, query_images)
        images = _resize_images(support_images, size)
        masks = tf.image.resize(support_masks[..., None], [size, size],
                                method="nearest")
        masks = decode.binarize_mask(masks)  # 0/255 or 0/1, per mask.
        probs = adapt_and_predict(images, masks, _resize_images(query_images, size),
                                  lr, steps)
        probs = tf.image.resize(probs[..., None],
                                tf.shape(query_images)[1:3])[..., 0]
        return _outputs(probs)

    return few_shot


def _few_shot_fn(adapt_and_predict, size, omega, max_images):
    core = _few_shot_core(adapt_and_predict, size, max_images)
    lr = tf.constant(omega.lr, tf.float32)
    steps = tf.constant(omega.steps, tf.int32)

    def few_shot(support_images, support_masks, query_images):
        return core(support_images, support_masks, query_images, lr, steps)

    return few_shot


def _one_value(tensor, name, expected):
    """The one element of a [1] input (no scalar inputs: TF Serving's
    batching refuses rank-0 tensors), else an error naming the input."""
    ok, checks = _rank_checks(tensor, [1], name, expected)
    checks.append(_unless_rank_wrong(
        ok, tf.equal(tf.size(tensor), 1), f"{name} must hold exactly one value "
        f"({expected}); values received:", tf.size(tensor)))
    return _after(checks, tensor)[0]


def _few_shot_omega_fn(adapt_and_predict, size, limits):
    core = _few_shot_core(adapt_and_predict, size, limits.max_request_images)
    max_lr, max_steps = limits.max_request_lr, limits.max_request_steps

    def few_shot_omega(support_images, support_masks, query_images, lr, steps):
        lr = _one_value(lr, "few_shot_omega: lr", "float32 [1], e.g. [0.01]")
        steps = _one_value(steps, "few_shot_omega: steps", "int32 [1], e.g. [8]")
        checks = [
            # NaN fails `lr > 0`, so it is refused here too.
            tf.debugging.assert_positive(
                lr, message="few_shot_omega: lr must be > 0 (and finite)"),
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


RECORD = os.path.join("assets.extra", "efficientlab_export.json")


def write_record(path, image_size, omega, limits):
    """`assets.extra/efficientlab_export.json` of the version at `path`: the
    network size S, the `few_shot` omega and the request limits, so an
    in-process caller (`export/segmenter.py`) checks a request before the
    first call instead of meeting an in-graph error. (assets.extra is the
    SavedModel folder for files beside the graph; TF Serving reads only
    its warmup file there.)"""
    storage.write_json(os.path.join(path, RECORD), {
        "image_size": int(image_size),
        "omega": omega.to_dict() if omega is not None else None,
        "limits": {k: getattr(limits, k) for k in (
            "max_request_lr", "max_request_steps", "max_request_images",
            "max_request_pixels", "max_image_pixels")},
    })


def read_record(path):
    """The dict `write_record` wrote in the SavedModel at `path`, or None
    (an export of an earlier version of the package, or a foreign model)."""
    import json

    try:
        with open(os.path.join(path, RECORD)) as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and "image_size" in record else None


def export_saved_model(model, base_dir, image_size, version=None,
                       few_shot_adapter=None, omega=None, limits=None,
                       warmup=True):
    """Exports `model` as `<base_dir>/<version>`; returns that path.

    Args:
        model: The network (images -> logits).
        base_dir: `saved_models/<name>` folder.
        image_size: Network input size S.
        version: Integer version; None = next free one.
        few_shot_adapter: An `Adapter` with `in_place=False` over `model`;
            when given, the `few_shot` and `few_shot_omega` signatures are
            added.
        omega: `config.Omega` of the `few_shot` adaptation (lr and steps are
            exported; batch size, optimizer and scope are the adapter's).
        limits: `config.ExportConfig`: request limits and in-graph batching
            (default: its defaults).
        warmup: Write `assets.extra/tf_serving_warmup_requests` (one small
            request per signature) so TF Serving traces every signature when
            it loads the version, not on the first user request.

    Raises:
        FileExistsError: the version folder already exists.
        ValueError: a few-shot adapter that writes variables, or an omega
            outside the request limits.
    """
    limits = limits or ExportConfig()
    version = next_version(base_dir) if version is None else int(version)
    final = os.path.join(base_dir, str(version))
    if os.path.exists(final):
        raise FileExistsError(f"export version folder {final!r} already exists.")
    if few_shot_adapter is not None:
        if few_shot_adapter.in_place:
            raise ValueError("the few_shot signature needs an Adapter with "
                             "in_place=False (served variables must not change).")
        if not isinstance(omega, Omega):
            raise TypeError(f"`omega` must be a config.Omega; got {omega!r}.")
        if (omega.lr > limits.max_request_lr
                or omega.steps > limits.max_request_steps):
            raise ValueError(
                f"the exported omega (lr {omega.lr:g}, {omega.steps} steps) "
                "exceeds the request limits set at export (--max_request_lr="
                f"{limits.max_request_lr:g}, --max_request_steps="
                f"{limits.max_request_steps}); raise them or lower the omega.")
    storage.check_writable(base_dir, "the SavedModel")
    # Versions of an export killed earlier on this host (kill -9 skips the
    # cleanup below); an export running now keeps its folder.
    for name in storage.remove_stale(base_dir, EXPORT_TMP):
        logging.info("Removed %s, left in %s by an interrupted export.",
                     name, base_dir)
    with storage.writing("the SavedModel", final):
        tmp = tempfile.mkdtemp(prefix=storage.temp_prefix(EXPORT_TMP), dir=base_dir)
    try:
        archive = keras.export.ExportArchive()
        archive.track(model)
        # Inputs of unknown rank: the in-graph checks name a wrong rank,
        # channel count or size instead of a shape mismatch deep inside.
        uint8_any = lambda name: tf.TensorSpec(None, tf.uint8, name=name)  # noqa: E731
        core = _network_core(model, limits)
        # Named `serving_default` itself: Keras aliases the first endpoint as
        # serving_default unless one has that name, and an endpoint named
        # otherwise would be served twice (a fifth, unwarmed signature).
        archive.add_endpoint(
            "serving_default", _serve_fn(core, image_size, limits.max_request_images),
            input_signature=[uint8_any("images")])
        archive.add_endpoint(
            "serve_bytes", _serve_bytes_fn(core, image_size, limits),
            input_signature=[tf.TensorSpec(None, tf.string, name="encoded")])
        if few_shot_adapter is not None:
            few_shot_inputs = [uint8_any("support_images"),
                               uint8_any("support_masks"),
                               uint8_any("query_images")]
            adapt_and_predict = _adapt_and_predict_fn(
                few_shot_adapter, image_size, _uses_batch_statistics(model))
            archive.add_endpoint(
                "few_shot",
                _few_shot_fn(adapt_and_predict, image_size, omega,
                             limits.max_request_images),
                input_signature=few_shot_inputs)
            archive.add_endpoint(
                "few_shot_omega",
                _few_shot_omega_fn(adapt_and_predict, image_size, limits),
                input_signature=few_shot_inputs + [
                    # One value each: the declared shape is what the model
                    # server's metadata shows a client.
                    tf.TensorSpec([1], tf.float32, name="lr"),
                    tf.TensorSpec([1], tf.int32, name="steps"),
                ])
        with storage.writing("the SavedModel", final):
            archive.write_out(tmp, verbose=False)
            write_record(tmp, image_size, omega if few_shot_adapter else None,
                         limits)
        if warmup:
            from efficientlab_tf.export import warmup as warmup_lib  # noqa: PLC0415

            with storage.writing("the TF Serving warmup requests", final):
                warmup_lib.write_warmup(
                    tmp, warmup_lib.warmup_requests(
                        os.path.basename(os.path.normpath(base_dir)),
                        image_size, few_shot=few_shot_adapter is not None,
                        omega=omega))
        # mkdtemp makes the folder 0700; give it the umask's usual mode.
        with storage.writing("the SavedModel", final):
            os.chmod(tmp, storage.usual_mode(0o777))
            os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final
