"""A table of examples per class, and the one task sampler over it.

Every on-disk dataset (FSS-1000 folders, TFRecord shards, PASCAL-5i, FP-k
pools) becomes an `ExampleTable`: per class, entries (image, mask[, label])
that are file paths or encoded bytes (`read_fn` turns an entry into bytes),
and the class names of each split. `TableSource` samples fixed-shape tasks
from any table, inside tf.data, with one sampling code for all datasets; the
datasets differ only in how they build their table (composition, not
subclasses).
"""

import dataclasses
from typing import Callable

import numpy as np
import tensorflow as tf
from absl import logging

from efficientlab_tf.data import decode
from efficientlab_tf.data.tasks import TaskBatch
from efficientlab_tf.data.tasks import draw_class


@dataclasses.dataclass
class ExampleTable:
    """Examples of a dataset, by class.

    Attributes:
        root: Where the data lives (for messages).
        pairs: {class: [(image, mask) or (image, mask, label)]}; label -1 (or
            absent) marks a binary mask, else the class index in a label-map
            mask (PASCAL VOC).
        splits: {"train"/"val"/"test": [class names]}.
        read_fn: Entry -> encoded bytes (`tf.io.read_file` for paths,
            `tf.identity` for bytes).
    """

    root: str
    pairs: dict
    splits: dict
    read_fn: Callable = tf.io.read_file


class TableSource:
    """TaskSource over an ExampleTable (see `data/source.py: TaskSource`).

    Args:
        table: ExampleTable.
        image_size: Side S images and masks are resized to.
        skip_bad: Leave out classes too small for a task (with a warning)
            instead of failing.
    """

    def __init__(self, table, image_size, skip_bad=False):
        self.table = table
        self.root = table.root
        self.pairs = table.pairs
        self.splits = table.splits
        self.read_fn = table.read_fn
        self.image_size = int(image_size)
        self.skip_bad = skip_bad
        self._task_fns = {}

    def log_splits(self, what):
        logging.info("%s %s: %d classes (%d meta-train, %d meta-val, %d "
                     "meta-test).", what, self.root, len(self.pairs),
                     *(len(self.splits[s]) for s in ("train", "val", "test")))

    def class_sizes(self, split):
        """{class: examples} of `split`."""
        return {n: len(self.pairs[n]) for n in self.classes(split)}

    def class_agnostic_scores(self, split, shots, query_shots, seed, count):
        """None: real photos have no class-agnostic oracle."""
        del split, shots, query_shots, seed, count
        return None

    def classes(self, split):
        if split not in self.splits:
            raise ValueError(
                f"split must be one of {sorted(self.splits)}; got {split!r}.")
        return self.splits[split]

    def _tables(self, split, needed, report=True):
        names = self.classes(split)
        short = [f"{n} ({len(self.pairs[n])} pairs)" for n in names
                 if len(self.pairs[n]) < needed]
        if short and not report:  # The caller chose the classes (FP-k).
            names = [n for n in names if len(self.pairs[n]) >= needed]
        elif short:
            # Not bad files: the shot flags ask for more than these classes hold.
            more = "..." if len(short) > 10 else ""
            message = (
                f"{split} tasks need {needed} image/mask pairs per class "
                "(support shots + query shots: --train_shots + "
                "--train_query_shots for meta-training, --eval_shots + "
                f"--query_shots for evaluation), but {len(short)} of the "
                f"{len(names)} {split} classes of {self.root} have fewer: "
                f"{', '.join(short[:10])}{more}")
            if not self.skip_bad:
                raise ValueError(message + "; lower those flags, or pass "
                                 "--skip_bad_examples to leave the classes out.")
            logging.warning("%s; leaving them out (--skip_bad_examples).", message)
            names = [n for n in names if len(self.pairs[n]) >= needed]
        if not names:
            raise ValueError(
                f"no {split} class of {self.root} has {needed} image/mask pairs.")
        width = max(len(self.pairs[n]) for n in names)
        images = np.full((len(names), width), b"", dtype=object)
        masks = np.full((len(names), width), b"", dtype=object)
        # Mask label per entry: -1 for binary masks (FSS-1000), else the
        # class index in a label-map PNG (PASCAL VOC; see decode.py).
        labels = np.full((len(names), width), -1, np.int32)
        counts = np.zeros(len(names), np.int32)
        for i, n in enumerate(names):
            for j, entry in enumerate(self.pairs[n]):
                images[i, j], masks[i, j] = entry[0], entry[1]
                if len(entry) > 2:
                    labels[i, j] = entry[2]
            counts[i] = len(self.pairs[n])
        # Entries are paths (folders) or encoded bytes (shards); both are
        # tf.string and go through `self.read_fn`.
        as_bytes = np.vectorize(
            lambda x: x.encode() if isinstance(x, str) else x, otypes=[object])
        return (tf.constant(as_bytes(images).tolist(), tf.string),
                tf.constant(as_bytes(masks).tolist(), tf.string),
                tf.constant(labels), tf.constant(counts))

    def _task_fn(self, split, shots, query_shots, min_pairs=0):
        total = shots + query_shots
        image_paths, mask_paths, labels, counts = self._tables(
            split, max(total, min_pairs), report=not min_pairs)
        size = self.image_size
        width = image_paths.shape[1]

        def task_of_class(c, seed):
            # A random permutation of this class's pairs: random keys, with
            # padding slots pushed to the end.
            keys = tf.random.stateless_uniform([width], seed)
            keys = tf.where(tf.range(width) < counts[c], keys, 2.0)
            picks = tf.argsort(keys)[:total]
            read = self.read_fn
            images = tf.map_fn(
                lambda p: decode.decode_image(read(p), size),
                tf.gather(image_paths[c], picks), fn_output_signature=tf.float32)
            masks = tf.map_fn(
                lambda pl: decode.decode_any_mask(read(pl[0]), size, pl[1]),
                (tf.gather(mask_paths[c], picks), tf.gather(labels[c], picks)),
                fn_output_signature=tf.float32)
            return TaskBatch(images[:shots], masks[:shots], images[shots:],
                             masks[shots:])

        return task_of_class, tf.shape(counts)[0]

    def task_of_class(self, split, position, shots, query_shots, seed,
                      min_pairs=0):
        """One TaskBatch of the class at `position` of
        `class_names(split, max(shots + query_shots, min_pairs))` (FP-k: a
        fixed `min_pairs` keeps positions stable across k)."""
        key = (split, shots, query_shots, min_pairs)
        if key not in self._task_fns:
            self._task_fns[key] = self._task_fn(split, shots, query_shots,
                                                min_pairs)[0]
        return self._task_fns[key](tf.constant(position, tf.int32), seed)

    def tasks(self, split, shots, query_shots, seed, start=0, count=None):
        """tf.data stream of TaskBatch; task i depends only on (seed, i)."""
        task_of_class, num_classes = self._task_fn(split, shots, query_shots)

        def make(index):
            return task_of_class(*draw_class(seed, index, num_classes))

        stop = 2**62 if count is None else start + count
        return tf.data.Dataset.range(start, stop).map(
            make, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    def task_class(self, split, shots, query_shots, seed, index):
        """Position (as `task_of_class` takes it) of the class of task
        `index` of `tasks(split, shots, query_shots, seed)`."""
        n = len(self.usable_classes(split, shots + query_shots))
        return int(draw_class(seed, index, n)[0])

    def class_tasks(self, split, shots, query_shots, seed, draws):
        """(class position, TaskBatch) for every class of `split`, `draws` each.

        Classes too small for a task are reported (or skipped) as in `tasks`;
        positions refer to `usable_classes(split, shots + query_shots)`.
        """
        task_of_class, _ = self._task_fn(split, shots, query_shots)

        def make(index):
            c = tf.cast(index // draws, tf.int32)
            task_seed = tf.stack([tf.cast(seed, tf.int32), tf.cast(index, tf.int32)])
            seeds = tf.random.experimental.stateless_split(task_seed, 2)
            return c, task_of_class(c, seeds[1])

        n = len(self.usable_classes(split, shots + query_shots))
        return tf.data.Dataset.range(n * draws).map(
            make, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    def usable_classes(self, split, needed):
        return [n for n in self.classes(split) if len(self.pairs[n]) >= needed]

    def class_names(self, split, needed):
        """Names of the class positions `class_tasks` yields."""
        return self.usable_classes(split, needed)
