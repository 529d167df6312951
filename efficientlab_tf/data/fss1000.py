"""FSS-1000 (`--dataset=fss1000 --data_dir=...`).

Layout: `<root>/<class>/<n>.jpg` with the mask `<n>.png` beside it (also when
`data_dir` is the folder holding the usual `fewshot_data/`). Only folders
are classes (a root may hold README/PROVENANCE/MANIFEST files). Several
roots, comma-separated (`--data_dir=realfss-train,realfss-extra`), are one
dataset: their classes are pooled, and a class name found in two roots is
refused (it would silently merge two classes).

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
from efficientlab_tf.data.table import ExampleTable
from efficientlab_tf.data.table import TableSource
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


def data_roots(data_dir):
    """The class roots of `data_dir`: one folder, or several comma-separated."""
    parts = [p.strip() for p in (data_dir or "").split(",")]
    if not data_dir or not all(parts):
        raise FileNotFoundError(f"`data_dir` {data_dir!r} is not a directory "
                                "(or a comma-separated list of them).")
    return [resolve_root(p) for p in parts]


def scan_roots(data_dir, skip_bad=False):
    """(display root, {class: pairs}) of every root of `data_dir` pooled.

    Raises:
        ValueError: a class name is in two roots.
    """
    roots = data_roots(data_dir)
    classes, where = {}, {}
    for root in roots:
        for name, pairs in scan(root, skip_bad).items():
            if name in classes:
                raise ValueError(
                    f"class {name!r} is in two --data_dir folders, "
                    f"{where[name]!r} and {root!r}; rename one (a class name "
                    "is its identity).")
            classes[name], where[name] = pairs, root
    return ",".join(roots), classes


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
                  num_folds=4, official=True):
    """(train, val, test) class-name lists (see module docstring).

    With `fold` >= 0 the classes are cross-validation folds instead: a
    permutation by `split_seed` dealt round-robin into `num_folds` folds;
    fold `fold` is meta-test, `val_classes` of the rest meta-val, the others
    meta-train (the official FSS-1000 test list is not used). With
    `official` False the official list is not used either: `test_classes`
    seeded classes are meta-test (0: none, so every class trains).
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
            raise ValueError(f"no meta-train classes left in fold {fold}: "
                             f"{len(rest)} classes outside it, --val_classes="
                             f"{val_classes} of them meta-val; lower "
                             "--val_classes or --num_folds.")
        return train, val, test
    listed = set(read_class_list("fss1000_test_classes.txt") if official else ())
    test = [n for n in names if n in listed]
    rest = [n for n in names if n not in listed]
    order = np.random.RandomState(split_seed).permutation(len(rest))
    rest = [rest[i] for i in order]
    if not test:
        test, rest = sorted(rest[:test_classes]), rest[test_classes:]
    val, train = sorted(rest[:val_classes]), sorted(rest[val_classes:])
    if not train:
        raise ValueError(
            f"no meta-train classes left: {len(names)} classes, "
            f"{len(val)} meta-val (--val_classes={val_classes}), {len(test)} "
            f"meta-test ({'FSS-1000 test classes' if official and set(test) <= listed else f'--test_classes={test_classes}'}); "
            "lower --val_classes (the synthetic recipes set 32), or "
            "--test_classes.")
    return train, val, test


def subset_train(splits, data_config):
    """`splits` with meta-train cut to `--train_classes` seeded classes."""
    n = data_config.train_classes
    if not n:
        return splits
    train = splits["train"]
    if n > len(train):
        raise ValueError(f"`--train_classes={n}` but only {len(train)} meta-train "
                         "classes exist.")
    order = np.random.RandomState(data_config.split_seed + 1).permutation(len(train))
    return dict(splits, train=sorted(train[i] for i in order[:n]))


def folder_table(data_config, skip_bad=False):
    """ExampleTable of an FSS-1000-layout folder (every pair checked)."""
    root, pairs = scan_roots(data_config.data_dir, skip_bad)
    splits = dict(zip(("train", "val", "test"), split_classes(
        sorted(pairs), data_config.val_classes, data_config.test_classes,
        data_config.split_seed, data_config.fold, data_config.num_folds,
        data_config.official_test_classes)))
    splits = subset_train(splits, data_config)
    return ExampleTable(root=root, pairs=pairs, splits=splits,
                        read_fn=tf.io.read_file)


def folder_source(data_config, image_size, skip_bad=False):
    """TaskSource over an FSS-1000-layout folder (decoded inside tf.data)."""
    source = TableSource(folder_table(data_config, skip_bad), image_size,
                         skip_bad)
    source.log_splits("FSS-1000 data")
    return source
