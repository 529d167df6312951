"""SavedModel export: serving_default, serve_bytes and few_shot in a fresh load."""

import os
import tempfile
import threading

import numpy as np
import tensorflow as tf
import pytest

from efficientlab_tf.config import Omega
from efficientlab_tf.export.saved_model import export_saved_model
from efficientlab_tf.export.saved_model import next_version
from efficientlab_tf.segmentation import build_adapter
from efficientlab_tf.model.efficientlab import foreground_probability
from tests import helpers


def per_image(model, images):
    """Target probabilities of each image run alone through `model`."""
    return tf.concat([foreground_probability(model(
        tf.cast(image[None], tf.float32), training=False)) for image in images], 0)


def uint8(shape, seed):
    return tf.constant(np.random.RandomState(seed).randint(0, 256, shape),
                       tf.uint8)


class ExportTest(tf.test.TestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.model, cls.adapter, cls.base, cls.path = helpers.export_tiny()
        cls.loaded = tf.saved_model.load(cls.path)

    def test_versions_and_no_temporary_folder_left(self):
        self.assertEqual(self.path, os.path.join(self.base, "1"))
        self.assertEqual(next_version(self.base), 2)
        self.assertEqual(sorted(os.listdir(self.base)), ["1"])
        with self.assertRaisesRegex(FileExistsError, "already exists"):
            export_saved_model(self.model, self.base, image_size=32, version=1)

    def test_serving_default_matches_keras(self):
        serve = self.loaded.signatures["serving_default"]
        images = uint8((2, 32, 32, 3), 0)
        out = serve(images=images)
        # bn_mode=batch: each served image is normalised by its own
        # statistics, i.e. it is a batch of one (issue 23).
        expected = per_image(self.model, images)
        self.assertAllClose(out["probabilities"], expected, atol=1e-5)
        self.assertAllEqual(out["masks"], tf.cast(expected >= 0.5, tf.uint8))
        # Any input size: resized inside the graph, answered at input size.
        big = serve(images=tf.zeros([1, 48, 40, 3], tf.uint8))
        self.assertEqual(big["masks"].shape, (1, 48, 40))

    def test_serve_bytes_matches_serving_default(self):
        images = uint8((2, 32, 32, 3), 1)
        encoded = tf.stack([tf.io.encode_png(i) for i in images])
        out = self.loaded.signatures["serve_bytes"](encoded=encoded)
        ref = self.loaded.signatures["serving_default"](images=images)
        self.assertAllClose(out["probabilities"], ref["probabilities"], atol=1e-5)
        self.assertAllEqual(out["heights"], [32, 32])
        with self.assertRaisesRegex(tf.errors.InvalidArgumentError, ""):
            self.loaded.signatures["serve_bytes"](
                encoded=tf.constant([b"not an image"]))

    def few_shot(self, support, masks, query):
        return self.loaded.signatures["few_shot"](
            support_images=support, support_masks=masks, query_images=query)

    def test_few_shot_equals_adapt_then_predict(self):
        support, query = uint8((3, 32, 32, 3), 2), uint8((2, 32, 32, 3), 3)
        masks = tf.constant(
            (np.random.RandomState(4).uniform(size=(3, 32, 32)) > 0.5) * 255,
            tf.uint8)
        out = self.few_shot(support, masks, query)
        # The same update routine, called directly on the Keras model.
        state, _ = self.adapter.adapt(
            tf.cast(support, tf.float32),
            tf.cast(masks[..., None] > 0, tf.float32), helpers.OMEGA.lr, helpers.OMEGA.steps,
            tf.constant([0, 0]))
        # Each query predicted on its own (issue 34: a batch-statistics
        # network normalises each served query by itself).
        expected = tf.concat([self.adapter.predict(state, tf.cast(q[None], tf.float32))
                              for q in query], 0)
        self.assertAllClose(out["probabilities"], expected, atol=1e-4)
        # Adaptation changed the answer (the signature is not serving_default).
        plain = self.loaded.signatures["serving_default"](images=query)
        self.assertGreater(
            float(tf.reduce_max(tf.abs(plain["probabilities"] - expected))), 1e-3)

    def test_concurrent_few_shot_requests_equal_sequential(self):
        requests = []
        for i in range(2):
            masks = (np.random.RandomState(10 + i).uniform(size=(2, 32, 32)) > 0.5)
            requests.append((uint8((2, 32, 32, 3), 20 + i),
                             tf.constant(masks, tf.uint8),
                             uint8((1, 32, 32, 3), 30)))
        sequential = [self.few_shot(*r)["probabilities"].numpy() for r in requests]
        self.assertGreater(np.abs(sequential[0] - sequential[1]).max(), 1e-4)
        results = [None, None]
        barrier = threading.Barrier(2)

        def call(i):
            barrier.wait()
            results[i] = self.few_shot(*requests[i])["probabilities"].numpy()

        threads = [threading.Thread(target=call, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for got, want in zip(results, sequential):
            np.testing.assert_array_equal(got, want)

    def test_few_shot_bad_input(self):
        query = uint8((1, 32, 32, 3), 0)
        with self.assertRaisesRegex(tf.errors.InvalidArgumentError,
                                    "support_images: the batch is empty"):
            self.few_shot(tf.zeros([0, 32, 32, 3], tf.uint8),
                          tf.zeros([0, 32, 32], tf.uint8), query)
        with self.assertRaisesRegex(tf.errors.InvalidArgumentError,
                                    "different numbers of examples"):
            self.few_shot(uint8((2, 32, 32, 3), 1),
                          tf.zeros([3, 32, 32], tf.uint8), query)
        with self.assertRaisesRegex(tf.errors.InvalidArgumentError,
                                    "height and width"):
            self.few_shot(uint8((2, 32, 32, 3), 1),
                          tf.zeros([2, 16, 32], tf.uint8), query)
        # Wrong dtype or channel count: refused by the signature itself.
        refused = (ValueError, TypeError, tf.errors.InvalidArgumentError)
        with self.assertRaisesRegex(refused, "uint8"):
            self.few_shot(tf.zeros([2, 32, 32, 3], tf.float32),
                          tf.zeros([2, 32, 32], tf.uint8), query)
        with self.assertRaisesRegex(refused, "shape|incompatible|3"):
            self.loaded.signatures["serving_default"](
                images=tf.zeros([1, 32, 32, 4], tf.uint8))

    def test_few_shot_masks_follow_the_one_mask_rule(self):
        support, query = uint8((2, 32, 32, 3), 40), uint8((1, 32, 32, 3), 41)
        target = np.random.RandomState(42).uniform(size=(2, 32, 32)) > 0.5
        zero_one = tf.constant(target, tf.uint8)
        zero_255 = tf.constant(target * 255, tf.uint8)
        # Anti-aliased 0-255 mask: 50 is background (< 128), as the loaders
        # decode it; before, few_shot took any value > 0 as target.
        soft = tf.constant(np.where(target, 255, 50), tf.uint8)
        want = self.few_shot(support, zero_255, query)["probabilities"]
        for masks in (zero_one, soft, zero_255[..., None]):
            self.assertAllClose(self.few_shot(support, masks, query)["probabilities"],
                                want, atol=1e-6)

    def test_serving_errors_say_what_is_wrong(self):
        serve = self.loaded.signatures["serving_default"]
        query = uint8((1, 32, 32, 3), 0)
        cases = [
            (lambda: serve(images=tf.zeros([1, 32, 32, 4], tf.uint8)),
             "3 channels \\(RGB\\)"),
            (lambda: serve(images=tf.zeros([0, 32, 32, 3], tf.uint8)),
             "batch is empty"),
            (lambda: self.few_shot(tf.zeros([2, 0, 0, 3], tf.uint8),
                                   tf.zeros([2, 0, 0], tf.uint8), query),
             "positive height and width"),
            (lambda: self.few_shot(uint8((2, 32, 32, 3), 1),
                                   tf.zeros([2, 32, 32, 2], tf.uint8), query),
             "support_masks must be uint8 \\[K, H, W\\] or \\[K, H, W, 1\\]"),
        ]
        for call, message in cases:
            with self.assertRaisesRegex(tf.errors.InvalidArgumentError, message):
                call()

    def test_serve_bytes_refuses_huge_images_from_the_header(self):
        png = bytearray(tf.io.encode_png(tf.zeros([2, 2, 1], tf.uint8)).numpy())
        png[16:24] = (10000).to_bytes(4, "big") * 2  # IHDR: 10000 x 10000.
        serve_bytes = self.loaded.signatures["serve_bytes"]
        with self.assertRaisesRegex(tf.errors.InvalidArgumentError,
                                    "larger than the limit of 16777216 pixels"):
            serve_bytes(encoded=tf.constant([bytes(png)]))
        gif = b"GIF89a" + bytes(40)
        with self.assertRaisesRegex(tf.errors.InvalidArgumentError,
                                    "only JPEG and PNG"):
            serve_bytes(encoded=tf.constant([gif]))
        # Headers read right: a 24 x 40 JPEG and PNG pass and report their size.
        image = uint8((24, 40, 3), 9)
        out = serve_bytes(encoded=tf.stack([tf.io.encode_jpeg(image),
                                            tf.io.encode_png(image)]))
        self.assertAllEqual(out["heights"], [24, 24])
        self.assertAllEqual(out["widths"], [40, 40])

    def test_version_folders_are_readable_and_numbered_past_odd_names(self):
        umask = os.umask(0)
        os.umask(umask)
        self.assertEqual(os.stat(self.path).st_mode & 0o777, 0o777 & ~umask)
        base = tempfile.mkdtemp()
        for name in ("3", "latest", "v9", "\u00b2", ".tmp-4-abc"):
            os.makedirs(os.path.join(base, name))
        open(os.path.join(base, "7"), "w").close()  # A file, not a version.
        self.assertEqual(next_version(base), 4)

    def test_warmup_file_replays_against_the_saved_model(self):
        from efficientlab_tf.export import warmup

        logs = warmup.read_warmup(self.path)
        signatures = [log.predict_log.request.model_spec.signature_name
                      for log in logs]
        # Keras also names serving_default "serve"; one request covers both.
        self.assertEqual(sorted(signatures),
                         sorted(set(self.loaded.signatures) - {"serve"}))
        for log in logs:
            request = log.predict_log.request
            self.assertEqual(request.model_spec.name, "efficientlab")
            inputs = {k: tf.constant(tf.make_ndarray(v))
                      for k, v in request.inputs.items()}
            out = self.loaded.signatures[request.model_spec.signature_name](**inputs)
            side = 32  # The served size: every output is one 32 x 32 mask.
            self.assertEqual(out["masks"].shape, (1, side, side))

    def test_few_shot_omega_per_request(self):
        support, query = uint8((2, 32, 32, 3), 50), uint8((1, 32, 32, 3), 51)
        masks = tf.constant(
            (np.random.RandomState(52).uniform(size=(2, 32, 32)) > 0.5) * 255,
            tf.uint8)
        sig = self.loaded.signatures["few_shot_omega"]
        out = sig(support_images=support, support_masks=masks,
                  query_images=query, lr=tf.constant([0.2]), steps=tf.constant([4]))
        # The Python update routine with that omega gives the same answer ...
        state, _ = self.adapter.adapt(
            tf.cast(support, tf.float32), tf.cast(masks[..., None] > 0, tf.float32),
            0.2, 4, tf.constant([0, 0]))
        # Each query predicted on its own (issue 34: a batch-statistics
        # network normalises each served query by itself).
        expected = tf.concat([self.adapter.predict(state, tf.cast(q[None], tf.float32))
                              for q in query], 0)
        self.assertAllClose(out["probabilities"], expected, atol=1e-4)
        # ... and the exported omega gives few_shot's answer.
        same = sig(support_images=support, support_masks=masks, query_images=query,
                   lr=tf.constant([helpers.OMEGA.lr]), steps=tf.constant([helpers.OMEGA.steps]))
        self.assertAllClose(same["probabilities"],
                            self.few_shot(support, masks, query)["probabilities"])
        for lr, steps, message in ((5.0, 3, "lr must be <= 1"),
                                   (0.0, 3, "lr must be > 0"),
                                   (0.1, 500, "steps must be <= 200"),
                                   (0.1, -1, "steps must be >= 0")):
            with self.assertRaisesRegex(tf.errors.InvalidArgumentError, message):
                sig(support_images=support, support_masks=masks, query_images=query,
                    lr=tf.constant([lr]), steps=tf.constant([steps]))

    def test_in_place_adapter_is_refused(self):
        adapter = build_adapter(self.model, Omega(), in_place=True)
        with self.assertRaisesRegex(ValueError, "in_place=False"):
            export_saved_model(self.model, tempfile.mkdtemp(), 32,
                               few_shot_adapter=adapter, omega=helpers.OMEGA)


FRESH_PROCESS_SCRIPT = r"""
import sys
import numpy as np
import tensorflow as tf
path, inputs, outputs = sys.argv[1:4]
loaded = tf.saved_model.load(path)
data = np.load(inputs)
default = loaded.signatures["serving_default"](images=tf.constant(data["query"]))
few = loaded.signatures["few_shot"](
    support_images=tf.constant(data["support"]),
    support_masks=tf.constant(data["masks"]),
    query_images=tf.constant(data["query"]))
np.savez(outputs, default=default["probabilities"].numpy(),
         few_shot=few["probabilities"].numpy())
"""


@pytest.mark.slow  # Over 7 s on the 2-core VM: not in the fast tier.
class FreshProcessTest(tf.test.TestCase):

    def test_signatures_in_a_fresh_process(self):
        import subprocess
        import sys

        model, adapter, _, path = helpers.export_tiny()
        folder = tempfile.mkdtemp()
        support, query = uint8((2, 32, 32, 3), 5), uint8((2, 32, 32, 3), 6)
        masks = tf.constant(
            (np.random.RandomState(7).uniform(size=(2, 32, 32)) > 0.5), tf.uint8)
        inputs = os.path.join(folder, "in.npz")
        outputs = os.path.join(folder, "out.npz")
        np.savez(inputs, support=support.numpy(), masks=masks.numpy(),
                 query=query.numpy())
        env = dict(os.environ, CUDA_VISIBLE_DEVICES="-1", TF_CPP_MIN_LOG_LEVEL="3")
        proc = subprocess.run(
            [sys.executable, "-c", FRESH_PROCESS_SCRIPT, path, inputs, outputs],
            capture_output=True, text=True, timeout=300, env=env)
        self.assertEqual(proc.returncode, 0, proc.stderr[-2000:])
        got = np.load(outputs)
        self.assertAllClose(got["default"], per_image(model, query), atol=1e-5)
        state, _ = adapter.adapt(tf.cast(support, tf.float32),
                                 tf.cast(masks[..., None] > 0, tf.float32),
                                 helpers.OMEGA.lr, helpers.OMEGA.steps, tf.constant([0, 0]))
        # Each query alone (a batch-statistics export normalises each by itself).
        self.assertAllClose(got["few_shot"], tf.concat(
            [adapter.predict(state, tf.cast(q[None], tf.float32)) for q in query], 0),
            atol=1e-4)
