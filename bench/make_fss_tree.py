"""Writes an FSS-1000-shaped tree from the synthetic family (issue 27, item 1).

    python bench/make_fss_tree.py --out=data/fss_tree --classes=1000 --pairs=10 \
        --image_size=224

`<out>/<class>/<n>.jpg` (JPEG, quality 90) + `<n>.png` (0/255 grey mask),
n = 1..pairs, as FSS-1000 lays it out. Class i is synthetic class i (shape,
colours, texture and size drawn from the family's seed), images rendered
with distractors of the other classes, so the tree is generated, not
downloaded. The 240 official FSS-1000 test class names (package data) name
the first 240 classes, so the official test split forms; the rest are
`synthetic_<i>`. `--broken` training classes get one broken pair each, in a
fixed rotation: a truncated JPEG, a zero-byte mask, a mask of another size,
a 16-bit PNG mask and a TIFF named `.jpg` (what the scan must catch).

Rerunning continues: classes whose folder already holds all its files are
skipped. A progress line is printed every 50 classes.
"""

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from PIL import Image  # noqa: E402

from efficientlab_tf.data.fss1000 import read_class_list  # noqa: E402
from efficientlab_tf.data.synthetic import SyntheticFamily  # noqa: E402

flags.DEFINE_string("out", None, "Folder to write the tree to.")
flags.DEFINE_integer("classes", 1000, "Number of classes (>= 240).")
flags.DEFINE_integer("pairs", 10, "Image/mask pairs per class.")
flags.DEFINE_integer("image_size", 224, "Side of the square images.")
flags.DEFINE_integer("broken", 5, "Training classes with one broken pair each.")
flags.DEFINE_integer("seed", 0, "Seed of the class table and the images.")
FLAGS = flags.FLAGS

BREAKAGES = ("truncated_jpeg", "empty_mask", "mask_size", "mask_16bit", "tiff_as_jpg")


def class_names(count):
    official = read_class_list("fss1000_test_classes.txt")
    if count < len(official):
        raise ValueError(f"--classes must be >= {len(official)} (the official "
                         f"test classes); got {count}.")
    return official + [f"synthetic_{i:04d}" for i in range(len(official), count)]


def break_pair(folder, n, kind, size):
    """Replaces pair n of `folder` by one broken the way `kind` says."""
    image, mask = os.path.join(folder, f"{n}.jpg"), os.path.join(folder, f"{n}.png")
    if kind == "truncated_jpeg":
        data = open(image, "rb").read()
        open(image, "wb").write(data[:len(data) // 3])
    elif kind == "empty_mask":
        open(mask, "wb").close()
    elif kind == "mask_size":
        Image.fromarray(np.full((size // 2, size // 2), 255, np.uint8)).save(mask)
    elif kind == "mask_16bit":
        values = np.asarray(Image.open(mask)).astype(np.uint16)
        Image.fromarray(values).save(mask)  # 0/255 stored as uint16.
    elif kind == "tiff_as_jpg":
        Image.open(image).save(image, format="TIFF")


def main(argv):
    del argv
    if not FLAGS.out:
        raise app.UsageError("--out is required.")
    names = class_names(FLAGS.classes)
    size, pairs = FLAGS.image_size, FLAGS.pairs
    family = SyntheticFamily(FLAGS.classes, size, split_seed=FLAGS.seed)
    all_ids = tf.range(FLAGS.classes, dtype=tf.int32)

    @tf.function(input_signature=[tf.TensorSpec([], tf.int32)])
    def render_class(class_id):
        others, seeds = family.image_plan(
            class_id, all_ids, pairs,
            tf.stack([tf.constant(FLAGS.seed, tf.int32), class_id]))
        images, masks = tf.map_fn(lambda s: family.render(class_id, others, s),
                                  seeds, fn_output_signature=(tf.float32, tf.float32))
        jpegs = tf.map_fn(lambda x: tf.io.encode_jpeg(tf.cast(tf.round(x), tf.uint8),
                                                      quality=90),
                          images, fn_output_signature=tf.string)
        pngs = tf.map_fn(lambda m: tf.io.encode_png(tf.cast(m * 255.0, tf.uint8)),
                         masks, fn_output_signature=tf.string)
        return jpegs, pngs

    broken = {len(names) - 1 - k: BREAKAGES[k % len(BREAKAGES)]
              for k in range(FLAGS.broken)}  # The last classes are training ones.
    start, written = time.perf_counter(), 0
    for i, name in enumerate(names):
        folder = os.path.join(FLAGS.out, name)
        if os.path.isdir(folder) and len(os.listdir(folder)) == 2 * pairs:
            continue
        os.makedirs(folder, exist_ok=True)
        jpegs, pngs = render_class(tf.constant(i, tf.int32))
        for n, (jpeg, png) in enumerate(zip(jpegs.numpy(), pngs.numpy()), 1):
            for path, data in ((os.path.join(folder, f"{n}.jpg"), jpeg),
                               (os.path.join(folder, f"{n}.png"), png)):
                with open(path + ".tmp", "wb") as f:
                    f.write(data)
                os.replace(path + ".tmp", path)
        if i in broken:
            break_pair(folder, 1, broken[i], size)
        written += 1
        if written % 50 == 0 or i == len(names) - 1:
            seconds = time.perf_counter() - start
            print(f"{i + 1}/{len(names)} classes ({written} written, "
                  f"{seconds:.0f} s, {seconds / written:.2f} s/class)", flush=True)
    print(f"tree: {FLAGS.out} ({len(names)} classes x {pairs} pairs at {size} px; "
          f"broken pairs: {', '.join(f'{names[i]}/1 {k}' for i, k in broken.items())})")


if __name__ == "__main__":
    app.run(main)
