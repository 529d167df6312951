"""PASCAL-5i (`--dataset=pascal5i --fold=i`) and FP-k (`--dataset=fpk`).

PASCAL VOC 2012 layout under `data_dir` (the `VOC2012` folder, or a
`VOCdevkit` holding it): `JPEGImages/<id>.jpg`, label maps
`SegmentationClass/<id>.png` (palette PNGs: class index per pixel, 255 on
object boundaries) and, with `--pascal_aug`, the SBD-augmented
`SegmentationClassAug/<id>.png` (8-bit grey PNGs, same indices). Image
lists: `ImageSets/Segmentation/train.txt` and `val.txt`; with `--pascal_aug`
the training list is `ImageSets/SegmentationAug/train_aug.txt` (or
`ImageSets/Segmentation/train_aug.txt`), minus any image of the val list.

PASCAL-5i fold i: the test classes are VOC classes 5i+1 .. 5i+5 (1-based
indices of `VOC_CLASSES`), with their examples from the val list; the other
15 classes are meta-train with examples from the training list. An example
of class c is an image whose label map contains c; its binary mask is 1 on
c, 255 where the label map says 255 (ignored by the loss and by IoU), 0
elsewhere (other classes, including test classes in training images, are
background, as in the usual PASCAL-5i code). PASCAL-5i has no meta-val
classes: the "val" split (training-time monitoring only) is the test classes
on training-list images.

FP-k joins the five FSS-1000 classes of `fpk_fss1000_classes.txt` (under
`data_dir`, FSS-1000 layout) with their PASCAL analogs (under `pascal_dir`,
train and val lists): every task draws k training and `query` test examples
from the joined pool.

Every label map is decoded once when scanning (class presence, values,
size against its image); missing files, undecodable or RGB masks, unknown
labels and size mismatches are listed all at once (or skipped with
`--skip_bad_examples`).
"""

import os

import numpy as np
import tensorflow as tf
from absl import logging
from PIL import Image

from efficientlab_tf.data import decode
from efficientlab_tf.data import fss1000
from efficientlab_tf.data import tfrecords
from efficientlab_tf.data.table import ExampleTable
from efficientlab_tf.data.table import TableSource
from efficientlab_tf.resources import read_class_list

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person",
    "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
NUM_FOLDS = 4
FPK_ANALOGS = {
    "airliner": "aeroplane",
    "bus": "bus",
    "motorbike": "motorbike",
    "potted_plant": "pottedplant",
    "television": "tvmonitor",
}
_VALID_LABELS = set(range(len(VOC_CLASSES) + 1)) | {255}


def voc_index(name):
    """1-based VOC label of a class name."""
    return VOC_CLASSES.index(name) + 1


def fold_classes(fold):
    """Names of the test classes of PASCAL-5i fold `fold` (0-3)."""
    if not 0 <= fold < NUM_FOLDS:
        raise ValueError(f"PASCAL-5i `fold` must be 0-3; got {fold}.")
    return list(VOC_CLASSES[5 * fold:5 * fold + 5])


def resolve_voc_root(data_dir):
    """The folder holding JPEGImages (accepts VOCdevkit/ or VOC2012/)."""
    if not data_dir or not os.path.isdir(data_dir):
        raise FileNotFoundError(f"`data_dir` {data_dir!r} is not a directory.")
    for candidate in (data_dir, os.path.join(data_dir, "VOC2012"),
                      os.path.join(data_dir, "VOCdevkit", "VOC2012")):
        if os.path.isdir(os.path.join(candidate, "JPEGImages")):
            return candidate
    raise FileNotFoundError(
        f"{data_dir!r} is not a PASCAL VOC 2012 folder: no JPEGImages/ in it "
        "(nor in VOC2012/ or VOCdevkit/VOC2012/ below it).")


def _read_ids(path):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"PASCAL image list {path!r} does not exist.")
    with open(path) as f:
        return [line.split()[0] for line in f if line.strip()]


def layout(root, aug):
    """(mask folder, training list path, val list path) of a VOC root."""
    sets = os.path.join(root, "ImageSets")
    val_list = os.path.join(sets, "Segmentation", "val.txt")
    if not aug:
        return (os.path.join(root, "SegmentationClass"),
                os.path.join(sets, "Segmentation", "train.txt"), val_list)
    candidates = [os.path.join(sets, "SegmentationAug", "train_aug.txt"),
                  os.path.join(sets, "Segmentation", "train_aug.txt")]
    train_list = next((c for c in candidates if os.path.isfile(c)), candidates[0])
    return os.path.join(root, "SegmentationClassAug"), train_list, val_list


def scan_ids(root, ids, mask_dir, skip_bad=False, where=""):
    """{VOC label: [(image path, mask path)]} for the images `ids`.

    Raises:
        fss1000.BadExamplesError: listing every bad file (unless skip_bad).
    """
    by_label, problems = {}, []
    for n, image_id in enumerate(ids):
        image = os.path.join(root, "JPEGImages", f"{image_id}.jpg")
        mask = os.path.join(mask_dir, f"{image_id}.png")
        missing = [p for p in (image, mask) if not os.path.isfile(p)]
        if missing:
            problems += [f"{p}: missing (listed image {image_id})" for p in missing]
            continue
        try:
            with open(mask, "rb") as f:
                indices = decode.png_indices(f.read())
        except Exception as e:
            problems.append(f"{mask}: cannot read label map ({e})")
            continue
        try:
            with Image.open(image) as im:
                width, height = im.size
        except Exception as e:
            problems.append(f"{image}: cannot decode image ({type(e).__name__})")
            continue
        if indices.shape != (height, width):
            problems.append(f"{mask}: size {indices.shape[::-1]} differs from "
                            f"image size {(width, height)}")
            continue
        values = set(np.unique(indices).tolist())
        unknown = sorted(values - _VALID_LABELS)
        if unknown:
            problems.append(f"{mask}: labels {unknown[:8]} are not VOC classes "
                            "(0-20) or 255")
            continue
        for label in sorted(values - {0, 255}):
            by_label.setdefault(label, []).append((image, mask))
        if (n + 1) % 2000 == 0:
            logging.info("Scanned %d/%d label maps of %s.", n + 1, len(ids), where)
    fss1000.report(problems, where or root, skip_bad)
    return by_label


def scan_voc(root, aug, skip_bad=False):
    """({label: pairs} of the training list, {label: pairs} of the val list);
    training images that are also in the val list are left out."""
    mask_dir, train_list, val_list = layout(root, aug)
    val_ids = _read_ids(val_list)
    train_ids = _read_ids(train_list)
    overlap = set(train_ids) & set(val_ids)
    if overlap:
        logging.warning("%d images of %s are also in %s; left out of "
                        "meta-training.", len(overlap), train_list, val_list)
        train_ids = [i for i in train_ids if i not in overlap]
    return (scan_ids(root, train_ids, mask_dir, skip_bad, train_list),
            scan_ids(root, val_ids, mask_dir, skip_bad, val_list))


def write_shards(data_config, out_dir, num_shards=8):
    """`--mode=convert` for pascal5i (whole VOC, split tags train/val) and fpk
    (the joined FP-k pools); returns the shard index."""
    skip = data_config.skip_bad_examples
    entries = []
    if data_config.dataset == "pascal5i":
        root = resolve_voc_root(data_config.data_dir)
        for split, by_label in zip(("train", "val"),
                                   scan_voc(root, data_config.pascal_aug, skip)):
            for label in sorted(by_label):
                entries += [(VOC_CLASSES[label - 1], split, i, m, label)
                            for i, m in by_label[label]]
    elif data_config.dataset == "fpk":
        # FSS-1000 pairs were checked by read_class_folder, label maps by
        # scan_ids.
        pools = _fpk_pools(data_config, skip)[0]
        entries = [(name, "fpk", i, m, label)
                   for name, pairs in pools.items() for i, m, label in pairs]
    else:
        raise ValueError(f"pascal.write_shards converts pascal5i or fpk; got "
                         f"{data_config.dataset!r}.")
    return tfrecords.write_entries(entries, out_dir, num_shards,
                                   data_config.dataset)


def _fpk_pools(data_config, skip_bad):
    """({FP-k name: [(image, mask, label)]}, {name: [FSS count, PASCAL count]})."""
    names = read_class_list("fpk_fss1000_classes.txt")
    root = fss1000.resolve_root(data_config.data_dir)
    missing = [n for n in names if not os.path.isdir(os.path.join(root, n))]
    if missing:
        raise FileNotFoundError(
            f"FP-k needs the FSS-1000 classes {missing} under {root!r}.")
    pools, counts = {}, {}
    for name in names:
        fss = fss1000.read_class_folder(os.path.join(root, name), skip_bad)
        pools[name] = [(i, m, -1) for i, m in fss]
        counts[name] = [len(fss), 0]
    if data_config.pascal_dir:
        voc = resolve_voc_root(data_config.pascal_dir)
        mask_dir, train_list, val_list = layout(voc, data_config.pascal_aug)
        ids = list(dict.fromkeys(_read_ids(train_list) + _read_ids(val_list)))
        by_label = scan_ids(voc, ids, mask_dir, skip_bad, voc)
        for name in names:
            label = voc_index(FPK_ANALOGS[name])
            extra = [(i, m, label) for i, m in by_label.get(label, [])]
            pools[name] += extra
            counts[name][1] = len(extra)
    else:
        logging.warning("FP-k without --pascal_dir: only the FSS-1000 "
                        "examples (10 per class) are available.")
    return pools, counts


def pascal_source(data_config, image_size, skip_bad=False):
    """PASCAL-5i TaskSource of fold `data_config.fold` (folders or shards);
    the same sampling code as FSS-1000."""
    if data_config.fold < 0:
        raise ValueError("--dataset=pascal5i needs --fold=0..3.")
    test = fold_classes(data_config.fold)
    if tfrecords.is_shard_dir(data_config.data_dir):
        root, read_fn = data_config.data_dir, tf.identity  # Encoded bytes.
        by_split = {"train": {}, "val": {}}
        for _, split, image, mask, label in tfrecords.read_entries(root, "pascal5i"):
            by_split[split].setdefault(label, []).append((image, mask))
        train_by, val_by = by_split["train"], by_split["val"]
    else:
        root, read_fn = resolve_voc_root(data_config.data_dir), tf.io.read_file
        train_by, val_by = scan_voc(root, data_config.pascal_aug, skip_bad)
    pairs = {}
    for name in VOC_CLASSES:
        label = voc_index(name)
        source = val_by if name in test else train_by
        pairs[name] = [(i, m, label) for i, m in source.get(label, [])]
        if name in test:
            pairs[f"{name}@train"] = [(i, m, label) for i, m in train_by.get(label, [])]
    splits = {
        "train": [n for n in VOC_CLASSES if n not in test],
        "val": [f"{n}@train" for n in test],
        "test": test,
    }
    logging.info("PASCAL-5i fold %d (%s): test classes %s; examples: %s.",
                 data_config.fold, root, ", ".join(test),
                 ", ".join(f"{n} {len(pairs[n])}" for n in VOC_CLASSES))
    return TableSource(ExampleTable(root, pairs, splits, read_fn), image_size,
                       skip_bad)


def fpk_source(data_config, image_size, skip_bad=False):
    """FP-k TaskSource: FSS-1000 classes joined with their PASCAL analogs.

    Only the "test" split exists (the five FP-k tasks, in the order of
    `fpk_fss1000_classes.txt`).
    """
    names = read_class_list("fpk_fss1000_classes.txt")
    if tfrecords.is_shard_dir(data_config.data_dir):
        root, read_fn = data_config.data_dir, tf.identity
        pairs = {n: [] for n in names}
        counts = {n: [0, 0] for n in names}
        for name, _, image, mask, label in tfrecords.read_entries(root, "fpk"):
            pairs[name].append((image, mask, label))
            counts[name][0 if label < 0 else 1] += 1
    else:
        root, read_fn = fss1000.resolve_root(data_config.data_dir), tf.io.read_file
        pairs, counts = _fpk_pools(data_config, skip_bad)
    for name, (fss, voc) in counts.items():
        logging.info("FP-k %s: %d FSS-1000 + %d PASCAL (%s) = %d examples.",
                     name, fss, voc, FPK_ANALOGS[name], fss + voc)
    splits = {"train": [], "val": [], "test": list(names)}
    return TableSource(ExampleTable(root, pairs, splits, read_fn), image_size,
                       skip_bad)
