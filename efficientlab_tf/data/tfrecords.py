"""TFRecord shards of any task dataset, and a task source that reads them.

`write_entries` stores every (image, mask) pair's *encoded* bytes unchanged
(no re-encoding, so shards are lossless), with its class name, index, mask
label (-1: binary mask; else the class index of a PASCAL label map) and
split tag (the PASCAL image list it came from), round-robin over
`num_shards` files, plus `shards.json` (dataset, classes, counts, shard
files). `write_shards` converts FSS-1000 trees; `pascal.write_shards` PASCAL
VOC and FP-k pools. Every file is decoded once while converting: undecodable
images or masks, masks whose size differs from their image and non-binary
masks are all listed in one error (or skipped with `skip_bad`; the checks of
`validate.py`). Files are
written under unpredictable temporary names (`.tmp-shard-<host>.<pid>-*`,
`storage.temp_prefix`) and renamed at the end; the next convert into the folder
removes what a killed one left.

`shard_source` loads the shards and serves tasks exactly as the folder
loader does (the same sampling code, reading bytes instead of files), so a
`--data_dir` may be a folder tree or a shard folder.
"""

import json
import os
import tempfile

import tensorflow as tf
from absl import logging

from efficientlab_tf.data import fss1000
from efficientlab_tf.data.table import ExampleTable
from efficientlab_tf.data.table import TableSource
from efficientlab_tf import storage

INDEX = "shards.json"
SHARD_TMP = ".tmp-shard-"
FORMAT = "efficientlab_tf-shards-v2"
_FORMAT_V1 = "efficientlab_tf-fss1000-shards-v1"  # Read as FSS-1000 shards.


def _example(image_bytes, mask_bytes, class_name, index, label=-1, split=""):
    def b(value):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    def i(value):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))

    feature = {
        "image": b(image_bytes), "mask": b(mask_bytes),
        "class_name": b(class_name.encode()), "index": i(index),
        "label": i(label), "split": b(split.encode()),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature))


def write_entries(entries, out_dir, num_shards=8, dataset="fss1000"):
    """Writes examples to shards; returns the index dict.

    Args:
        entries: (class name, split tag, image path, mask path, label) per
            example, already validated; label -1 marks a binary mask, else
            the class index in a label-map mask (PASCAL). The split tag says
            which image list an example came from ("" when there is none).
        dataset: recorded in the index ("fss1000", "pascal5i" or "fpk").
    """
    if num_shards < 1:
        raise ValueError(f"`num_shards` must be >= 1; got {num_shards}.")
    storage.check_writable(out_dir, "TFRecord shards")
    # Shards of a convert killed earlier on this host (kill -9 skips the
    # cleanup below) are removed; a convert running now keeps its own.
    for name in storage.remove_stale(out_dir, SHARD_TMP):
        logging.info("Removed %s, left in %s by an interrupted convert.",
                     name, out_dir)
    names = [f"shard-{i:05d}-of-{num_shards:05d}.tfrecord" for i in range(num_shards)]
    tmp = []
    counts, positions = {}, {}
    try:
        with storage.writing("TFRecord shards", out_dir):
            for _ in names:  # Unpredictable names: no planted symlink is followed.
                fd, path = tempfile.mkstemp(prefix=storage.temp_prefix(SHARD_TMP),
                                            suffix=".tfrecord", dir=out_dir)
                os.close(fd)
                tmp.append(path)
            writers = [tf.io.TFRecordWriter(p) for p in tmp]
            try:
                for count, (name, split, image, mask, label) in enumerate(entries):
                    with open(image, "rb") as f:
                        image_bytes = f.read()
                    with open(mask, "rb") as f:
                        mask_bytes = f.read()
                    key = (name, split)
                    index = positions[key] = positions.get(key, -1) + 1
                    counts[name] = counts.get(name, 0) + 1
                    writers[count % num_shards].write(_example(
                        image_bytes, mask_bytes, name, index, label,
                        split).SerializeToString())
            finally:
                for w in writers:
                    w.close()
            for t, n in zip(tmp, names):
                os.chmod(t, storage.usual_mode())  # mkstemp's 0600 otherwise.
                os.replace(t, os.path.join(out_dir, n))
    except BaseException:  # Interrupted or failed: no temporary shard left.
        for t in tmp:
            if os.path.exists(t):
                os.remove(t)
        raise
    total = sum(counts.values())
    index = {"format": FORMAT, "dataset": dataset, "shards": names,
             "examples": total, "classes": dict(sorted(counts.items()))}
    with storage.writing("the shard index", os.path.join(out_dir, INDEX)):
        storage.write_json(os.path.join(out_dir, INDEX), index)
    logging.info("Wrote %d examples of %d classes to %d shards in %s.", total,
                 len(counts), num_shards, out_dir)
    return index


def write_shards(data_dir, out_dir, num_shards=8, skip_bad=False):
    """Converts an FSS-1000-layout tree to shards; returns the index dict."""
    if num_shards < 1:
        raise ValueError(f"`num_shards` must be >= 1; got {num_shards}.")
    # Every pair checked (validate.py); several roots pool their classes.
    root, classes = fss1000.scan_roots(data_dir, skip_bad)
    entries = [(name, "", image, mask, -1)
               for name in sorted(classes) for image, mask in classes[name]]
    return write_entries(entries, out_dir, num_shards, "fss1000")


def is_shard_dir(path):
    return bool(path) and os.path.exists(os.path.join(path, INDEX))


def read_index(shard_dir):
    with open(os.path.join(shard_dir, INDEX)) as f:
        index = json.load(f)
    if index.get("format") not in (FORMAT, _FORMAT_V1):
        raise ValueError(f"{shard_dir}/{INDEX} is not a {FORMAT} index "
                         f"(format {index.get('format')!r}).")
    index.setdefault("dataset", "fss1000")
    return index


def read_entries(shard_dir, dataset=None):
    """[(class name, split tag, image bytes, mask bytes, label)] in writing order
    within each (class, split).

    Raises:
        ValueError: the shards hold another dataset than `dataset`.
    """
    index = read_index(shard_dir)
    if dataset and index["dataset"] != dataset:
        raise ValueError(f"{shard_dir} holds {index['dataset']!r} shards; "
                         f"--dataset={dataset} needs shards converted with it.")
    files = [os.path.join(shard_dir, n) for n in index["shards"]]
    missing = [f for f in files if not os.path.exists(f)]
    if missing:
        raise FileNotFoundError(f"missing shard files: {missing}")
    spec = {"image": tf.io.FixedLenFeature([], tf.string),
            "mask": tf.io.FixedLenFeature([], tf.string),
            "class_name": tf.io.FixedLenFeature([], tf.string),
            "index": tf.io.FixedLenFeature([], tf.int64),
            "label": tf.io.FixedLenFeature([], tf.int64, default_value=-1),
            "split": tf.io.FixedLenFeature([], tf.string, default_value="")}
    ds = tf.data.TFRecordDataset(files, num_parallel_reads=tf.data.AUTOTUNE)
    ds = ds.map(lambda r: tf.io.parse_single_example(r, spec),
                num_parallel_calls=tf.data.AUTOTUNE)
    rows = [(ex["class_name"].decode(), ex["split"].decode(), int(ex["index"]),
             ex["image"], ex["mask"], int(ex["label"]))
            for ex in ds.as_numpy_iterator()]
    rows.sort(key=lambda r: (r[0], r[1], r[2]))
    return [(c, s, i, m, label) for c, s, _, i, m, label in rows]


def read_shards(shard_dir):
    """{class name: [(image bytes, mask bytes)]} of FSS-1000 shards, in order."""
    by_class = {}
    for name, _, image, mask, _ in read_entries(shard_dir, "fss1000"):
        by_class.setdefault(name, []).append((image, mask))
    return by_class


def shard_source(data_config, image_size, skip_bad=False):
    """TaskSource over FSS-1000 shards: the folder's splits and sampling,
    bytes instead of files."""
    pairs = read_shards(data_config.data_dir)
    splits = dict(zip(("train", "val", "test"), fss1000.split_classes(
        sorted(pairs), data_config.val_classes, data_config.test_classes,
        data_config.split_seed, data_config.fold, data_config.num_folds,
        data_config.official_test_classes)))
    splits = fss1000.subset_train(splits, data_config)
    source = TableSource(
        ExampleTable(root=data_config.data_dir, pairs=pairs, splits=splits,
                     read_fn=tf.identity), image_size, skip_bad)
    source.log_splits("FSS-1000 shards")
    return source
