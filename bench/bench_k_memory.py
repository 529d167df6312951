"""Inner-step time against the support size k, and peak memory of a meta-step.

    python bench/bench_k_memory.py --repeats=5
    python bench/bench_k_memory.py --memory --image_size=128 --meta_batch=5

Without --memory: median seconds of one evaluation adaptation (`--steps`
inner steps, batch min(inner_batch, k)) for k in {1, 5, 50, 400}, divided
by the step count. FP-k adapts on up to hundreds of examples, so the step
must cost the same at every k >= inner_batch (minibatches, not the whole
support set, go through the network).

With --memory: this process's peak resident memory (ru_maxrss) after
building the model and running two meta-steps of the given configuration;
run it once per configuration (a fresh process per figure).
"""

import os
import resource
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from efficientlab_tf import cli  # noqa: E402
from efficientlab_tf.data.source import meta_batches  # noqa: E402
from efficientlab_tf.experiment import Experiment  # noqa: E402

flags.DEFINE_integer("repeats", 5, "Timed repeats (median reported).")
flags.DEFINE_integer("steps", 10, "Inner steps per timed adaptation.")
flags.DEFINE_bool("memory", False, "Report peak memory of two meta-steps.")


def peak_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main(argv):
    del argv
    f = flags.FLAGS
    config = cli.config_from_flags(f)
    exp = Experiment(config)
    size = config.model.image_size
    if f.memory:
        batches = iter(meta_batches(exp.source, config, 0))
        for s in range(2):
            float(exp.learner.meta_step(next(batches), tf.constant(0.5),
                                        tf.constant([0, s]))["meta_train_loss"])
        print(f"memory encoder={config.model.encoder} image_size={size} "
              f"meta_batch={config.meta.meta_batch} algo={config.meta.algo} "
              f"peak RSS {peak_mib():.0f} MiB")
        return
    rng = np.random.RandomState(0)
    fn = exp.learner.eval_task
    lr, steps = tf.constant(0.01), tf.constant(f.steps)
    query = tf.constant(rng.uniform(0, 255, (5, size, size, 3)), tf.float32)
    query_masks = tf.zeros((5, size, size, 1))
    for k in (1, 5, 50, 400):
        images = tf.constant(rng.uniform(0, 255, (k, size, size, 3)), tf.float32)
        masks = tf.constant((rng.uniform(size=(k, size, size, 1)) > 0.5)
                            .astype(np.float32))

        def call():
            return fn(images, masks, query, query_masks, lr, steps,
                      tf.constant([0, 0]))[0].numpy()

        call()  # Traces this k.
        times = []
        for _ in range(f.repeats):
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
        per_step = statistics.median(times) / f.steps
        print(f"k={k:4d} batch={min(config.meta.inner_batch, k)} "
              f"{per_step * 1000:.1f} ms per inner step (median of {f.repeats}, "
              f"{f.steps} steps + query prediction)")
    print(f"encoder={config.model.encoder} image_size={size} "
          f"peak RSS {peak_mib():.0f} MiB")


if __name__ == "__main__":
    cli.define_flags()
    app.run(main)
