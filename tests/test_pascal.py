"""PASCAL-5i and FP-k loaders on generated VOC/SBD trees (palette PNGs, 255 borders)."""

import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from efficientlab_tf.config import DataConfig
from efficientlab_tf.data import fss1000
from efficientlab_tf.data import pascal
from efficientlab_tf.model.metrics import binary_iou
from tests import helpers


def source(data_dir, **kwargs):
    config = DataConfig(dataset="pascal5i", data_dir=data_dir, fold=0, **kwargs)
    return pascal.pascal_source(config, helpers.SIZE, skip_bad=config.skip_bad_examples)


def test_folds_are_the_standard_class_groups():
    assert pascal.fold_classes(0) == ["aeroplane", "bicycle", "bird", "boat", "bottle"]
    assert pascal.fold_classes(3) == ["pottedplant", "sheep", "sofa", "train", "tvmonitor"]
    assert pascal.voc_index("tvmonitor") == 20
    with pytest.raises(ValueError, match="fold"):
        DataConfig(dataset="pascal5i", data_dir="/x", fold=4)


def test_splits_and_masks_pixel_by_pixel(tmp_path):
    data_dir, maps = helpers.voc_tree(tmp_path)
    with pytest.raises(ValueError, match=r"need 3 image/mask pairs per class.*bird \(0 pairs\)"):
        source(data_dir).task_of_class("test", 0, 1, 2, tf.constant([0, 0]))
    src = source(data_dir, skip_bad_examples=True)
    assert src.classes("test") == pascal.fold_classes(0)
    assert "bus" in src.classes("train") and "aeroplane" not in src.classes("train")
    # Test examples come from the val list only, training ones from train.
    assert len(src.pairs["aeroplane"]) == 3 and len(src.pairs["bicycle"]) == 3
    assert all("2008_" in p[0] for p in src.pairs["aeroplane"])
    assert all("2007_" in p[0] for p in src.pairs["bus"])
    assert len(src.pairs["aeroplane@train"]) == 6  # Monitoring split.
    names = src.class_names("test", 3)
    assert names == ["aeroplane", "bicycle"]
    for position, label in ((0, 1), (1, 2)):
        task = src.task_of_class("test", position, 1, 2, tf.constant([0, position]))
        images = tf.concat([task.support_images, task.query_images], 0).numpy()
        masks = tf.concat([task.support_masks, task.query_masks], 0).numpy()[..., 0]
        for image, mask in zip(images, masks):
            # Find the example by its pixels, then check its mask by hand.
            matches = [i for i, (path, _, _) in enumerate(src.pairs[names[position]])
                       if np.abs(np.asarray(Image.open(path), np.float32) - image).mean() < 3]
            assert len(matches) == 1
            path = src.pairs[names[position]][matches[0]][0]
            labels = maps[os.path.basename(path)[:-4]]
            want = np.where(labels == label, 1.0, np.where(labels == 255, 255.0, 0.0))
            np.testing.assert_array_equal(mask, want)
            assert (mask == 255).any() and (mask == 1).any()


def test_training_masks_make_other_classes_background(tmp_path):
    data_dir, maps = helpers.voc_tree(tmp_path)
    src = source(data_dir, skip_bad_examples=True)
    position = src.class_names("train", 2).index("bus")
    task = src.task_of_class("train", position, 1, 1, tf.constant([1, 2]))
    mask = task.support_masks.numpy()[..., 0]
    # bus (6) pixels are 1; the aeroplane square in the same image is 0.
    assert set(np.unique(mask).tolist()) == {0.0, 1.0, 255.0}
    candidates = [np.where(m == 6, 1.0, np.where(m == 255, 255.0, 0.0))
                  for m in maps.values() if (m == 6).any() and (m == 1).any()]
    assert any(np.array_equal(mask[0], c) for c in candidates)


def test_ignored_border_does_not_count_in_iou(tmp_path):
    data_dir, maps = helpers.voc_tree(tmp_path)
    task = source(data_dir, skip_bad_examples=True).task_of_class(
        "test", 0, 1, 1, tf.constant([0, 0]))
    masks = task.query_masks
    # Predict the square plus its whole 255 border: IoU is still exactly 1.
    probs = tf.cast(masks[..., 0] > 0, tf.float32)
    np.testing.assert_allclose(binary_iou(masks, probs).numpy(), [1.0])


def test_sbd_aug_masks_and_list(tmp_path):
    data_dir, _ = helpers.voc_tree(tmp_path)
    src = source(data_dir, pascal_aug=True)
    # train_aug lists 2009_000000 (bus) and 2008_000000, a val image: dropped.
    assert len(src.pairs["bus"]) == 3
    assert all("SegmentationClassAug" in p[1] for p in src.pairs["bus"])
    assert not any("2008_000000" in p[0] for p in src.pairs["aeroplane@train"])


def test_every_bad_file_is_listed(tmp_path):
    data_dir, _ = helpers.voc_tree(tmp_path)
    root = os.path.join(data_dir, "VOC2012")
    os.remove(os.path.join(root, "SegmentationClass", "2008_000001.png"))
    Image.new("RGB", (helpers.SIZE, helpers.SIZE)).save(
        os.path.join(root, "SegmentationClass", "2008_000002.png"))
    Image.fromarray(np.full((helpers.SIZE, helpers.SIZE), 37, np.uint8), "L").save(
        os.path.join(root, "SegmentationClass", "2008_000003.png"))
    Image.fromarray(np.zeros((helpers.SIZE, helpers.SIZE + 4), np.uint8), "L").save(
        os.path.join(root, "SegmentationClass", "2008_000004.png"))
    with open(os.path.join(root, "SegmentationClass", "2008_000005.png"), "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(fss1000.BadExamplesError) as e:
        source(data_dir)
    text = str(e.value)
    assert "5 bad examples" in text
    for needle in ("2008_000001.png: missing", "2008_000002.png: cannot read label map",
                   "mode 'RGB'", "2008_000003.png: labels [37]",
                   "2008_000004.png: size", "2008_000005.png: cannot read"):
        assert needle in text, needle
    src = source(data_dir, skip_bad_examples=True)
    assert len(src.pairs["aeroplane"]) + len(src.pairs["bicycle"]) == 1


def test_missing_lists_and_roots_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="no JPEGImages"):
        source(str(tmp_path))
    data_dir, _ = helpers.voc_tree(tmp_path)
    os.remove(os.path.join(data_dir, "VOC2012", "ImageSets", "Segmentation", "val.txt"))
    with pytest.raises(FileNotFoundError, match="val.txt"):
        source(data_dir)


def test_fpk_joins_fss1000_and_pascal_analogs(tmp_path):
    fss, voc = helpers.fpk_tree(tmp_path)
    config = DataConfig(dataset="fpk", data_dir=fss, pascal_dir=voc)
    src = pascal.fpk_source(config, helpers.SIZE)
    assert src.classes("test") == ["airliner", "bus", "motorbike", "potted_plant",
                                   "television"]
    # 3 FSS-1000 pairs + 2 train + 1 val PASCAL images per class.
    assert src.class_sizes("test") == {n: 6 for n in src.classes("test")}
    task = src.task_of_class("test", 4, 4, 2, tf.constant([3, 4]))
    masks = tf.concat([task.support_masks, task.query_masks], 0).numpy()
    # All six examples are drawn: the PASCAL ones carry 255 borders, the
    # FSS-1000 ones are binary.
    with_border = [(m == 255).any() for m in masks]
    assert sum(with_border) == 3
    only_fss = pascal.fpk_source(DataConfig(dataset="fpk", data_dir=fss), helpers.SIZE)
    assert only_fss.class_sizes("test")["bus"] == 3


def test_pascal_and_fpk_shards_serve_the_same_tasks_as_folders(tmp_path):
    from efficientlab_tf.data import tfrecords

    data_dir, _ = helpers.voc_tree(tmp_path / "p")
    config = DataConfig(dataset="pascal5i", data_dir=data_dir, fold=0,
                        skip_bad_examples=True)
    shard_dir = str(tmp_path / "pascal_shards")
    index = pascal.write_shards(config, shard_dir, num_shards=2)
    assert index["dataset"] == "pascal5i"
    folder = pascal.pascal_source(config, helpers.SIZE, skip_bad=True)
    shards = pascal.pascal_source(
        DataConfig(dataset="pascal5i", data_dir=shard_dir, fold=0), helpers.SIZE, skip_bad=True)
    assert {k: len(v) for k, v in folder.pairs.items()} == \
        {k: len(v) for k, v in shards.pairs.items()}
    for split, shots in (("train", 1), ("test", 1)):
        a = next(iter(folder.tasks(split, shots, 1, seed=5)))
        b = next(iter(shards.tasks(split, shots, 1, seed=5)))
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x.numpy(), y.numpy())
    with pytest.raises(ValueError, match="holds 'pascal5i' shards"):
        tfrecords.read_shards(shard_dir)

    fss, voc = helpers.fpk_tree(tmp_path / "f")
    fconfig = DataConfig(dataset="fpk", data_dir=fss, pascal_dir=voc)
    fshards = str(tmp_path / "fpk_shards")
    assert pascal.write_shards(fconfig, fshards, num_shards=3)["examples"] == 30
    a = pascal.fpk_source(fconfig, helpers.SIZE)
    b = pascal.fpk_source(DataConfig(dataset="fpk", data_dir=fshards), helpers.SIZE)
    assert a.class_sizes("test") == b.class_sizes("test")
    ta = a.task_of_class("test", 2, 3, 2, tf.constant([1, 1]))
    tb = b.task_of_class("test", 2, 3, 2, tf.constant([1, 1]))
    for x, y in zip(ta, tb):
        np.testing.assert_array_equal(x.numpy(), y.numpy())


def test_pascal_report_by_hand():
    from efficientlab_tf.evaluation import pascal_report

    # Class "a": a 2x3 query with a VOC boundary pixel (255, ignored).
    #   truth [[1, 1, 0], [0, 255, 0]], prediction >= 0.5: [[1, 0, 1], [0, 1, 0]]
    #   foreground: I = 1 (0,0), U = 3 ((0,0), (0,1), (0,2))
    #   background: I = 2 ((1,0), (1,2)), U = 4 ((0,1), (0,2), (1,0), (1,2))
    masks = np.array([[1, 1, 0], [0, 255, 0]], np.float32)[None, ..., None]
    probs = np.array([[0.9, 0.2, 0.7], [0.1, 0.8, 0.3]], np.float32)[None]
    inter, union = pascal_report.intersections_unions(masks, probs)
    np.testing.assert_array_equal(inter, [2, 1])
    np.testing.assert_array_equal(union, [4, 3])
    report = pascal_report.Report()
    report.add("a", masks, probs)
    # Class "b": an empty 2x2 mask predicted empty: background 4/4, no
    # foreground (IoU 0 with union 0, as HSNet counts it).
    report.add("b", np.zeros((1, 2, 2, 1), np.float32), np.full((1, 2, 2), 0.2))
    result = report.result()
    assert result["per_class_iou"] == {"a": 1 / 3, "b": 0.0}
    assert abs(result["miou"] - (1 / 3) / 2) < 1e-9
    # FB-IoU pools all queries: background (2 + 4) / (4 + 4), foreground 1 / 3.
    assert abs(result["fb_iou"] - (6 / 8 + 1 / 3) / 2) < 1e-9
    assert result["episodes"] == 2
