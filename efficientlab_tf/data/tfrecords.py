"""TFRecord shards of FSS-1000-layout data, and a task source that reads them.

`write_shards` stores every (image, mask) pair's *encoded* bytes unchanged
(no re-encoding, so shards are lossless), with its class name and index,
round-robin over `num_shards` files, plus `shards.json` (classes, counts,
shard files). Every file is decoded once while converting: undecodable
images or masks, masks whose size differs from their image and non-binary
masks are all listed in one error (or skipped with `skip_bad`). Files are
written under temporary names and renamed at the end.

`ShardSource` loads the shards and serves tasks exactly as the folder
loader does (the same sampling code, reading bytes instead of files), so a
`--data_dir` may be a folder tree or a shard folder.
"""

import json
import os

import numpy as np
import tensorflow as tf
from absl import logging
from PIL import Image

from efficientlab_tf.data import fss1000

INDEX = "shards.json"
FORMAT = "efficientlab_tf-fss1000-shards-v1"


def check_pair(image_path, mask_path):
    """Problems of one pair (empty list if fine): decode, sizes, binary mask."""
    problems = []
    try:
        with Image.open(image_path) as im:
            im.load()
            image_size = im.size
    except Exception as e:
        return [f"{image_path}: cannot decode image ({type(e).__name__}: {e})"]
    try:
        with Image.open(mask_path) as m:
            m.load()
            mask = np.asarray(m.convert("L"))
            mask_size = m.size
    except Exception as e:
        return [f"{mask_path}: cannot decode mask ({type(e).__name__}: {e})"]
    if image_size != mask_size:
        problems.append(f"{mask_path}: mask size {mask_size} differs from image "
                        f"size {image_size}")
    values = np.unique(mask)
    if not set(values.tolist()) <= {0, 1, 255}:
        problems.append(f"{mask_path}: mask is not binary (values "
                        f"{values[:8].tolist()}{'...' if len(values) > 8 else ''})")
    return problems


def _example(image_bytes, mask_bytes, class_name, index):
    feature = {
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image_bytes])),
        "mask": tf.train.Feature(bytes_list=tf.train.BytesList(value=[mask_bytes])),
        "class_name": tf.train.Feature(
            bytes_list=tf.train.BytesList(value=[class_name.encode()])),
        "index": tf.train.Feature(int64_list=tf.train.Int64List(value=[index])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature))


def write_shards(data_dir, out_dir, num_shards=8, skip_bad=False):
    """Converts an FSS-1000-layout tree to shards; returns the index dict."""
    if num_shards < 1:
        raise ValueError(f"`num_shards` must be >= 1; got {num_shards}.")
    root = fss1000.resolve_root(data_dir)
    classes = fss1000.scan(root, skip_bad)
    problems, good = [], {}
    for name, pairs in classes.items():
        kept = []
        for image, mask in pairs:
            found = check_pair(image, mask)
            problems.extend(found)
            if not found:
                kept.append((image, mask))
        if kept:
            good[name] = kept
    fss1000._report(problems, root, skip_bad)  # noqa: SLF001 (one reporter)
    os.makedirs(out_dir, exist_ok=True)
    names = [f"shard-{i:05d}-of-{num_shards:05d}.tfrecord" for i in range(num_shards)]
    tmp = [os.path.join(out_dir, f".tmp-{n}") for n in names]
    writers = [tf.io.TFRecordWriter(p) for p in tmp]
    count = 0
    try:
        for name in sorted(good):
            for index, (image, mask) in enumerate(good[name]):
                with open(image, "rb") as f:
                    image_bytes = f.read()
                with open(mask, "rb") as f:
                    mask_bytes = f.read()
                writers[count % num_shards].write(
                    _example(image_bytes, mask_bytes, name, index).SerializeToString())
                count += 1
    finally:
        for w in writers:
            w.close()
    for t, n in zip(tmp, names):
        os.replace(t, os.path.join(out_dir, n))
    index = {"format": FORMAT, "shards": names, "examples": count,
             "classes": {n: len(p) for n, p in sorted(good.items())}}
    path = os.path.join(out_dir, INDEX)
    with open(path + ".tmp", "w") as f:
        json.dump(index, f, indent=2)
    os.replace(path + ".tmp", path)
    logging.info("Wrote %d examples of %d classes to %d shards in %s.", count,
                 len(good), num_shards, out_dir)
    return index


def is_shard_dir(path):
    return bool(path) and os.path.exists(os.path.join(path, INDEX))


def read_shards(shard_dir):
    """{class name: [(image bytes, mask bytes)]} ordered by index."""
    with open(os.path.join(shard_dir, INDEX)) as f:
        index = json.load(f)
    if index.get("format") != FORMAT:
        raise ValueError(f"{shard_dir}/{INDEX} is not a {FORMAT} index "
                         f"(format {index.get('format')!r}).")
    files = [os.path.join(shard_dir, n) for n in index["shards"]]
    missing = [f for f in files if not os.path.exists(f)]
    if missing:
        raise FileNotFoundError(f"missing shard files: {missing}")
    spec = {"image": tf.io.FixedLenFeature([], tf.string),
            "mask": tf.io.FixedLenFeature([], tf.string),
            "class_name": tf.io.FixedLenFeature([], tf.string),
            "index": tf.io.FixedLenFeature([], tf.int64)}
    ds = tf.data.TFRecordDataset(files, num_parallel_reads=tf.data.AUTOTUNE)
    ds = ds.map(lambda r: tf.io.parse_single_example(r, spec),
                num_parallel_calls=tf.data.AUTOTUNE)
    by_class = {}
    for ex in ds.as_numpy_iterator():
        by_class.setdefault(ex["class_name"].decode(), []).append(
            (int(ex["index"]), ex["image"], ex["mask"]))
    return {name: [(i, m) for _, i, m in sorted(items, key=lambda x: x[0])]
            for name, items in by_class.items()}


class ShardSource(fss1000.FolderSource):
    """FolderSource over shards: same splits and sampling, bytes instead of files."""

    def __init__(self, data_config, image_size, skip_bad=False):
        self.root = data_config.data_dir
        self.image_size = int(image_size)
        self.skip_bad = skip_bad
        self.pairs = read_shards(self.root)
        self.read_fn = tf.identity
        names = sorted(self.pairs)
        self.splits = dict(zip(("train", "val", "test"), fss1000.split_classes(
            names, data_config.val_classes, data_config.test_classes,
            data_config.split_seed, data_config.fold, data_config.num_folds)))
        self._log_splits()
