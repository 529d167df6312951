"""TF Serving warmup: `assets.extra/tf_serving_warmup_requests` of an export.

TF Serving replays these `PredictionLog` records when it loads a version,
before it marks the version available, so the first user request does not
pay for tracing and graph optimisation ("can be several orders of magnitude
higher" without warmup, TF Serving's SavedModel warmup guide). One small
request per signature, with inputs of the served size S:

* serving_default: one S x S uint8 image;
* serve_bytes: one S x S PNG;
* few_shot: one support image and mask, one query image;
* few_shot_omega: the same with the exported omega as lr [1] and steps [1].

Four records, far under TF Serving's limit of 1,000 warmup records
(`kMaxNumRecords` in tensorflow_serving/servables/tensorflow/
saved_model_warmup_util.cc); a failing record fails the version's load, so
tests replay the file through the model-server emulation.

The file is a TFRecord file of serialized
`tensorflow_serving.apis.prediction_log_pb2.PredictionLog` (package
`tensorflow-serving-api`, a dependency).
"""

import os

import numpy as np
import tensorflow as tf

WARMUP_PATH = os.path.join("assets.extra", "tf_serving_warmup_requests")


def _example_image(size):
    """A deterministic uint8 [1, S, S, 3] gradient image (not all zeros, so
    every branch of the network sees non-trivial activations)."""
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    image = np.stack([ramp[None, :].repeat(size, 0), ramp[:, None].repeat(size, 1),
                      np.full((size, size), 128.0)], axis=-1)
    return image.astype(np.uint8)[None]


def _example_mask(size):
    mask = np.zeros((1, size, size), np.uint8)
    mask[:, size // 4:3 * size // 4, size // 4:3 * size // 4] = 255
    return mask


MAX_RECORDS = 1000  # TF Serving reads no more (saved_model_warmup_util.cc).


def warmup_requests(model_name, image_size, few_shot=True, omega=None):
    """PredictionLog protos, one per signature of an export (`omega`: the
    exported `config.Omega`, needed with `few_shot`)."""
    from tensorflow_serving.apis import model_pb2
    from tensorflow_serving.apis import predict_pb2
    from tensorflow_serving.apis import prediction_log_pb2

    image = _example_image(image_size)
    inputs = {
        "serving_default": {"images": image},
        "serve_bytes": {"encoded": np.array(
            [tf.io.encode_png(image[0]).numpy()], dtype=object)},
    }
    if few_shot:
        shot = {"support_images": image, "support_masks": _example_mask(image_size),
                "query_images": image}
        inputs["few_shot"] = shot
        inputs["few_shot_omega"] = {
            **shot, "lr": np.array([omega.lr], np.float32),
            "steps": np.array([omega.steps], np.int32)}
    logs = []
    for signature, tensors in inputs.items():
        request = predict_pb2.PredictRequest(
            model_spec=model_pb2.ModelSpec(name=model_name,
                                           signature_name=signature))
        for name, value in tensors.items():
            request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
        logs.append(prediction_log_pb2.PredictionLog(
            predict_log=prediction_log_pb2.PredictLog(request=request)))
    return logs


def write_warmup(export_dir, logs):
    """Writes `logs` to <export_dir>/assets.extra/tf_serving_warmup_requests."""
    path = os.path.join(export_dir, WARMUP_PATH)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for log in logs:
            writer.write(log.SerializeToString())
    return path


def read_warmup(export_dir):
    """The PredictionLog protos of an export's warmup file."""
    from tensorflow_serving.apis import prediction_log_pb2

    path = os.path.join(export_dir, WARMUP_PATH)
    return [prediction_log_pb2.PredictionLog.FromString(record.numpy())
            for record in tf.data.TFRecordDataset(path)]
