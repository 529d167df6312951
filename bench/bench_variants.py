"""Meta-iteration time of training variants side by side, in one process.

    python bench/bench_variants.py --flagfile=flags/synthetic_demo.flags \
        --variants=all,bn_affine,decoder,clustering,consensus --repeats=5

Each variant is the flags' configuration with one change: an adaptation
scope (`all`, `bn_affine`, `decoder`, `head`; `mtl` needs --mtl), `clustering` (--clustering_weight
0.1), `consensus` (--consensus_weight 0.1), `reptile` or `maml` (second order,
FOMAML's D_tr / D_val split). Peak memory is not separable in one process:
bench_k_memory.py measures it per configuration. Repeats interleave
the variants (variant a, b, c, a, b, c, ...) so a background load slows them
alike; the median of `repeats` single meta-steps is printed with its ratio
to the first variant. Figures go to BENCHMARKS.md with the machine.
"""

import dataclasses
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tensorflow as tf  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from efficientlab_tf import cli  # noqa: E402
from efficientlab_tf.config import ADAPT_SCOPES  # noqa: E402
from efficientlab_tf.data.source import meta_batches  # noqa: E402
from efficientlab_tf.experiment import Experiment  # noqa: E402

flags.DEFINE_integer("repeats", 5, "Timed meta-steps per variant (median).")
flags.DEFINE_list("variants", ["all", "bn_affine", "decoder"], "Variants to time.")

EXTRA = {"clustering": {"clustering_weight": 0.1},
         "consensus": {"consensus": 0.1},
         "reptile": {"algo": "reptile", "foml_tail": None},
         "maml": {"algo": "maml"}}


def variant_config(config, name):
    if name in ADAPT_SCOPES:
        changes = {"adapt_scope": name}
    elif name in EXTRA:
        changes = EXTRA[name]
    else:
        raise ValueError(f"unknown variant {name!r}; known: "
                         f"{list(ADAPT_SCOPES) + list(EXTRA)}.")
    return dataclasses.replace(config, meta=dataclasses.replace(config.meta,
                                                                **changes))


def main(argv):
    del argv
    f = flags.FLAGS
    base = cli.config_from_flags(f)
    steps = {}
    tasks = None
    for name in f.variants:
        exp = Experiment(variant_config(base, name))
        if tasks is None:
            tasks = next(iter(meta_batches(exp.source, base, 0)))
        learner = exp.learner
        step = (lambda learner=learner: float(learner.meta_step(
            tasks, tf.constant(0.5), tf.constant([0, 0]))["meta_train_loss"]))
        step()  # Trace.
        steps[name] = step
    times = {name: [] for name in steps}
    for _ in range(f.repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    first = statistics.median(times[f.variants[0]])
    print(f"{base.model.encoder} {base.model.image_size} px, {base.meta.algo}, "
          f"meta-batch {base.meta.meta_batch}, {base.meta.inner_iters} inner "
          f"steps, median of {f.repeats}:")
    for name in steps:
        m = statistics.median(times[name])
        print(f"  {name:12s} {m:7.3f} s/meta-iteration  {m / first:5.2f}x")


if __name__ == "__main__":
    cli.define_flags()
    app.run(main)
