"""Checks converted ImageNet classifier weights on labelled real photos.

A correct conversion puts an ImageNet label "of the right kind" among the top
5 predictions for most photos of a class ImageNet covers. `KINDS` maps the
realfss-train classes that have ImageNet counterparts to the ImageNet-1k
class indices counted as right (standard ILSVRC-2012 index order; e.g. every
dog breed 151-268 counts for "dog"). Classes ImageNet has no counterpart for
(sky, road, tree, building, sidewalk, belt, stockings, column_pole) are left out.
"""

import dataclasses
import os

import numpy as np
import tensorflow as tf

from efficientlab_tf.data import decode
from efficientlab_tf.data import fss1000

_BIRDS = tuple(range(7, 25)) + tuple(range(80, 101)) + tuple(range(127, 147))

KINDS = {
    "aeroplane": (404, 405, 895, 908),  # airliner, airship, warplane, wing
    "bicycle": (444, 671, 870, 880),  # tandem, mountain bike, tricycle, unicycle
    "bird": _BIRDS,
    "black_swan": _BIRDS,
    "boat": (403, 449, 472, 484, 510, 554, 576, 625, 628, 693, 724, 780, 814,
             833, 871, 914),  # carriers, boathouse, canoe ... yawl
    "bottle": (440, 720, 737, 898, 901, 907),  # beer, pill, pop, water, jug, wine
    "bus": (654, 779, 874),  # minibus, school bus, trolleybus
    "camel": (354, 355),  # Arabian camel, llama
    "cat": tuple(range(281, 286)),  # tabby ... Egyptian cat
    "chair": (423, 559, 765, 857),  # barber, folding, rocking chair, throne
    "dining_table": (526, 532),  # desk, dining table
    "dog": tuple(range(151, 269)),  # every breed
    "fence": (489, 716, 912),  # chainlink, picket, worm fence
    "goat": (348, 349, 350),  # ram, bighorn, ibex (ImageNet has no goat)
    "horse": (339, 603),  # sorrel, horse cart
    "motorbike": (665, 670),  # moped, motor scooter
    "necklace": (679,),
    "necktie": (451, 457, 906),  # bolo tie, bow tie, Windsor tie
    "potted_plant": (738, 883),  # pot (flowerpot), vase
    "sheep": (348, 349),  # ram, bighorn
    "sign_symbol": (919, 920),  # street sign, traffic light
    "socks": (806,),
    "sofa": (831,),  # studio couch
    "sunglasses": (836, 837),
    "train": (466, 547, 565, 705, 820, 829),  # bullet train ... streetcar
    "tv_monitor": (527, 548, 598, 620, 664, 681, 782, 851),  # screens, TV
}


@dataclasses.dataclass
class CheckResult:
    """Top-5 hits per image. `rows`: (class, file, hit, top-5 indices)."""

    rows: list

    @property
    def rate(self):
        return float(np.mean([r[2] for r in self.rows])) if self.rows else float("nan")

    def by_class(self):
        out = {}
        for name, _, hit, _ in self.rows:
            out.setdefault(name, []).append(hit)
        return {k: (int(sum(v)), len(v)) for k, v in sorted(out.items())}


def top5_check(classifier, data_dir, per_class=None, image_size=224,
               batch_size=32, progress=None):
    """Runs `classifier` (RGB [0, 255] -> 1000 logits) on every image of the
    `KINDS` classes found under `data_dir` (FSS-1000 layout).

    Args:
        classifier: keras.Model, e.g. `lite.imagenet_classifier()`.
        data_dir: FSS-1000-layout root (e.g. ../shared/data/realfss-train).
        per_class: use only the first N images of each class (None: all).
        progress: optional callable(done, total).

    Returns:
        CheckResult.
    """
    root = fss1000.resolve_root(data_dir)
    items = []
    for name in sorted(KINDS):
        folder = os.path.join(root, name)
        if not os.path.isdir(folder):
            continue
        pairs = fss1000.scan_class(folder)[0]
        for image_path, _ in pairs[:per_class]:
            items.append((name, image_path))
    if not items:
        raise ValueError(
            f"no images of ImageNet-covered classes under {data_dir!r}; expected "
            f"some of the folders {sorted(KINDS)}."
        )
    rows = []
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        images = tf.stack([
            decode.decode_image(tf.io.read_file(path), image_size)
            for _, path in chunk
        ])
        logits = classifier(images, training=False)
        top5 = tf.math.top_k(logits, 5).indices.numpy()
        for (name, path), top in zip(chunk, top5):
            hit = bool(set(top.tolist()) & set(KINDS[name]))
            rows.append((name, os.path.basename(path), hit, top.tolist()))
        if progress:
            progress(len(rows), len(items))
    return CheckResult(rows)
