"""TFRecord shards: lossless conversion, bad files listed, same tasks as folders."""

import os
import tempfile

import numpy as np
import tensorflow as tf
from PIL import Image

from efficientlab_tf.config import DataConfig
from efficientlab_tf.data import fss1000
from efficientlab_tf.data import tfrecords
from efficientlab_tf.data import validate
from tests import helpers


def config(root):
    return DataConfig(dataset="fss1000", data_dir=root, val_classes=1,
                      test_classes=1)


class ShardTest(tf.test.TestCase):

    def test_shards_serve_the_same_tasks_as_the_folder(self):
        root = helpers.make_tree(pairs=4)
        shard_dir = os.path.join(tempfile.mkdtemp(), "shards")
        index = tfrecords.write_shards(root, shard_dir, num_shards=3)
        self.assertEqual(index["examples"], 12)
        self.assertEqual(index["classes"], {"bus": 4, "cat": 4, "dog": 4})
        self.assertEqual(len([f for f in os.listdir(shard_dir)
                              if f.endswith(".tfrecord")]), 3)
        self.assertFalse([f for f in os.listdir(shard_dir) if f.startswith(".tmp")])
        folder = fss1000.folder_source(config(root), 32)
        shards = tfrecords.shard_source(config(shard_dir), 32)
        self.assertEqual(folder.splits, shards.splits)
        for split in ("train", "test"):
            a = next(iter(folder.tasks(split, 2, 1, seed=3)))
            b = next(iter(shards.tasks(split, 2, 1, seed=3)))
            for x, y in zip(a, b):
                self.assertAllEqual(x, y)
        # Stored bytes are the files' bytes (lossless).
        pairs = tfrecords.read_shards(shard_dir)
        with open(os.path.join(root, "cat", "2.jpg"), "rb") as f:
            self.assertEqual(pairs["cat"][1][0], f.read())

    def test_every_bad_file_is_listed(self):
        root = helpers.make_tree(pairs=3)
        with open(os.path.join(root, "cat", "1.jpg"), "wb") as f:
            f.write(b"\xff\xd8\xff\xe0 truncated jpeg")
        Image.fromarray(np.zeros((16, 16), np.uint8), "L").save(
            os.path.join(root, "dog", "2.png"))                   # wrong size
        Image.fromarray(np.full((32, 32), 77, np.uint8), "L").save(
            os.path.join(root, "bus", "3.png"))                   # not binary
        out = os.path.join(tempfile.mkdtemp(), "shards")
        with self.assertRaises(fss1000.BadExamplesError) as ctx:
            tfrecords.write_shards(root, out)
        message = str(ctx.exception)
        self.assertIn("3 bad examples", message)
        self.assertIn(os.path.join(root, "cat", "1.jpg") + ": cannot decode image",
                      message)
        self.assertIn("mask size (16, 16) differs from image size (32, 32)", message)
        self.assertIn(os.path.join(root, "bus", "3.png") + ": mask is not binary",
                      message)
        self.assertFalse(os.path.exists(os.path.join(out, tfrecords.INDEX)))
        index = tfrecords.write_shards(root, out, num_shards=2, skip_bad=True)
        self.assertEqual(index["classes"], {"bus": 2, "cat": 2, "dog": 2})

    def test_missing_shard_is_reported(self):
        root = helpers.make_tree(pairs=2)
        out = os.path.join(tempfile.mkdtemp(), "shards")
        tfrecords.write_shards(root, out, num_shards=2)
        os.remove(os.path.join(out, "shard-00001-of-00002.tfrecord"))
        with self.assertRaisesRegex(FileNotFoundError, "missing shard files"):
            tfrecords.read_shards(out)

    def test_interrupted_conversion_leaves_no_temporary_shards(self):
        root = helpers.make_tree(pairs=3)
        out = os.path.join(tempfile.mkdtemp(), "shards")

        def entries():
            for name in ("cat", "dog"):
                yield (name, "", os.path.join(root, name, "1.jpg"),
                       os.path.join(root, name, "1.png"), -1)
            raise KeyboardInterrupt  # Ctrl-C in the middle.

        with self.assertRaises(KeyboardInterrupt):
            tfrecords.write_entries(entries(), out, num_shards=2)
        self.assertEqual(os.listdir(out), [])

    def test_one_more_pair_writer_sanity(self):
        folder = tempfile.mkdtemp()
        helpers.write_pair(folder, 1)
        problems, target = validate.check_pair(os.path.join(folder, "1.jpg"),
                                                os.path.join(folder, "1.png"))
        self.assertEqual(problems, [])
        mask = np.asarray(Image.open(os.path.join(folder, "1.png")))
        self.assertEqual(target, int((mask == 255).sum()))
