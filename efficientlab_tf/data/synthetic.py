"""Procedural few-shot segmentation task family (`--dataset=synthetic`).

Each class is a kind of object: a shape (ellipse, rectangle, diamond,
triangle, ring, cross, star, crescent), a pair of colours, a texture (solid,
stripes, checks, dots) with its frequency, and a size range, drawn once per
class from `split_seed`. An image shows one or more target objects of the
task's class drawn over distractor objects of *other* classes on a noisy
gradient background; the mask marks the target class only. Objects of every
class look like objects, so the support set is what tells which one is the
target. Everything is TensorFlow ops seeded statelessly: image `i` of task
`t` is the same on every run, generated on the fly inside tf.data.

Classes are split into disjoint meta-train / meta-val / meta-test sets by a
seeded permutation (`class_splits`).
"""

import math

import numpy as np
import tensorflow as tf

from efficientlab_tf.data.tasks import TaskBatch
from efficientlab_tf.data.tasks import draw_class
from efficientlab_tf.data.tasks import task_seed

NUM_SHAPES = 8
NUM_TEXTURES = 4
NUM_DISTRACTORS = 2


def class_splits(num_classes, val_classes, test_classes, split_seed):
    """Disjoint (train, val, test) lists of class ids from a seeded permutation."""
    order = np.random.RandomState(split_seed).permutation(num_classes)
    test = sorted(order[:test_classes].tolist())
    val = sorted(order[test_classes:test_classes + val_classes].tolist())
    train = sorted(order[test_classes + val_classes:].tolist())
    return train, val, test


class SyntheticFamily:
    """The synthetic class table and its stateless renderer.

    Args:
        num_classes: Number of classes.
        image_size: Side S of the square images.
        split_seed: Seed of the class table (appearance of each class).
    """

    def __init__(self, num_classes=192, image_size=64, split_seed=0):
        self.num_classes = int(num_classes)
        self.image_size = int(image_size)
        rng = np.random.RandomState(10_000 + split_seed)
        n = self.num_classes
        # Balanced shapes and textures so no attribute alone names a class.
        self.shape = tf.constant(np.arange(n) % NUM_SHAPES, tf.int32)
        self.texture = tf.constant(rng.permutation(np.arange(n) % NUM_TEXTURES),
                                   tf.int32)
        self.color1 = tf.constant(rng.uniform(20, 235, (n, 3)), tf.float32)
        self.color2 = tf.constant(rng.uniform(20, 235, (n, 3)), tf.float32)
        self.frequency = tf.constant(rng.uniform(2.0, 4.0, n), tf.float32)
        lo = rng.uniform(0.12, 0.2, n)
        self.size_lo = tf.constant(lo, tf.float32)
        self.size_hi = tf.constant(lo + rng.uniform(0.04, 0.1, n), tf.float32)
        s = tf.range(self.image_size, dtype=tf.float32) + 0.5
        self._y, self._x = tf.meshgrid(s, s, indexing="ij")

    # ------------------------------------------------------------- objects
    def _object(self, class_id, seed):
        """(inside [S,S] bool, colour [S,S,3]) of one object of `class_id`."""
        size = float(self.image_size)
        r = tf.random.stateless_uniform([6], seed)
        lo = tf.gather(self.size_lo, class_id)
        hi = tf.gather(self.size_hi, class_id)
        radius = (lo + (hi - lo) * r[0]) * size
        cx = (0.2 + 0.6 * r[1]) * size
        cy = (0.2 + 0.6 * r[2]) * size
        angle = 2.0 * math.pi * r[3]
        aspect = 0.75 + 0.5 * r[4]
        dx, dy = self._x - cx, self._y - cy
        u = (dx * tf.cos(angle) + dy * tf.sin(angle)) / radius
        v = (-dx * tf.sin(angle) + dy * tf.cos(angle)) / (radius * aspect)
        rho = tf.sqrt(u * u + v * v)
        phi = tf.atan2(v, u)
        au, av = tf.abs(u), tf.abs(v)
        shapes = tf.stack([
            rho <= 1.0,                                           # ellipse
            tf.maximum(au, av) <= 0.85,                           # rectangle
            au + av <= 1.1,                                       # diamond
            tf.logical_and(v <= 0.8, au <= (v + 0.9) * 0.6),      # triangle
            tf.logical_and(rho >= 0.55, rho <= 1.0),              # ring
            tf.logical_or(tf.logical_and(au <= 0.35, av <= 1.0),
                          tf.logical_and(au <= 1.0, av <= 0.35)),  # cross
            rho <= 0.65 + 0.35 * tf.cos(5.0 * phi),               # star
            tf.logical_and(rho <= 1.0,
                           tf.square(u - 0.55) + v * v > 0.5),    # crescent
        ])
        inside = tf.gather(shapes, tf.gather(self.shape, class_id))
        f = tf.gather(self.frequency, class_id) * math.pi
        textures = tf.stack([
            tf.ones_like(u),
            tf.cast(tf.sin(f * u) > 0, tf.float32),
            tf.cast(tf.sin(f * u) * tf.sin(f * v) > 0, tf.float32),
            tf.cast(tf.square(tf.sin(f * u)) + tf.square(tf.sin(f * v)) < 0.6,
                    tf.float32),
        ])
        t = tf.gather(textures, tf.gather(self.texture, class_id))[..., None]
        c1 = tf.gather(self.color1, class_id)
        c2 = tf.gather(self.color2, class_id)
        shade = 0.85 + 0.3 * r[5]
        colour = tf.clip_by_value((t * c1 + (1.0 - t) * c2) * shade, 0.0, 255.0)
        return inside, colour

    def render(self, class_id, other_classes, seed, with_objects=False):
        """One image and mask of `class_id` with distractors.

        Args:
            class_id: int32 scalar, the target class.
            other_classes: int32 [D] classes the distractors come from.
            seed: int32 [2].

            with_objects: Also return the mask of every object (target and
                distractors): what a class-agnostic segmenter would mark.

        Returns:
            image float32 [S, S, 3] in [0, 255], mask float32 [S, S, 1]
            (and the all-objects mask [S, S, 1] if `with_objects`).
        """
        size = self.image_size
        seeds = tf.random.experimental.stateless_split(seed, 8)
        r = tf.random.stateless_uniform([8], seeds[0])
        # Background: a linear gradient between two random colours + noise.
        c0 = tf.random.stateless_uniform([3], seeds[1], 0.0, 255.0)
        c1 = tf.random.stateless_uniform([3], seeds[2], 0.0, 255.0)
        a = 2.0 * math.pi * r[0]
        ramp = (tf.cos(a) * self._x + tf.sin(a) * self._y) / size
        ramp = (ramp - tf.reduce_min(ramp)) / (
            tf.reduce_max(ramp) - tf.reduce_min(ramp) + 1e-6)
        image = c0 + (c1 - c0) * ramp[..., None]
        picks = tf.random.stateless_uniform(
            [NUM_DISTRACTORS], seeds[3], 0, tf.shape(other_classes)[0],
            dtype=tf.int32)
        object_seeds = tf.random.experimental.stateless_split(seeds[4], 4)
        objects = tf.zeros([size, size], tf.bool)
        for d in range(NUM_DISTRACTORS):
            inside, colour = self._object(
                tf.gather(other_classes, picks[d]), object_seeds[d])
            image = tf.where(inside[..., None], colour, image)
            objects = tf.logical_or(objects, inside)
        # One target object, a second one with probability 1/3.
        mask = tf.zeros([size, size], tf.bool)
        for k in range(2):
            inside, colour = self._object(class_id, object_seeds[2 + k])
            if k == 1:
                inside = tf.logical_and(inside, r[1] < 1.0 / 3.0)
            image = tf.where(inside[..., None], colour, image)
            mask = tf.logical_or(mask, inside)
        noise = tf.random.stateless_normal([size, size, 3], seeds[5], stddev=8.0)
        image = tf.clip_by_value(image + noise, 0.0, 255.0)
        image = tf.ensure_shape(image, [size, size, 3])
        mask = tf.ensure_shape(tf.cast(mask, tf.float32)[..., None], [size, size, 1])
        if with_objects:
            objects = tf.cast(tf.logical_or(objects, mask[..., 0] > 0), tf.float32)
            return image, mask, objects[..., None]
        return image, mask

    @staticmethod
    def draw_class(class_ids, seed):
        """(target class, seed of its images) of the task seeded by `seed`:
        the one seed chain every task of the family follows."""
        class_ids = tf.constant(class_ids, tf.int32) if not isinstance(
            class_ids, tf.Tensor) else class_ids
        pick, image_seed = draw_class(seed[0], seed[1], tf.shape(class_ids)[0])
        return tf.gather(class_ids, pick), image_seed

    @staticmethod
    def image_plan(target, class_ids, total, seed):
        """(distractor classes, one seed per image) of a task of `target`."""
        class_ids = tf.constant(class_ids, tf.int32) if not isinstance(
            class_ids, tf.Tensor) else class_ids
        target = tf.cast(target, tf.int32)
        others = tf.boolean_mask(class_ids, tf.not_equal(class_ids, target))
        return others, tf.random.experimental.stateless_split(seed, total)

    def task(self, class_ids, shots, query_shots, seed):
        """A task of a class drawn from `class_ids`: TaskBatch of fixed shape."""
        target, image_seed = self.draw_class(class_ids, seed)
        return self.task_of_class(target, class_ids, shots, query_shots,
                                  image_seed)

    def task_of_class(self, target, class_ids, shots, query_shots, seed):
        """A task of class `target`; distractors from the rest of `class_ids`."""
        target = tf.cast(target, tf.int32)
        others, image_seeds = self.image_plan(target, class_ids,
                                              shots + query_shots, seed)
        images, masks = tf.map_fn(
            lambda s: self.render(target, others, s), image_seeds,
            fn_output_signature=(tf.float32, tf.float32),
        )
        return TaskBatch(images[:shots], masks[:shots],
                         images[shots:], masks[shots:])


def task_dataset(family, class_ids, shots, query_shots, seed, start=0,
                 count=None):
    """tf.data stream of tasks; task i depends only on (seed, i).

    Args:
        family: SyntheticFamily.
        class_ids: Classes tasks are drawn from.
        shots, query_shots: Support and query sizes.
        seed: Stream seed.
        start: Index of the first task (resuming at meta-iteration s * M
            regenerates exactly the tasks an uninterrupted run would see).
        count: Number of tasks, or None for an endless stream.
    """
    class_ids = tf.constant(class_ids, tf.int32)
    stop = None if count is None else start + count
    ds = tf.data.Dataset.range(start, stop) if stop is not None else \
        tf.data.Dataset.range(start, 2**62)
    return ds.map(
        lambda i: family.task(class_ids, shots, query_shots,
                              task_seed(seed, i)),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True,
    )


def class_task_dataset(family, class_ids, shots, query_shots, seed, draws):
    """(class position, task) for every class of `class_ids`, `draws` each."""
    pool = tf.constant(class_ids, tf.int32)
    n = len(class_ids)

    def make(index):
        c = tf.cast(index // draws, tf.int32)
        task_seeds = tf.random.experimental.stateless_split(
            task_seed(seed, index), 2)
        return c, family.task_of_class(tf.gather(pool, c), pool, shots,
                                       query_shots, task_seeds[1])

    return tf.data.Dataset.range(n * draws).map(
        make, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def class_agnostic_scores(family, class_ids, shots, query_shots, seed, count):
    """Per-task query IoU of a class-agnostic predictor that marks every object.

    Regenerates tasks 0..count-1 of `task_dataset(family, class_ids, shots,
    query_shots, seed)` (same seeds, same images) and scores the all-objects
    mask against the target mask: the score of segmenting objects without
    using the support set to tell the target class from the others.
    """
    from efficientlab_tf.model.metrics import binary_iou

    scores = []
    for index in range(count):
        target, image_seed = family.draw_class(class_ids, task_seed(seed, index))
        others, image_seeds = family.image_plan(target, class_ids,
                                                shots + query_shots, image_seed)
        ious = []
        for s in image_seeds[shots:]:
            _, mask, objects = family.render(target, others, s, with_objects=True)
            ious.append(binary_iou(mask[None], objects[None, ..., 0])[0])
        scores.append(float(tf.reduce_mean(ious)))
    return scores
