"""TF Serving client: send images, write the predicted masks as PNGs.

REST (TF Serving's predict API, columnar "inputs" format, port 8501) needs
only the standard library; gRPC (port 8500) needs the `serving` extra
(`pip install efficientlab-tf[serving]`, i.e. tensorflow-serving-api).
One request per image, so images of any size can be sent.

    efficientlab-client --server=localhost:8501 --model=efficientlab \
        --images=a.jpg,b.png --out_dir=masks
"""

import json
import os
import re
import socket
import urllib.error
import urllib.request

import numpy as np
from PIL import Image
from efficientlab_tf import io


def load_image(path):
    """uint8 [H, W, 3] from an image file (a clear error if unreadable)."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), np.uint8)
    except FileNotFoundError:
        raise FileNotFoundError(f"image {path!r} does not exist.") from None
    except Exception as e:
        raise ValueError(f"image {path!r} cannot be decoded: {e}") from None


def check_image(image, name="image"):
    """uint8 [H, W, 3] or a ValueError/TypeError that says what is wrong."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise TypeError(f"{name} must be uint8; got {image.dtype}.")
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"{name} must have shape [H, W, 3]; got {image.shape}.")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"{name} is empty: shape {image.shape}.")
    return image


def rest_request_body(image, signature="serving_default"):
    """TF Serving predict request (columnar) for one image: a JSON-able dict."""
    image = check_image(image)
    return {"signature_name": signature, "inputs": {"images": [image.tolist()]}}


def masks_from_rest_response(response):
    """(probabilities [H, W] float32, mask [H, W] uint8) of one image."""
    outputs = response.get("outputs")
    if not isinstance(outputs, dict) or "masks" not in outputs:
        raise ValueError(
            "TF Serving response has no 'outputs.masks'; got keys "
            f"{sorted(response)}: {str(response)[:200]}")
    probs = np.asarray(outputs["probabilities"], np.float32)[0]
    masks = np.asarray(outputs["masks"], np.uint8)[0]
    return probs, masks


def check_server(server):
    """`host:port` (port 1-65535) or a ValueError saying what is expected."""
    match = re.fullmatch(r"(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+):([0-9]{1,5})",
                         server or "")
    if not match or not 0 < int(match.group(2)) < 65536:
        raise ValueError(
            f"--server must be host:port, e.g. localhost:8501 (REST) or "
            f"localhost:8500 (gRPC), without http://; got {server!r}.")
    return server


def predict_rest(server, model, image, version=None, timeout=60):
    """POST one image to TF Serving's REST API; returns (probs, mask)."""
    check_server(server)
    path = f"/v1/models/{model}" + (f"/versions/{version}" if version else "")
    url = f"http://{server}{path}:predict"
    data = json.dumps(rest_request_body(image)).encode()
    request = urllib.request.Request(
        url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return masks_from_rest_response(json.load(resp))
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


def grpc_request(image, model, signature="serving_default"):
    """A tensorflow_serving PredictRequest for one image."""
    try:
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2
    except ImportError:
        raise ImportError(
            "gRPC needs tensorflow-serving-api: pip install "
            "'efficientlab-tf[serving]'") from None
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    request.inputs["images"].CopyFrom(
        tf.make_tensor_proto(check_image(image)[None]))
    return request


def predict_grpc(server, model, image, timeout=60):
    """Calls TF Serving's gRPC Predict; returns (probs, mask)."""
    request = grpc_request(image, model)
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
    probs = tf.make_ndarray(response.outputs["probabilities"])[0]
    masks = tf.make_ndarray(response.outputs["masks"])[0]
    return probs, masks


def write_mask_png(mask, path):
    """Writes a {0, 1} mask as a 0/255 PNG, atomically."""
    with io.atomic_path(path) as tmp:
        Image.fromarray((np.asarray(mask) > 0).astype(np.uint8) * 255,
                        "L").save(tmp, format="PNG")


def run_client(server, model, image_paths, out_dir, protocol="rest"):
    """Segments every image; writes <out_dir>/<stem>_mask.png; returns paths."""
    check_server(server)
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for path in image_paths:
        image = load_image(path)
        if protocol == "grpc":
            _, mask = predict_grpc(server, model, image)
        else:
            _, mask = predict_rest(server, model, image)
        stem = os.path.splitext(os.path.basename(path))[0]
        out = os.path.join(out_dir, f"{stem}_mask.png")
        write_mask_png(mask, out)
        written.append(out)
    return written
