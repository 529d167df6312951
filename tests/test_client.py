"""The TF Serving client against the model-server emulation
(tests/tf_serving_emulation.py) serving exports through the shipped
docker-compose.yml and models.config."""

import http.server
import json
import os
import socket
import tempfile
import threading

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from efficientlab_tf.export import client
from tests import helpers
from tests import tf_serving_emulation as emulation


def write_photos(folder, count=2, size=(40, 32)):
    paths = []
    for i in range(count):
        image = np.random.RandomState(i).randint(0, 256, (*size, 3))
        paths.append(os.path.join(folder, f"img{i}.png"))
        Image.fromarray(image.astype(np.uint8)).save(paths[-1])
    return paths


class ClientTest(tf.test.TestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        _, _, base, _ = helpers.export_tiny()  # saved_models/efficientlab/1: "stable".
        # .../2: the "canary" of models.config, and the newest version, so
        # the one a request without a version or label gets.
        _, _, _, path = helpers.export_tiny(base=base)
        cls.loaded_path = path
        cls.loaded = tf.saved_model.load(path)
        deployment = emulation.Deployment(os.path.dirname(base))
        cls.addClassCleanup(deployment.stop)
        cls.emulated, cls.rest, cls.grpc = (deployment.server, deployment.rest,
                                            deployment.grpc)

    def test_rest_body_evaluated_by_the_saved_model_gives_the_masks(self):
        image = np.random.RandomState(0).randint(0, 256, (40, 24, 3)).astype(np.uint8)
        body = json.loads(json.dumps(client.rest_request_body(image)))
        self.assertEqual(body["signature_name"], "serving_default")
        status, response = emulation.rest_predict(
            self.emulated, "/v1/models/efficientlab:predict", body)
        self.assertEqual(status, 200)
        probs, mask = client.masks_from_rest_response(response)
        direct = self.loaded.signatures["serving_default"](
            images=tf.constant(image[None]))
        np.testing.assert_array_equal(mask, direct["masks"][0].numpy())
        self.assertEqual(mask.shape, (40, 24))

    def _serve(self):
        return self.rest.address

    def test_end_to_end_over_http_writes_png_masks(self):
        server = self._serve()
        folder = tempfile.mkdtemp()
        paths = write_photos(folder)
        for signature in ("serving_default", "serve_bytes"):
            out_dir = os.path.join(folder, signature)
            written = client.run_client(server, "efficientlab", paths, out_dir,
                                        signature=signature)
            self.assertEqual([os.path.basename(p) for p in written],
                             ["img0_mask.png", "img1_mask.png"])
            for path, out in zip(paths, written):
                image = np.asarray(Image.open(path))
                if signature == "serving_default":
                    expected = self.loaded.signatures["serving_default"](
                        images=tf.constant(image[None]))["masks"][0].numpy()
                else:  # At the network size, resized back to the image's.
                    small = self.loaded.signatures["serve_bytes"](
                        encoded=tf.constant([open(path, "rb").read()]))["masks"][0]
                    expected = np.asarray(Image.fromarray(small.numpy()).resize(
                        (image.shape[1], image.shape[0]), Image.NEAREST))
                got = np.asarray(Image.open(out))
                self.assertEqual(got.shape, image.shape[:2])
                np.testing.assert_array_equal(got, expected * 255)
        # A label reaches the version models.config gives it (canary: 2, a
        # model of other weights).
        canary = client.segment(server, "efficientlab", paths[:1], label="canary")
        version_2 = self.emulated.servable("efficientlab", version=2)
        small = version_2.predict("serve_bytes", {"encoded": np.array(
            [open(paths[0], "rb").read()], dtype=object)})["masks"][0]
        image = np.asarray(Image.open(paths[0]))
        np.testing.assert_array_equal(canary[paths[0]], np.asarray(
            Image.fromarray(small).resize((image.shape[1], image.shape[0]),
                                          Image.NEAREST)))
        stable = client.segment(server, "efficientlab", paths[:1], label="stable")
        self.assertFalse(np.array_equal(canary[paths[0]], stable[paths[0]]))

    def test_few_shot_from_the_client(self):
        # One request per photo, at the photo's own size (issue 34: three
        # photos in one request, resized to the first one's, gave masks that
        # depended on each other); the support pairs at their common size.
        server = self._serve()
        support = os.path.join(helpers.make_tree(classes=("cat",), pairs=2), "cat")
        folder = tempfile.mkdtemp()
        paths = write_photos(folder, size=(32, 32)) + [
            write_photos(tempfile.mkdtemp(), count=1, size=(24, 40))[0]]
        images, masks = client.read_support(support)
        self.assertEqual(images.shape, (2, 32, 32, 3))
        for lr, steps, name in ((None, None, "few_shot"), (0.2, 2, "few_shot_omega")):
            out_dir = os.path.join(folder, name)
            written = client.run_client(server, "efficientlab", paths, out_dir,
                                        signature="few_shot", support=support,
                                        lr=lr, steps=steps)
            kwargs = {} if lr is None else {"lr": tf.constant([lr]),
                                            "steps": tf.constant([steps])}
            for out, path in zip(written, paths):
                alone = self.loaded.signatures[name](
                    support_images=tf.constant(images), support_masks=tf.constant(masks),
                    query_images=tf.constant(np.asarray(Image.open(path))[None]),
                    **kwargs)["masks"].numpy()[0]
                np.testing.assert_array_equal(np.asarray(Image.open(out)), alone * 255)
        with self.assertRaisesRegex(ValueError, "needs --support"):
            client.run_client(server, "efficientlab", paths, folder,
                              signature="few_shot")

    def _served_answer(self, segmenter, support, photo, lr=None, steps=None):
        """The served few_shot's mask for `photo` over REST, sent as the
        segmenter sends it: the S x S resize (photos.to_network), alone in
        its request; the answer resized back to the photo's size."""
        from efficientlab_tf.export import photos

        query = photos.to_network(photo, segmenter.image_size)[None]
        body = json.loads(json.dumps(client.few_shot_body(*support, query, lr, steps)))
        status, response = emulation.rest_predict(
            self.emulated, "/v1/models/efficientlab:predict", body)
        self.assertEqual(status, 200, response)
        probs = np.asarray(response["outputs"]["probabilities"], np.float32)[0]
        return (photos.to_photo_size(probs, *photo.shape[:2]) >= 0.5).astype(np.uint8)

    def test_segment_mode_equals_the_served_few_shot(self):
        # `efficientlab segment` writes, per photo, the mask the served
        # few_shot answers over REST for the same request (the photo at S x
        # S, alone), with --omega_file's lr and steps through few_shot_omega;
        # photos go in chunks, and a chunk's answer equals each photo's
        # alone (issue 34); an unreadable photo is listed and skipped.
        import json as json_lib

        from efficientlab_tf import runners
        from efficientlab_tf.config import ExperimentConfig
        from efficientlab_tf.export import photos
        from efficientlab_tf.export.segmenter import Segmenter

        support_dir = os.path.join(helpers.make_tree(classes=("cat",), pairs=3), "cat")
        folder = tempfile.mkdtemp()
        paths = write_photos(folder, count=2, size=(40, 32))
        tall = os.path.join(tempfile.mkdtemp(), "tall.png")
        os.rename(write_photos(os.path.dirname(tall), count=1, size=(24, 56))[0], tall)
        paths.append(tall)
        with open(os.path.join(folder, "broken.jpg"), "w") as f:
            f.write("not a photo")
        omega_file = os.path.join(tempfile.mkdtemp(), "omega.json")
        with open(omega_file, "w") as f:
            json_lib.dump({"lr": 0.2, "steps": 2}, f)
        base = os.path.dirname(self.loaded_path)
        segmenter = Segmenter(base)
        images, masks, _ = photos.read_support(support_dir)
        support = segmenter.support(images, masks)
        for lr, steps, extra in ((None, None, {}), (0.2, 2, {"omega_file": omega_file})):
            out_dir = tempfile.mkdtemp()
            result = runners.run(ExperimentConfig.build(
                "paper", mode="segment", segment_model=base, segment_chunk=2,
                segment_support=support_dir, segment_images=[folder, paths[2]],
                segment_out_dir=out_dir, **extra))
            self.assertEqual(result["saved_model"], self.loaded_path)
            self.assertLen(result["masks"], 3)
            self.assertLen(result["bad_files"], 1)
            for path in paths:
                photo = photos.read_photo(path)
                want = self._served_answer(segmenter, support, photo, lr, steps)
                stem = os.path.splitext(os.path.basename(path))[0]
                got = np.asarray(Image.open(os.path.join(out_dir, f"{stem}_mask.png")))
                np.testing.assert_array_equal(got, want * 255)
                overlay = np.asarray(Image.open(os.path.join(out_dir, f"{stem}_overlay.png")))
                self.assertEqual(overlay.shape, photo.shape)
            self.assertTrue(os.path.isfile(os.path.join(out_dir, "contact_sheet.png")))
            self.assertIn("broken.jpg", open(os.path.join(out_dir, "bad_files.txt")).read())
            self.assertTrue(os.path.isfile(os.path.join(out_dir, ".efficientlab",
                                                        "config_segment.json")))

    def test_python_api_segmenter_equals_the_served_few_shot(self):
        import efficientlab_tf as el
        from efficientlab_tf.export import photos

        support_dir = os.path.join(helpers.make_tree(classes=("cat",), pairs=2), "cat")
        images, masks, _ = photos.read_support(support_dir)
        paths = write_photos(tempfile.mkdtemp(), count=3, size=(40, 32))
        queries = [np.asarray(Image.open(p)) for p in paths]
        segmenter = el.load(os.path.dirname(self.loaded_path))
        support = segmenter.support(images, masks)
        got = segmenter.segment(images, masks, queries)
        for query, mask in zip(queries, got):
            np.testing.assert_array_equal(
                mask, self._served_answer(segmenter, support, query))
        with self.assertRaisesRegex(TypeError, r"query_images\[0\] must be uint8"):
            segmenter.segment(images, masks, [queries[0].astype(np.float32)])

    def test_grpc_end_to_end(self):
        folder = tempfile.mkdtemp()
        paths = write_photos(folder, count=1)
        http_masks = client.segment(self.rest.address, "efficientlab", paths)
        grpc_masks = client.segment(self.grpc.address, "efficientlab", paths,
                                    protocol="grpc")
        np.testing.assert_array_equal(grpc_masks[paths[0]], http_masks[paths[0]])

    def test_b64_request_is_smaller_than_pixels(self):
        photo = os.path.join(tempfile.mkdtemp(), "p.jpg")
        image = np.random.RandomState(0).randint(0, 256, (64, 64, 3)).astype(np.uint8)
        Image.fromarray(image).save(photo, quality=90)
        b64 = len(json.dumps(client.rest_bytes_body([open(photo, "rb").read()])))
        pixels = len(json.dumps(client.rest_request_body(image)))
        self.assertLess(b64, pixels / 2)

    def test_bad_input(self):
        with self.assertRaisesRegex(TypeError, "must be uint8"):
            client.rest_request_body(np.zeros((4, 4, 3), np.float32))
        with self.assertRaisesRegex(ValueError, r"shape \[H, W, 3\]"):
            client.rest_request_body(np.zeros((4, 4, 4), np.uint8))
        with self.assertRaisesRegex(ValueError, r"H, W >= 1; got \(0, 4, 3\)"):
            client.rest_request_body(np.zeros((0, 4, 3), np.uint8))
        with self.assertRaisesRegex(FileNotFoundError, "/no/such.png"):
            client.load_image("/no/such.png")
        bad = os.path.join(tempfile.mkdtemp(), "bad.jpg")
        with open(bad, "wb") as f:
            f.write(b"\xff\xd8 truncated")
        with self.assertRaisesRegex(ValueError, r"bad.jpg: not an image \(JPEG, PNG"):
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

    @pytest.mark.slow  # Starts a process.
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


class _Hostile(http.server.BaseHTTPRequestHandler):
    """A server that answers with whatever `answer` holds: what a broken or
    hostile endpoint can send (not TF Serving: the client must not trust it)."""

    answer = {}

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        data = json.dumps(self.answer).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


class ClientTrustTest(tf.test.TestCase):
    """Issue 28 (8, 9): no mask lost to a name clash, no trust in the server."""

    def _hostile(self, answer):
        _Hostile.answer = answer
        server = http.server.HTTPServer(("127.0.0.1", 0), _Hostile)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self.addCleanup(server.shutdown)
        return f"127.0.0.1:{server.server_port}"

    def test_images_with_one_stem_get_distinct_masks(self):
        root = tempfile.mkdtemp()
        a, b = os.path.join(root, "a"), os.path.join(root, "b")
        os.makedirs(a)
        os.makedirs(b)
        image = np.zeros((8, 6, 3), np.uint8)
        Image.fromarray(image).save(os.path.join(a, "x.jpg"))
        Image.fromarray(image).save(os.path.join(b, "x.png"))
        Image.fromarray(image).save(os.path.join(b, "y.png"))
        paths = [os.path.join(a, "x.jpg"), os.path.join(b, "x.png"),
                 os.path.join(b, "y.png")]
        self.assertEqual(list(client.mask_names(paths).values()),
                         ["a__x.jpg_mask.png", "b__x.png_mask.png", "y_mask.png"])
        mask = np.zeros((8, 6), np.uint8)
        mask[0, 0] = 1
        server = self._hostile({"outputs": {"masks": [mask.tolist()],
                                            "probabilities": [mask.tolist()]}})
        written = client.run_client(server, "m", paths, os.path.join(root, "out"),
                                    signature="serving_default")
        self.assertEqual(len(set(written)), 3)
        for path in written:
            self.assertEqual(np.asarray(Image.open(path))[0, 0], 255)

    def test_out_dir_that_is_a_file_is_refused_before_any_request(self):
        path = tempfile.mkstemp()[1]
        with self.assertRaisesRegex(ValueError, f"--out_dir {path!r} exists and "
                                    "is not a folder"):
            client.run_client("127.0.0.1:9", "m", [path], path)

    def test_sizes_come_from_the_image_and_shapes_are_checked(self):
        folder = tempfile.mkdtemp()
        (path,) = write_photos(folder, count=1, size=(40, 24))
        small = np.ones((32, 32), np.uint8)
        # heights/widths of 60000 used to be trusted (a MemoryError).
        server = self._hostile({"outputs": {
            "masks": [small.tolist()], "probabilities": [small.tolist()],
            "heights": [60000], "widths": [60000]}})
        masks = client.segment(server, "m", [path])
        self.assertEqual(masks[path].shape, (40, 24))
        for bad in ([[1, 2, 3]], [np.ones((2, 3, 4)).tolist()], [np.ones((32, 16)).tolist()]):
            server = self._hostile({"outputs": {"masks": bad, "probabilities": bad}})
            with self.assertRaisesRegex(ValueError, "TF Serving returned a mask of shape"):
                client.segment(server, "m", [path])
        # serving_default answers at the image's size; another size is wrong.
        server = self._hostile({"outputs": {"masks": [small.tolist()],
                                            "probabilities": [small.tolist()]}})
        with self.assertRaisesRegex(ValueError, r"expected \(40, 24\)"):
            client.segment(server, "m", [path], signature="serving_default")
