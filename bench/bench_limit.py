"""The meta-step against what it should cost, in one run.

    python bench/bench_limit.py --image_size=64 --algo=fomaml --repeats=5

For the same model and meta-batch (demo flags unless overridden), median
seconds of

  (a) the limit: the same number of SGD steps with the same minibatch sizes,
      plain Keras model + keras.optimizers.SGD in one tf.function, nothing
      else (no snapshot/restore, no directions, no logging predictions);
  (b) the project's meta-step (`MetaLearner.meta_step`) as training runs it
      (adaptation on carried tensors), with and without the logging
      predictions (log=False is what 9 of 10 steps run), and with
      `--adapt_in_place` (snapshot, steps on the variables, restore);
  (c) the keras.io Reptile pattern: get_weights / train_on_batch /
      set_weights per task, then set_weights with the interpolated weights.

Prints b/a and c/b. Each timed call is followed by a host read of its
result, so asynchronous dispatch cannot flatter any variant.
"""

import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from efficientlab_tf import cli  # noqa: E402
from efficientlab_tf.data.source import meta_batches  # noqa: E402
from efficientlab_tf.experiment import Experiment  # noqa: E402
from efficientlab_tf.meta.learner import MetaLearner  # noqa: E402
from efficientlab_tf.model.losses import segmentation_loss  # noqa: E402

flags.DEFINE_integer("repeats", 5, "Timed repeats (median reported).")


def median_seconds(fn, repeats):
    fn()  # Trace / warm up.
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def step_batches(config):
    """Minibatch size of every inner step of one meta-iteration, per task."""
    m = config.meta
    if m.algo == "fomaml":
        head = m.train_shots - m.foml_tail
        return ([min(m.inner_batch, head)] * (m.inner_iters - 1)
                + [min(m.inner_batch, m.foml_tail)])
    return [min(m.inner_batch, m.train_shots)] * m.inner_iters


def main(argv):
    del argv
    f = flags.FLAGS
    config = cli.config_from_flags(f)
    exp = Experiment(config)
    model, learner = exp.model, exp.learner
    tasks = next(iter(meta_batches(exp.source, config, 0)))
    meta_lr, seed = tf.constant(0.5), tf.constant([0, 0])
    m = config.meta
    sizes = step_batches(config)
    wd = m.weight_decay

    # (a) The limit: M x k plain SGD steps of the same sizes in one function.
    sgd = keras.optimizers.SGD(m.inner_lr)
    sgd.build(model.trainable_variables)

    @tf.function(reduce_retracing=True)
    def limit(images, masks):
        loss = 0.0
        for t in range(images.shape[0]):  # Unrolled: M x k static steps.
            for b in sizes:
                x, y = images[t, :b], masks[t, :b]
                with tf.GradientTape() as tape:
                    logits = model(x, training=True)
                    loss = segmentation_loss(y, logits, model.trainable_weights, wd)
                grads = tape.gradient(loss, model.trainable_weights)
                sgd.apply(grads, model.trainable_weights)
        return loss

    images, masks = tasks.support_images, tasks.support_masks
    a = median_seconds(lambda: float(limit(images, masks)), f.repeats)

    # (b) The project's meta-step, with and without logging predictions.
    b_log = median_seconds(lambda: float(learner.meta_step(
        tasks, meta_lr, seed, tf.constant(True))["meta_train_loss"]), f.repeats)
    b = median_seconds(lambda: float(learner.meta_step(
        tasks, meta_lr, seed, tf.constant(False))["meta_train_loss"]), f.repeats)
    in_place = MetaLearner(model, m, learner.task, bn_mode=learner.bn_mode,
                           in_place=not learner.in_place)
    b_other = median_seconds(lambda: float(in_place.meta_step(
        tasks, meta_lr, seed, tf.constant(False))["meta_train_loss"]), f.repeats)
    other = "in place" if learner.in_place is False else "on tensors"

    # (c) keras.io's Reptile: weights through the host around train_on_batch.
    model.compile(optimizer=keras.optimizers.SGD(m.inner_lr),
                  loss=lambda y, logits: segmentation_loss(y, logits, [], 0.0))

    def keras_io():
        old = model.get_weights()
        new = [np.zeros_like(w) for w in old]
        for t in range(images.shape[0]):
            model.set_weights(old)
            for b_size in sizes:
                model.train_on_batch(images[t, :b_size], masks[t, :b_size])
            new = [n + w for n, w in zip(new, model.get_weights())]
        scale = 0.5 / images.shape[0]
        model.set_weights([o + scale * (n - images.shape[0] * o)
                           for o, n in zip(old, new)])

    c = median_seconds(keras_io, f.repeats)
    print(f"algo={m.algo} encoder={config.model.encoder} "
          f"image_size={config.model.image_size} meta_batch={m.meta_batch} "
          f"steps/task={len(sizes)} batches={sizes} repeats={f.repeats} "
          f"threads={os.environ.get('TF_NUM_INTRAOP_THREADS', 'all')}")
    print(f"(a) limit {a:.3f} s | (b) meta-step {b:.3f} s (with logging "
          f"predictions {b_log:.3f} s; {other}: {b_other:.3f} s) | "
          f"(c) keras.io pattern {c:.3f} s")
    print(f"b/a = {b / a:.3f} (logging step: {b_log / a:.3f}; {other}: "
          f"{b_other / a:.3f}) | c/b = {c / b:.3f}")


if __name__ == "__main__":
    cli.define_flags()
    app.run(main)
