"""FSS-1000 (`--dataset=fss1000 --data_dir=...`).

Layout: `<root>/<class>/<n>.jpg` with the mask `<n>.png` beside it (also when
`data_dir` is the folder holding the usual `fewshot_data/`). Only folders
are classes (a root may hold README/PROVENANCE/MANIFEST files).

Splits: the official 240 test classes (shipped list
`efficientlab_tf/resources/fss1000_test_classes.txt`) that are present form
the meta-test set; the other classes are split into meta-train and meta-val
by a seeded permutation (`val_classes` of them to meta-val). A root holding
none of the official test classes (a custom dataset in the FSS-1000 layout)
gets `test_classes` seeded meta-test classes instead. `fold`/`num_folds`
turn the classes into cross-validation folds (as PASCAL-5i does): meta-test
is one fold, meta-train/val the others.

Bad input (image without mask, mask without image, empty class folder,
files that do not decode, masks of another size than their image, masks that
are not 0/255 or 0/1, a class whose masks are all background; see
`validate.py`) is reported all at once, every offending file listed; with
`skip_bad_examples` it is logged and left out. A class with fewer pairs than
a task needs is named with the shot flags that ask for them.
"""

import os

import numpy as np
import tensorflow as tf
from absl import logging

from efficientlab_tf.data import decode
from efficientlab_tf.data import validate
from efficientlab_tf.data.tasks import TaskBatch
from efficientlab_tf.resources import read_class_list

IMAGE_EXTENSIONS = (".jpg", ".jpeg")
MASK_EXTENSION = ".png"


class BadExamplesError(ValueError):
    """The dataset holds files that cannot form image/mask pairs."""


def resolve_root(data_dir):
    """The folder whose subfolders are classes."""
    if not data_dir or not os.path.isdir(data_dir):
        raise FileNotFoundError(f"`data_dir` {data_dir!r} is not a directory.")
    nested = os.path.join(data_dir, "fewshot_data")
    return nested if os.path.isdir(nested) else data_dir


def scan_class(folder):
    """(sorted (image, mask) pairs, list of problems) of one class folder."""
    images, masks, problems = {}, {}, []
    for f in os.listdir(folder):
        stem, ext = os.path.splitext(f)
        if ext.lower() in IMAGE_EXTENSIONS:
            images[stem] = os.path.join(folder, f)
        elif ext.lower() == MASK_EXTENSION:
            masks[stem] = os.path.join(folder, f)
    for stem in sorted(set(images) - set(masks)):
        problems.append(f"{images[stem]}: image without mask {stem}.png")
    for stem in sorted(set(masks) - set(images)):
        problems.append(f"{masks[stem]}: mask without image {stem}.jpg")
    pairs = [(images[s], masks[s])
             for s in sorted(set(images) & set(masks), key=_natural_key)]
    if not pairs:
        problems.append(f"{folder}: empty class folder (no image/mask pairs)")
    return pairs, problems


def read_class_folder(folder, skip_bad=False):
    """Checked pairs of one class folder (e.g. a user's labelled examples)."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"class folder {folder!r} is not a directory.")
    pairs, problems = scan_class(folder)
    name = os.path.basename(os.path.normpath(folder))
    good, bad = validate.check_classes({name: pairs} if pairs else {},
                                       os.path.dirname(os.path.abspath(folder)))
    report(problems + bad, folder, skip_bad)
    if not good:
        raise FileNotFoundError(f"no usable image/mask pairs in {folder!r}.")
    return good[name]


def scan(root, skip_bad=False):
    """{class name: sorted list of (image path, mask path)} of a root.

    Raises:
        BadExamplesError: listing every problem, unless `skip_bad`.
    """
    classes, problems = {}, []
    for name in sorted(os.listdir(root)):
        folder = os.path.join(root, name)
        if not os.path.isdir(folder):
            continue
        pairs, class_problems = scan_class(folder)
        problems.extend(class_problems)
        if pairs:
            classes[name] = pairs
    classes, bad = validate.check_classes(classes, root)
    report(problems + bad, root, skip_bad)
    if not classes:
        raise FileNotFoundError(f"no class folders with image/mask pairs in {root!r}.")
    return classes


def load_pairs(pairs, size):
    """Decodes (image, mask) path pairs -> (float32 [n,S,S,3], [n,S,S,1])."""
    images = [decode.decode_image(tf.io.read_file(i), size) for i, _ in pairs]
    masks = [decode.decode_mask(tf.io.read_file(m), size) for _, m in pairs]
    return tf.stack(images), tf.stack(masks)


def _natural_key(stem):
    return (0, int(stem), "") if stem.isdigit() else (1, 0, stem)


def report(problems, where, skip_bad):
    """Raises BadExamplesError listing `problems` (or logs them with skip_bad)."""
    if not problems:
        return
    text = "\n  ".join(problems)
    if skip_bad:
        logging.warning("Skipping %d bad examples in %s:\n  %s",
                        len(problems), where, text)
        return
    raise BadExamplesError(
        f"{len(problems)} bad examples in {where} (pass --skip_bad_examples to "
        f"leave them out):\n  {text}")


def split_classes(names, val_classes, test_classes, split_seed, fold=-1,
                  num_folds=4):
    """(train, val, test) class-name lists (see module docstring).

    With `fold` >= 0 the classes are cross-validation folds instead: a
    permutation by `split_seed` dealt round-robin into `num_folds` folds;
    fold `fold` is meta-test, `val_classes` of the rest meta-val, the others
    meta-train (the official FSS-1000 test list is not used).
    """
    if fold >= 0:
        if not 0 <= fold < num_folds or num_folds < 2:
            raise ValueError(f"`fold` must be in [0, num_folds={num_folds}) with "
                             f"num_folds >= 2; got fold={fold}.")
        if len(names) < num_folds:
            raise ValueError(f"{len(names)} classes cannot form {num_folds} folds.")
        order = np.random.RandomState(split_seed).permutation(len(names))
        shuffled = [names[i] for i in order]
        test = sorted(shuffled[fold::num_folds])
        rest = [n for i, n in enumerate(shuffled) if i % num_folds != fold]
        val, train = sorted(rest[:val_classes]), sorted(rest[val_classes:])
        if not train:
            raise ValueError(f"no meta-train classes left in fold {fold}.")
        return train, val, test
    official = set(read_class_list("fss1000_test_classes.txt"))
    test = [n for n in names if n in official]
    rest = [n for n in names if n not in official]
    order = np.random.RandomState(split_seed).permutation(len(rest))
    rest = [rest[i] for i in order]
    if not test:
        test, rest = sorted(rest[:test_classes]), rest[test_classes:]
    val, train = sorted(rest[:val_classes]), sorted(rest[val_classes:])
    if not train:
        raise ValueError(
            f"no meta-train classes left: {len(names)} classes, "
            f"{len(val)} meta-val, {len(test)} meta-test.")
    return train, val, test


class FolderSource:
    """Tasks read from an FSS-1000-layout folder, decoded inside tf.data.

    Args:
        data_config: DataConfig (data_dir, val_classes, test_classes,
            split_seed).
        image_size: Side S images and masks are resized to.
        skip_bad: Log and leave out bad examples instead of failing.
    """

    def __init__(self, data_config, image_size, skip_bad=False):
        self.root = resolve_root(data_config.data_dir)
        self.image_size = int(image_size)
        self.skip_bad = skip_bad
        self.pairs = scan(self.root, skip_bad)
        self.read_fn = tf.io.read_file  # Table entries are file paths.
        names = sorted(self.pairs)
        self.splits = dict(zip(("train", "val", "test"), split_classes(
            names, data_config.val_classes, data_config.test_classes,
            data_config.split_seed, data_config.fold, data_config.num_folds)))
        self._log_splits()

    def _log_splits(self):
        logging.info("FSS-1000 data %s: %d classes (%d meta-train, %d "
                     "meta-val, %d meta-test).", self.root, len(self.pairs),
                     *(len(self.splits[s]) for s in ("train", "val", "test")))

    def _where(self, text):
        """Where a class (text: "<name> (<n> pairs)") lives, for messages."""
        return os.path.join(self.root, text)

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
        cache = self.__dict__.setdefault("_task_fns", {})
        if key not in cache:
            cache[key] = self._task_fn(split, shots, query_shots, min_pairs)[0]
        return cache[key](tf.constant(position, tf.int32), seed)

    def tasks(self, split, shots, query_shots, seed, start=0, count=None):
        """tf.data stream of TaskBatch; task i depends only on (seed, i)."""
        task_of_class, num_classes = self._task_fn(split, shots, query_shots)

        def make(index):
            task_seed = tf.stack([tf.cast(seed, tf.int32), tf.cast(index, tf.int32)])
            seeds = tf.random.experimental.stateless_split(task_seed, 2)
            c = tf.random.stateless_uniform(
                [], seeds[0], 0, num_classes, dtype=tf.int32)
            return task_of_class(c, seeds[1])

        stop = 2**62 if count is None else start + count
        return tf.data.Dataset.range(start, stop).map(
            make, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

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
