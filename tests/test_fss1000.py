"""FSS-1000 folder loader on generated trees and on realfss-train."""

import os
import tempfile

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from efficientlab_tf.config import DataConfig
from efficientlab_tf.data import fss1000
from efficientlab_tf.data.decode import decode_mask
from tests import helpers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REALFSS = os.path.join(ROOT, "..", "shared", "data", "realfss-train")


def source(root, **kwargs):
    config = DataConfig(dataset="fss1000", data_dir=root,
                        val_classes=kwargs.pop("val_classes", 1),
                        test_classes=kwargs.pop("test_classes", 1))
    return fss1000.folder_source(config, 32, **kwargs)


class FSS1000Test(tf.test.TestCase):

    def test_splits_official_test_classes_and_files(self):
        src = source(helpers.make_tree())
        # "bus" is an official FSS-1000 test class; the rest split by seed.
        self.assertEqual(src.classes("test"), ["bus"])
        self.assertEqual(sorted(src.classes("train") + src.classes("val")),
                         ["cat", "dog"])

    def test_class_folds_partition_the_classes(self):
        names = [f"c{i:02d}" for i in range(34)] + ["bus"]  # bus: official test.
        folds = [fss1000.split_classes(names, 2, 0, split_seed=3, fold=i,
                                       num_folds=4) for i in range(4)]
        tests = [set(f[2]) for f in folds]
        # The folds are disjoint, cover every class (the official list is
        # not used), and differ in size by at most one.
        self.assertEqual(set().union(*tests), set(names))
        self.assertEqual(sum(len(t) for t in tests), len(names))
        self.assertEqual(sorted(len(t) for t in tests), [8, 9, 9, 9])
        for train, val, test in folds:
            self.assertLen(val, 2)
            self.assertEqual(set(train) | set(val) | set(test), set(names))
            self.assertFalse(set(train) & set(val) or set(train) & set(test)
                             or set(val) & set(test))
        again = fss1000.split_classes(names, 2, 0, split_seed=3, fold=1, num_folds=4)
        self.assertEqual(again, folds[1])
        with self.assertRaisesRegex(ValueError, "fold"):
            fss1000.split_classes(names, 2, 0, split_seed=3, fold=4, num_folds=4)
        with self.assertRaisesRegex(ValueError, "fold"):
            DataConfig(dataset="synthetic", fold=0)

    def test_fewshot_data_subfolder_is_found(self):
        outer = tempfile.mkdtemp()
        helpers.make_tree(root=os.path.join(outer, "fewshot_data"))
        self.assertEqual(fss1000.resolve_root(outer),
                         os.path.join(outer, "fewshot_data"))

    def test_task_pixels_match_an_independent_decoder(self):
        root = helpers.make_tree(pairs=3)
        src = source(root)
        task = next(iter(src.tasks("test", 2, 1, seed=0)))
        images = np.concatenate([task.support_images, task.query_images])
        masks = np.concatenate([task.support_masks, task.query_masks])
        # Every returned example is one of bus's files, each used once.
        found = []
        for image, mask in zip(images, masks):
            for n in (1, 2, 3):
                ref = np.asarray(Image.open(os.path.join(root, "bus", f"{n}.jpg")),
                                 np.float32)
                if np.abs(ref - image).max() <= 2.0:  # libjpeg rounding
                    found.append(n)
                    ref_mask = np.asarray(Image.open(
                        os.path.join(root, "bus", f"{n}.png")))
                    np.testing.assert_array_equal(mask[..., 0], ref_mask >= 128)
        self.assertEqual(sorted(found), [1, 2, 3])

    def test_mask_threshold_and_nearest_resize(self):
        mask = np.array([[0, 127], [128, 255]], np.uint8)
        png = tf.io.encode_png(mask[..., None])
        out = decode_mask(png, 4).numpy()[..., 0]
        expected = np.repeat(np.repeat(mask >= 128, 2, 0), 2, 1)
        np.testing.assert_array_equal(out, expected)

    def test_every_bad_file_is_listed(self):
        root = helpers.make_tree(pairs=3)
        os.remove(os.path.join(root, "cat", "2.png"))
        os.remove(os.path.join(root, "dog", "3.jpg"))
        os.makedirs(os.path.join(root, "empty"))
        with self.assertRaises(fss1000.BadExamplesError) as ctx:
            fss1000.scan(root)
        message = str(ctx.exception)
        self.assertIn("3 bad examples", message)
        self.assertIn(os.path.join(root, "cat", "2.jpg") + ": image without mask", message)
        self.assertIn(os.path.join(root, "dog", "3.png") + ": mask without image", message)
        self.assertIn(os.path.join(root, "empty") + ": empty class folder", message)
        # Skipping leaves them out and keeps the good pairs.
        pairs = fss1000.scan(root, skip_bad=True)
        self.assertEqual(len(pairs["cat"]), 2)
        self.assertNotIn("empty", pairs)

    def test_class_too_small_for_a_task(self):
        src = source(helpers.make_tree(pairs=3))
        # Not "bad examples": the shot flags ask for more than the class holds.
        with self.assertRaisesRegex(
                ValueError, r"test tasks need 6 image/mask pairs per class "
                r"\(support shots.*--eval_shots.*bus \(3 pairs\)") as e:
            src.tasks("test", 5, 1, seed=0)
        self.assertNotIsInstance(e.exception, fss1000.BadExamplesError)

    def test_zero_one_masks_are_target_where_one(self):
        # 0/1 masks (common in other tools) and 0/255 masks: one rule.
        root = tempfile.mkdtemp()
        for n in (1, 2, 3):
            helpers.write_pair(os.path.join(root, "bus"), n, seed=n, mask_values=(0, 1))
            helpers.write_pair(os.path.join(root, "cat"), n, seed=n, mask_values=(0, 255))
            helpers.write_pair(os.path.join(root, "dog"), n, seed=n)
        for name in ("bus", "cat"):
            png = open(os.path.join(root, name, "1.png"), "rb").read()
            raw = np.asarray(Image.open(os.path.join(root, name, "1.png")))
            np.testing.assert_array_equal(decode_mask(png, 32).numpy()[..., 0],
                                          raw == raw.max())
        # Same seed, same pixels: the two encodings decode identically.
        bus = decode_mask(open(os.path.join(root, "bus", "2.png"), "rb").read(), 32)
        cat = decode_mask(open(os.path.join(root, "cat", "2.png"), "rb").read(), 32)
        self.assertAllEqual(bus, cat)
        self.assertGreater(float(tf.reduce_mean(bus)), 0.3)

    def test_all_background_class_is_reported(self):
        root = helpers.make_tree(pairs=3)
        for n in (1, 2, 3):
            helpers.write_pair(os.path.join(root, "dog"), n, mask_values=(0, 0))
        with self.assertRaisesRegex(fss1000.BadExamplesError,
                                    "every mask of class 'dog' is all background"):
            fss1000.scan(root)
        self.assertNotIn("dog", fss1000.scan(root, skip_bad=True))

    def test_undecodable_rgb_and_resized_files_are_listed_at_scan_time(self):
        root = helpers.make_tree(pairs=4)
        jpg = os.path.join(root, "cat", "1.jpg")
        data = open(jpg, "rb").read()
        open(jpg, "wb").write(data[:len(data) // 3])  # Truncated JPEG.
        open(os.path.join(root, "cat", "2.png"), "wb").close()  # Zero bytes.
        photo = np.random.RandomState(0).randint(0, 256, (32, 32, 3), np.uint8)
        Image.fromarray(photo).save(os.path.join(root, "dog", "1.png"))  # RGB.
        Image.fromarray(np.zeros((16, 16), np.uint8) + 255, "L").save(
            os.path.join(root, "dog", "2.png"))  # Other size.
        with self.assertRaises(fss1000.BadExamplesError) as ctx:
            fss1000.scan(root)
        message = str(ctx.exception)
        self.assertIn("4 bad examples", message)
        self.assertIn(f"{jpg}: cannot decode image", message)
        self.assertIn(os.path.join(root, "cat", "2.png") + ": cannot decode mask",
                      message)
        self.assertIn(os.path.join(root, "dog", "1.png") + ": mask is not binary",
                      message)
        self.assertIn(os.path.join(root, "dog", "2.png") +
                      ": mask size (16, 16) differs from image size (32, 32)",
                      message)
        # The adapt mode's reader checks the same way.
        with self.assertRaisesRegex(fss1000.BadExamplesError, "cannot decode"):
            fss1000.read_class_folder(os.path.join(root, "cat"))
        # Skipped, every remaining task decodes.
        src = source(root, skip_bad=True, val_classes=1, test_classes=1)
        self.assertEqual(len(src.pairs["cat"]), 2)
        for task in src.tasks("train", 1, 1, seed=0).take(4):
            self.assertEqual(task.support_images.shape, (1, 32, 32, 3))

    def test_16bit_masks_and_tiff_named_jpg_are_refused_by_name(self):
        """Issue 28 (1, 5): PIL keeps a 16-bit PNG's values and opens TIFFs,
        TensorFlow's decoder rescales the first to empty masks and refuses
        the second; the scan decodes as the pipeline does, so a class of
        16-bit masks can no longer train to a silent IoU of 1.0."""
        root = helpers.make_tree(pairs=3)
        for n in (1, 2, 3):  # dog: every mask 16-bit, values 0/255 or 0/1.
            rng = np.random.RandomState(n)
            mask = np.where(rng.uniform(size=(32, 32)) > 0.5,
                            255 if n < 3 else 1, 0).astype(np.uint16)
            Image.fromarray(mask).save(os.path.join(root, "dog", f"{n}.png"))
            self.assertEqual(open(os.path.join(root, "dog", f"{n}.png"),
                                  "rb").read()[24], 16)  # Really 16-bit.
        tiff = os.path.join(root, "cat", "2.jpg")
        Image.open(tiff).save(tiff, format="TIFF")
        with self.assertRaises(fss1000.BadExamplesError) as ctx:
            fss1000.scan(root)
        message = str(ctx.exception)
        for n in (1, 2, 3):
            self.assertIn(os.path.join(root, "dog", f"{n}.png") +
                          ": 16-bit PNG mask", message)
        self.assertIn(f"{tiff}: cannot decode image with the pipeline's "
                      "decoder (Unknown image file format", message)
        # One readable line per file: no TF node names or op tags.
        self.assertNotIn("{{function_node", message)
        self.assertNotIn("[Op:", message)
        kept = fss1000.scan(root, skip_bad=True)
        self.assertNotIn("dog", kept)
        self.assertEqual([os.path.basename(i) for i, _ in kept["cat"]],
                         ["1.jpg", "3.jpg"])
        # The adapt mode's reader refuses the same files.
        with self.assertRaisesRegex(fss1000.BadExamplesError, "16-bit PNG"):
            fss1000.read_class_folder(os.path.join(root, "dog"))

    def test_checks_are_cached_by_size_and_mtime(self):
        from efficientlab_tf.data import validate

        root = helpers.make_tree(pairs=2)
        fss1000.scan(root)
        calls = []
        real = validate.check_pair
        validate.check_pair = lambda i, m: calls.append(i) or real(i, m)
        try:
            fss1000.scan(root)
            self.assertEqual(calls, [])  # Nothing decoded again.
            path = os.path.join(root, "cat", "1.jpg")
            os.utime(path, ns=(1, 1))
            fss1000.scan(root)
            self.assertEqual(calls, [path])
        finally:
            validate.check_pair = real

    def test_missing_data_dir(self):
        with self.assertRaisesRegex(FileNotFoundError, "/no/such/dir"):
            source("/no/such/dir")


@pytest.mark.skipif(not os.path.isdir(REALFSS),
                    reason="needs ../shared/data/realfss-train beside the checkout")
class RealFSSTest(tf.test.TestCase):

    def test_reads_realfss_train_as_it_is(self):
        pairs = fss1000.scan(REALFSS)
        self.assertEqual(len(pairs), 34)  # directories only, not MANIFEST.tsv
        self.assertEqual(sum(len(p) for p in pairs.values()), 550)
        src = source(REALFSS, val_classes=4, test_classes=4,
                     skip_bad=True)
        task = next(iter(src.tasks("train", 5, 5, seed=0)))
        masks = np.concatenate([task.support_masks, task.query_masks])
        self.assertTrue(set(np.unique(masks)) <= {0.0, 1.0})
        fg = masks.mean(axis=(1, 2, 3))
        # PROVENANCE.md: every crop keeps 3-90% foreground.
        self.assertTrue(np.all(fg > 0.02) and np.all(fg < 0.95), fg)


def test_several_data_dirs_pool_their_classes_and_train_classes_subsets(tmp_path):
    """--data_dir=a,b pools the classes of both roots (a name in both is
    refused); --train_classes keeps a seeded subset of meta-train and leaves
    meta-val and meta-test as they were (issue 33's task-diversity study)."""
    import dataclasses

    from efficientlab_tf.config import DataConfig
    from efficientlab_tf.data import fss1000

    a = helpers.make_tree(classes=("cat", "dog", "bus"), pairs=2, root=str(tmp_path / "a"))
    b = helpers.make_tree(classes=("emu", "ant", "owl", "yak", "elk"), pairs=2,
                          root=str(tmp_path / "b"))
    config = DataConfig(dataset="fss1000", data_dir=f"{a},{b}", fold=0,
                        num_folds=2, val_classes=1, test_classes=0)
    full = fss1000.folder_table(config)
    assert sorted(full.pairs) == ["ant", "bus", "cat", "dog", "elk", "emu", "owl", "yak"]
    assert full.pairs["emu"][0][0].startswith(b)
    half = fss1000.folder_table(dataclasses.replace(config, train_classes=2))
    assert half.splits["test"] == full.splits["test"]
    assert half.splits["val"] == full.splits["val"]
    assert len(half.splits["train"]) == 2
    assert set(half.splits["train"]) <= set(full.splits["train"])
    with pytest.raises(ValueError, match="only 3 meta-train classes"):
        fss1000.folder_table(dataclasses.replace(config, train_classes=4))
    c = helpers.make_tree(classes=("dog",), pairs=2, root=str(tmp_path / "c"))
    with pytest.raises(ValueError, match="class 'dog' is in two --data_dir folders"):
        fss1000.folder_table(dataclasses.replace(config, data_dir=f"{a},{c}"))


def test_official_test_class_names_can_train():
    # realfss-extra's `flamingo` and realfss-train's `bus`, `motorbike` are
    # FSS-1000 test-class names: --official_test_classes=false with
    # --test_classes=0 trains on every class (the shipped model).
    names = ["bus", "cat", "dog", "flamingo", "motorbike"]
    train, val, test = fss1000.split_classes(names, 0, 0, 0)
    assert test == ["bus", "flamingo", "motorbike"]
    train, val, test = fss1000.split_classes(names, 0, 0, 0, official=False)
    assert (sorted(train), val, test) == (names, [], [])
    train, val, test = fss1000.split_classes(names, 1, 2, 0, official=False)
    assert len(test) == 2 and len(val) == 1 and len(train) == 2
