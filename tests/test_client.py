"""The TF Serving client against a loopback server that answers like TF Serving."""

import http.server
import json
import os
import socket
import tempfile
import threading

import numpy as np
import tensorflow as tf
from PIL import Image

from efficientlab_tf.export import client
from tests.test_export import export_tiny


class FakeServing(http.server.BaseHTTPRequestHandler):
    """POST /v1/models/<name>:predict evaluated on a loaded SavedModel."""

    loaded = None

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        signature = self.loaded.signatures[body["signature_name"]]
        inputs = {k: tf.constant(np.asarray(v, np.uint8))
                  for k, v in body["inputs"].items()}
        outputs = {k: v.numpy().tolist() for k, v in signature(**inputs).items()}
        data = json.dumps({"outputs": outputs}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


class ClientTest(tf.test.TestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        _, _, _, path = export_tiny()
        cls.loaded = tf.saved_model.load(path)

    def test_rest_body_evaluated_by_the_saved_model_gives_the_masks(self):
        image = np.random.RandomState(0).randint(0, 256, (40, 24, 3)).astype(np.uint8)
        body = json.loads(json.dumps(client.rest_request_body(image)))
        self.assertEqual(body["signature_name"], "serving_default")
        out = self.loaded.signatures["serving_default"](
            images=tf.constant(np.asarray(body["inputs"]["images"], np.uint8)))
        response = {"outputs": {k: v.numpy().tolist() for k, v in out.items()}}
        probs, mask = client.masks_from_rest_response(response)
        direct = self.loaded.signatures["serving_default"](
            images=tf.constant(image[None]))
        np.testing.assert_array_equal(mask, direct["masks"][0].numpy())
        self.assertEqual(mask.shape, (40, 24))

    def test_end_to_end_over_http_writes_png_masks(self):
        FakeServing.loaded = self.loaded
        server = http.server.HTTPServer(("127.0.0.1", 0), FakeServing)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            folder = tempfile.mkdtemp()
            paths = []
            for i in range(2):
                image = np.random.RandomState(i).randint(0, 256, (32, 32, 3))
                paths.append(os.path.join(folder, f"img{i}.png"))
                Image.fromarray(image.astype(np.uint8)).save(paths[-1])
            out_dir = os.path.join(folder, "masks")
            written = client.run_client(
                f"127.0.0.1:{server.server_port}", "efficientlab", paths, out_dir)
            self.assertEqual([os.path.basename(p) for p in written],
                             ["img0_mask.png", "img1_mask.png"])
            for path, out in zip(paths, written):
                expected = self.loaded.signatures["serving_default"](
                    images=tf.constant(np.asarray(Image.open(path))[None]))
                got = np.asarray(Image.open(out))
                np.testing.assert_array_equal(got, expected["masks"][0].numpy() * 255)
        finally:
            server.shutdown()

    def test_bad_input(self):
        with self.assertRaisesRegex(TypeError, "must be uint8"):
            client.rest_request_body(np.zeros((4, 4, 3), np.float32))
        with self.assertRaisesRegex(ValueError, r"shape \[H, W, 3\]"):
            client.rest_request_body(np.zeros((4, 4, 4), np.uint8))
        with self.assertRaisesRegex(ValueError, "is empty"):
            client.rest_request_body(np.zeros((0, 4, 3), np.uint8))
        with self.assertRaisesRegex(FileNotFoundError, "/no/such.png"):
            client.load_image("/no/such.png")
        bad = os.path.join(tempfile.mkdtemp(), "bad.jpg")
        with open(bad, "wb") as f:
            f.write(b"\xff\xd8 truncated")
        with self.assertRaisesRegex(ValueError, "cannot be decoded"):
            client.load_image(bad)
        with self.assertRaisesRegex(ValueError, "no 'outputs.masks'"):
            client.masks_from_rest_response({"error": "Servable not found"})
        with self.assertRaisesRegex(ConnectionError, "cannot reach TF Serving"):
            client.predict_rest("127.0.0.1:9", "m", np.zeros((2, 2, 3), np.uint8),
                                timeout=5)


class ConnectionErrorsTest(tf.test.TestCase):
    """Every way a server can fail is one ConnectionError/ValueError line."""

    def _silent_server(self):
        # Accepts connections and never answers (a hung server).
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(4)
        self.addCleanup(sock.close)
        return f"127.0.0.1:{sock.getsockname()[1]}"

    def _closed_port(self):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sock.close()  # Nothing listens there now: connection refused.
        return f"127.0.0.1:{port}"

    def test_malformed_server(self):
        image = np.zeros((2, 2, 3), np.uint8)
        for server in ("http://localhost:8501", "localhost", "localhost:0",
                       "localhost:99999", "a b:1", ""):
            with self.assertRaisesRegex(ValueError, "--server must be host:port"):
                client.predict_rest(server, "m", image)
            with self.assertRaisesRegex(ValueError, "--server must be host:port"):
                client.predict_grpc(server, "m", image)
        client.check_server("[::1]:8500")
        client.check_server("serving-1.example:8501")

    def test_rest_read_timeout(self):
        with self.assertRaisesRegex(ConnectionError, "did not answer within 1 s"):
            client.predict_rest(self._silent_server(), "m",
                                np.zeros((2, 2, 3), np.uint8), timeout=1)

    def test_grpc_refused_and_timeout(self):
        image = np.zeros((2, 2, 3), np.uint8)
        with self.assertRaisesRegex(ConnectionError, "cannot reach TF Serving \\(gRPC\\)"):
            client.predict_grpc(self._closed_port(), "m", image, timeout=5)
        with self.assertRaisesRegex(ConnectionError, "did not answer within 1 s"):
            client.predict_grpc(self._silent_server(), "m", image, timeout=1)

    def test_client_errors_name_the_client(self):
        import subprocess
        import sys

        folder = tempfile.mkdtemp()
        path = os.path.join(folder, "a.png")
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(path)
        code = ("import sys; sys.argv = ['efficientlab-client', "
                f"'--server={self._closed_port()}', '--images={path}', "
                f"'--out_dir={folder}']; "
                "from efficientlab_tf import cli; cli.client_entry()")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True,
                              text=True, timeout=120,
                              env=dict(os.environ, CUDA_VISIBLE_DEVICES="-1"))
        self.assertEqual(proc.returncode, 2, proc.stderr[-2000:])
        last = proc.stderr.strip().splitlines()[-1]
        self.assertTrue(last.startswith("efficientlab-client: error: cannot reach"),
                        last)
