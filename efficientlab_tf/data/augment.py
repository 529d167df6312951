"""Joint image/mask augmentation in TensorFlow ops (paper section 5).

Random translation and horizontal flip move image and mask together
(translation by whole pixels: bilinear-exact for the image, nearest for the
mask, zero padding = background); additive Gaussian noise, brightness and
random erasing change the image only. Every draw is a stateless function of
a seed, so an augmented task is a pure function of (run seed, task index)
and resuming a run replays exactly the same augmentations. (Keras 3's
RandomTranslation/RandomFlip/... keep a SeedGenerator state that advances
with every call, which would make augmentations depend on how often the
pipeline was called before a restart; hence plain ops here.)
"""

import tensorflow as tf

from efficientlab_tf.data.tasks import TaskBatch


def translate(image, mask, dx, dy):
    """Shifts by whole pixels (dx right, dy down); vacated pixels become 0."""
    size = tf.shape(image)[:2]

    def shift(x):
        x = tf.roll(x, shift=[dy, dx], axis=[0, 1])
        rows = tf.range(size[0])[:, None]
        cols = tf.range(size[1])[None, :]
        valid = ((rows - dy >= 0) & (rows - dy < size[0])
                 & (cols - dx >= 0) & (cols - dx < size[1]))
        return tf.where(valid[..., None], x, tf.zeros_like(x))

    return shift(image), shift(mask)


def augment_example(image, mask, seed, config):
    """Augments one float32 [S,S,3] image (0-255) and its [S,S,1] mask."""
    seeds = tf.random.experimental.stateless_split(seed, 6)
    side = image.shape[0]
    if config.translate:
        limit = int(round(config.translate * side))
        d = tf.random.stateless_uniform([2], seeds[0], -limit, limit + 1, tf.int32)
        image, mask = translate(image, mask, d[0], d[1])
    if config.flip:
        flip = tf.random.stateless_uniform([], seeds[1]) < 0.5
        image = tf.where(flip, tf.reverse(image, [1]), image)
        mask = tf.where(flip, tf.reverse(mask, [1]), mask)
    if config.brightness:
        image = image + tf.random.stateless_uniform(
            [], seeds[2], -config.brightness, config.brightness)
    if config.noise_stddev:
        image = image + tf.random.stateless_normal(
            tf.shape(image), seeds[3], stddev=config.noise_stddev)
    if config.erase_prob:
        r = tf.random.stateless_uniform([5], seeds[4])
        area = (0.02 + 0.18 * r[0]) * side * side
        aspect = tf.exp((r[1] - 0.5) * 2.0 * tf.math.log(3.0))
        h = tf.clip_by_value(tf.sqrt(area * aspect), 1.0, side)
        w = tf.clip_by_value(tf.sqrt(area / aspect), 1.0, side)
        top = r[2] * (side - h)
        left = r[3] * (side - w)
        rows = tf.range(side, dtype=tf.float32)[:, None]
        cols = tf.range(side, dtype=tf.float32)[None, :]
        box = ((rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)
               & (r[4] < config.erase_prob))
        fill = tf.random.stateless_uniform(tf.shape(image), seeds[5], 0.0, 255.0)
        image = tf.where(box[..., None], fill, image)
    return tf.clip_by_value(image, 0.0, 255.0), mask


def augment_task(task, seed, config):
    """Augments the support set of an (unbatched) task; queries unchanged."""
    if not config.enabled:
        return task
    n = task.support_images.shape[0]
    seeds = tf.random.experimental.stateless_split(seed, n)
    images, masks = [], []
    for i in range(n):
        x, y = augment_example(task.support_images[i], task.support_masks[i],
                               seeds[i], config)
        images.append(x)
        masks.append(y)
    return TaskBatch(tf.stack(images), tf.stack(masks), task.query_images,
                     task.query_masks)
