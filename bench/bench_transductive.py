"""How much the evaluation protocol gains from normalising its queries together.

    python bench/bench_transductive.py --run=runs/r62/fold0/joint_jointlong

The protocol (as the paper's code does) predicts a task's 5 query images as
one batch, so a `--bn_mode=batch` network normalises them together; served
answers (`few_shot`, `segment`) predict each photo alone. For each meta-test
task of the run's own evaluation, this adapts once (the run's omega, the
task's seed) and scores both predictions of the same adapted weights with the
package's IoU; it prints both means and their paired difference (95% CI).
"""

import argparse
import json
import os

import tensorflow as tf

import efficientlab_tf as el
from efficientlab_tf.evaluation.protocol import mean_ci95
from efficientlab_tf.evaluation.protocol import paired_difference
from efficientlab_tf.experiment import Experiment
from efficientlab_tf.experiment import load_model_weights


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a training run folder")
    parser.add_argument("--shots", type=int, default=5)
    args = parser.parse_args()
    config = el.configure(flagfile=os.path.join(args.run, "flags.txt"),
                          workdir=args.run, eval_shots=args.shots)
    exp = Experiment(config)
    load_model_weights(exp.model, args.run)
    omega = config.eval_omega
    adapter = exp.learner.evaluator.adapter(omega, in_place=False)
    metric = exp.learner.task.metric_fn
    together, alone = [], []
    for i, task in enumerate(exp.eval_tasks("test")):
        seed = tf.constant([config.eval.seed, i], tf.int32)
        adapted, _ = adapter.adapt(task.support_images, task.support_masks,
                                   omega.lr, omega.steps, seed)
        joint = adapter.predict(adapted, task.query_images)
        each = tf.concat([adapter.predict(adapted, q[None])
                          for q in task.query_images], 0)
        together.append(float(tf.reduce_mean(metric(task.query_masks, joint))))
        alone.append(float(tf.reduce_mean(metric(task.query_masks, each))))
    diff, ci = paired_difference(together, alone)
    print(json.dumps({"run": args.run, "shots": args.shots, "tasks": len(alone),
                      "queries_together": [float(v) for v in mean_ci95(together)],
                      "each_query_alone": [float(v) for v in mean_ci95(alone)],
                      "together_minus_alone": [float(diff), float(ci)]}))


if __name__ == "__main__":
    main()
