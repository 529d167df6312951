"""TF Serving client: send images, write the predicted masks as PNGs.

Signatures (`--signature`):

* `serve_bytes` (default): each image file's encoded bytes, sent as TF
  Serving's `{"b64": ...}` JSON form (REST) or a string tensor (gRPC); the
  mask comes back at the network resolution with the image's size and is
  resized to it (nearest). A JPEG is a fraction of its raw-pixel JSON
  (docs/serving.md has the measured sizes).
* `serving_default`: decoded uint8 pixels as JSON numbers (any size; masks
  come back at the input size).
* `few_shot`: `--support=<folder of <n>.jpg + <n>.png>` is sent with the
  query images; the server adapts to the support set inside the request.
  With `--lr`/`--steps` the `few_shot_omega` signature adapts with that omega
  instead of the exported one (bounded by the limits fixed at export).

REST (TF Serving's predict API, columnar "inputs" format, port 8501) needs
only the standard library; gRPC (port 8500) uses tensorflow-serving-api.
`--label=stable|canary` picks a labelled version (models.config).

    efficientlab-client --server=localhost:8501 --images=a.jpg,b.png --out_dir=masks
"""

import base64
import json
import os
import re
import socket
import urllib.error
import urllib.request

import numpy as np
from PIL import Image

from efficientlab_tf import storage
from efficientlab_tf.export import photos
from efficientlab_tf.export.photos import mask_names
from efficientlab_tf.export.photos import write_mask_png

SIGNATURES = ("serve_bytes", "serving_default", "few_shot")


# Longest side of an image the client sends: the network resizes every
# image to S x S (S <= 1024), so larger pixels only cost JSON (a 4032 px
# photo as JSON numbers was 1.3 GB); masks come back at the photo's size.
MAX_SIDE = 1024


def load_image(path):
    """uint8 [H, W, 3], upright (`photos.read_photo`: one decode, EXIF
    orientation, size limits); FileNotFoundError or photos.BadFile."""
    if not os.path.lexists(path):
        raise FileNotFoundError(f"image {path!r} does not exist.")
    return photos.read_photo(path)


def fit(image, side=MAX_SIDE, resample=Image.BILINEAR):
    """`image` (uint8 [H, W, ...]) with its longer side at most `side`."""
    height, width = image.shape[:2]
    scale = side / max(height, width)
    if scale >= 1:
        return image
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(image).resize(size, resample))


def check_server(server):
    """`host:port` (port 1-65535) or a ValueError saying what is expected."""
    match = re.fullmatch(r"(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+):([0-9]{1,5})",
                         server or "")
    if not match or not 0 < int(match.group(2)) < 65536:
        raise ValueError(
            f"--server must be host:port, e.g. localhost:8501 (REST) or "
            f"localhost:8500 (gRPC), without http://; got {server!r}.")
    return server


# --- request bodies (REST, columnar "inputs" format) -------------------------

def rest_request_body(image, signature="serving_default"):
    """Predict request for one decoded image: a JSON-able dict."""
    image = photos.check_image(image, "image")
    return {"signature_name": signature, "inputs": {"images": [image.tolist()]}}


def rest_bytes_body(encoded):
    """serve_bytes request for encoded images, in TF Serving's b64 form."""
    return {"signature_name": "serve_bytes", "inputs": {"encoded": [
        {"b64": base64.b64encode(e).decode("ascii")} for e in encoded]}}


def read_support(folder, skip_bad=False):
    """(images uint8 [K, H, W, 3], masks uint8 {0, 1} [K, H, W]) of a folder
    of <n>.jpg + <n>.png pairs (`photos.read_support`), as one support tensor
    for a request (`stack_support`)."""
    images, masks, _ = photos.read_support(folder, skip_bad)
    return stack_support(images, masks)


def stack_support(images, masks):
    """One support tensor for a request: (images uint8 [K, H, W, 3], masks
    uint8 [K, H, W]). Every pair is resized to the largest height and width
    among the pairs (each side at most MAX_SIDE): images bilinear, masks
    nearest; a small first pair never shrinks the others."""
    images = [fit(photos.check_image(x, f"support image {i}"))
              for i, x in enumerate(images)]
    masks = [fit(np.asarray(m, np.uint8), resample=Image.NEAREST) for m in masks]
    height = max(x.shape[0] for x in images)
    width = max(x.shape[1] for x in images)
    return (np.stack([np.asarray(Image.fromarray(x).resize((width, height), Image.BILINEAR))
                      for x in images]),
            np.stack([np.asarray(Image.fromarray(m).resize((width, height), Image.NEAREST))
                      for m in masks]))


def few_shot_body(support_images, support_masks, query_images, lr=None,
                  steps=None):
    """few_shot (or, with lr and steps, few_shot_omega) request."""
    inputs = {"support_images": np.asarray(support_images).tolist(),
              "support_masks": np.asarray(support_masks).tolist(),
              "query_images": np.asarray(query_images).tolist()}
    signature = "few_shot"
    if lr is not None or steps is not None:
        if lr is None or steps is None:
            raise ValueError("--lr and --steps go together (few_shot_omega).")
        # [1] vectors: the signature has no scalar inputs (issue 23).
        inputs.update(lr=[float(lr)], steps=[int(steps)])
        signature = "few_shot_omega"
    return {"signature_name": signature, "inputs": inputs}


def few_shot_masks(protocol, server, model, support, queries, lr=None,
                   steps=None, label=None, names=None):
    """few_shot (few_shot_omega with lr and steps) requests, one per query
    (so no photo's mask depends on another's, or on another's size): masks
    uint8 [H, W] of `queries` (uint8 [H, W, 3]), each at its own size.
    `support`: (images [K, H, W, 3], masks [K, H, W]) as `read_support`
    gives. (`efficientlab segment` adapts once per chunk of photos instead,
    in-process: export/segmenter.py.)"""
    support_images, support_masks = support
    names = names or [f"query {i}" for i in range(len(queries))]
    out_masks = []
    for name, query in zip(names, queries):
        sent = fit(query)[None]
        body = few_shot_body(support_images, support_masks, sent, lr, steps)
        dtypes = {"lr": np.float32, "steps": np.int32}
        inputs = {k: np.asarray(v, dtypes.get(k, np.uint8))
                  for k, v in body["inputs"].items()}
        out = _call(protocol, server, model, body["signature_name"], inputs,
                    body, label)
        answered = np.asarray(out["masks"])
        if answered.ndim != 3 or len(answered) != 1:
            raise ValueError(f"TF Serving returned masks of shape "
                             f"{answered.shape} for one query image.")
        out_masks.append(_mask_at(answered[0], *query.shape[:2], name,
                                  sent.shape[1:3]))
    return out_masks


def outputs_of(response):
    """The "outputs" dict of a REST response (clear error otherwise)."""
    outputs = response.get("outputs") if isinstance(response, dict) else None
    if not isinstance(outputs, dict) or "masks" not in outputs:
        keys = sorted(response) if isinstance(response, dict) else type(response)
        raise ValueError(
            f"TF Serving response has no 'outputs.masks'; got keys {keys}: "
            f"{str(response)[:200]}")
    return outputs


def masks_from_rest_response(response):
    """(probabilities [H, W] float32, mask [H, W] uint8) of one image."""
    outputs = outputs_of(response)
    probs = np.asarray(outputs["probabilities"], np.float32)[0]
    masks = np.asarray(outputs["masks"], np.uint8)[0]
    return probs, masks


# --- transport ---------------------------------------------------------------

def _url(server, model, label=None):
    check_server(server)
    path = f"/v1/models/{model}" + (f"/labels/{label}" if label else "")
    return f"http://{server}{path}:predict"


def post_rest(server, model, body, label=None, timeout=60):
    """POSTs a predict request; returns the decoded JSON response."""
    url = _url(server, model, label)
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return json.load(resp)
    except urllib.error.HTTPError as e:
        raise RuntimeError(f"TF Serving at {url} answered {e.code}: "
                           f"{e.read().decode(errors='replace')[:500]}") from None
    except urllib.error.URLError as e:
        if isinstance(e.reason, (TimeoutError, socket.timeout)):
            raise ConnectionError(f"TF Serving at {url} did not answer within "
                                  f"{timeout} s.") from None
        raise ConnectionError(f"cannot reach TF Serving at {url}: {e.reason}") from None
    except (TimeoutError, socket.timeout):
        raise ConnectionError(f"TF Serving at {url} did not answer within "
                              f"{timeout} s.") from None
    except (ConnectionError, OSError) as e:
        raise ConnectionError(f"connection to TF Serving at {url} failed: "
                              f"{e}") from None


def predict_rest(server, model, image, label=None, timeout=60):
    """serving_default over REST for one decoded image; returns (probs, mask)."""
    return masks_from_rest_response(
        post_rest(server, model, rest_request_body(image), label, timeout))


def grpc_request(inputs, model, signature="serving_default", label=None):
    """A tensorflow_serving PredictRequest with `inputs` {name: array}."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    if label:
        request.model_spec.version_label = label
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
    return request


def post_grpc(server, request, timeout=60):
    """Calls TF Serving's gRPC Predict; returns {output name: array}."""
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    check_server(server)
    with grpc.insecure_channel(server) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        try:
            response = stub.Predict(request, timeout)
        except grpc.RpcError as e:
            code, details = e.code(), (e.details() or "").splitlines()[:1]
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise ConnectionError(f"TF Serving (gRPC) at {server} did not "
                                      f"answer within {timeout} s.") from None
            if code == grpc.StatusCode.UNAVAILABLE:
                raise ConnectionError(f"cannot reach TF Serving (gRPC) at "
                                      f"{server}: {' '.join(details)}") from None
            raise RuntimeError(f"TF Serving (gRPC) at {server} answered "
                               f"{code.name}: {' '.join(details)}") from None
    return {k: tf.make_ndarray(v) for k, v in response.outputs.items()}


def predict_grpc(server, model, image, timeout=60):
    """serving_default over gRPC for one decoded image; returns (probs, mask)."""
    out = post_grpc(server, grpc_request({"images": photos.check_image(image, "image")[None]},
                                         model), timeout)
    return out["probabilities"][0], out["masks"][0]


def _call(protocol, server, model, signature, inputs, rest_body, label):
    """{output: array} of one request over REST (`rest_body`) or gRPC."""
    if protocol == "grpc":
        return post_grpc(server, grpc_request(inputs, model, signature, label))
    outputs = outputs_of(post_rest(server, model, rest_body, label))
    return {k: np.asarray(v) for k, v in outputs.items()}


def _mask_at(mask, height, width, path, expected=None):
    """The server's mask for `path` at the image's own size (height, width,
    decoded here, never taken from the server), after checking it is a 2-D
    mask of the `expected` shape (the network size or the image's)."""
    mask = np.asarray(mask)
    if mask.ndim != 2 or (expected is not None and mask.shape != tuple(expected)):
        raise ValueError(
            f"TF Serving returned a mask of shape {mask.shape} for {path!r}; "
            f"expected {tuple(expected) if expected else 'a 2-D mask'}. Is "
            "--model an EfficientLab export?")
    if mask.shape == (height, width):
        return mask.astype(np.uint8)
    return np.asarray(Image.fromarray(mask.astype(np.uint8)).resize(
        (width, height), Image.NEAREST))


def segment(server, model, image_paths, protocol="rest", signature="serve_bytes",
            support=None, lr=None, steps=None, label=None):
    """{image path: mask uint8 [H, W] at the image's size}. `protocol` is
    "rest" or "grpc"."""
    if signature not in SIGNATURES:
        raise ValueError(f"--signature must be one of {list(SIGNATURES)}; got "
                         f"{signature!r}.")
    check_server(server)
    masks = {}
    if signature == "few_shot":
        if support is None or (isinstance(support, str) and not support):
            raise ValueError("--signature=few_shot needs --support=<folder of "
                             "<n>.jpg + <n>.png pairs>.")
        # A folder, or its (images, masks) already read (`read_support`).
        support = read_support(support) if isinstance(support, str) else support
        queries = [load_image(p) for p in image_paths]
        answered = few_shot_masks(protocol, server, model, support, queries, lr,
                                  steps, label, image_paths)
        return dict(zip(image_paths, answered))
    for path in image_paths:
        if signature == "serve_bytes":
            image = load_image(path)  # Its own size, never the server's.
            with open(path, "rb") as f:
                encoded = f.read()
            out = _call(protocol, server, model, "serve_bytes",
                        {"encoded": np.array([encoded], dtype=object)},
                        rest_bytes_body([encoded]), label)
            mask = np.asarray(out["masks"])[0]
            # serve_bytes answers at the network size S x S (square).
            masks[path] = _mask_at(mask, *image.shape[:2], path,
                                   (mask.shape[0], mask.shape[0]))
        else:
            image = load_image(path)
            out = _call(protocol, server, model, "serving_default",
                        {"images": photos.check_image(image, path)[None]},
                        rest_request_body(image), label)
            masks[path] = _mask_at(np.asarray(out["masks"])[0], *image.shape[:2],
                                   path, image.shape[:2])
    return masks


def run_client(server, model, image_paths, out_dir, protocol="rest",
               signature="serve_bytes", support=None, lr=None, steps=None,
               label=None):
    """Segments every image; writes <out_dir>/<name>_mask.png (`mask_names`);
    returns the written paths."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(f"--out_dir {out_dir!r} exists and is not a folder.")
    names = mask_names(image_paths)
    masks = segment(server, model, image_paths, protocol, signature, support,
                    lr, steps, label)
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for path in dict.fromkeys(image_paths):
        out = os.path.join(out_dir, names[path])
        write_mask_png(masks[path], out)
        written.append(out)
    return written
