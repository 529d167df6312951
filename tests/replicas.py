"""Runs in subprocesses (tests/test_distribute.py): the CPU must be split
into logical devices before TensorFlow sets its devices up, which a pytest
process has long done, and a multi-worker run needs one process per worker.

    python -m tests.replicas mirrored ALGO META_OPTIMIZER

prints one JSON line: the largest absolute difference between the weights
after two meta-steps on 2 mirrored replicas and after the same two steps on
one device, from the same initial weights, plus the metrics of both.

    python -m tests.replicas evaluate

prints the per-task scores of 5 tasks evaluated one task per replica on 2
mirrored replicas, one task at a time in the same process, and on one
device from the same weights.

    python -m tests.replicas worker WORKDIR INDEX PORT0,PORT1 META_ITERS DELAY

trains the tests' tiny configuration as worker INDEX of a two-worker
`--strategy=multi_worker` run on 127.0.0.1 (sleeping DELAY seconds after
each meta-step, so that a test can kill it mid-run), and prints the results.
"""

import json
import os
import sys
import time

import keras
from absl import logging
import numpy as np
import tensorflow as tf

from efficientlab_tf import distribute
from efficientlab_tf import segmentation
from efficientlab_tf import training
from efficientlab_tf.config import MetaConfig
from efficientlab_tf.config import RunConfig
from efficientlab_tf.meta.evaluator import ReplicatedEval
from efficientlab_tf.meta.learner import MetaLearner
from tests import helpers


def learner(algo, meta_optimizer, strategy=None):
    config = MetaConfig(algo=algo, train_shots=4, foml_tail=2, inner_iters=3,
                        inner_batch=2, inner_lr=0.05, meta_batch=4,
                        meta_optimizer=meta_optimizer)
    scope = strategy.scope() if strategy else tf.distribute.get_strategy().scope()
    with scope:
        model = helpers.tiny_efficientlab(bn_mode="running")
    return MetaLearner(model, config, segmentation.task_fns(config.weight_decay),
                       bn_mode="running", strategy=strategy)


def mirrored(algo, meta_optimizer):
    strategy = distribute.get_strategy(
        RunConfig(strategy="mirrored", cpu_devices=2))
    many = learner(algo, meta_optimizer, strategy)
    one = learner(algo, meta_optimizer)
    initial = many.model.get_weights()
    one.model.set_weights(initial)
    out = {"replicas": strategy.num_replicas_in_sync}
    for name, lrn in (("mirrored", many), ("one", one)):
        metrics = []
        for step in range(2):
            m = lrn.meta_step(helpers.random_task(meta_batch=4, seed=step),
                              tf.constant(0.5), tf.constant([1, step]),
                              tf.constant(True))
            metrics.append({k: np.asarray(v).tolist() for k, v in m.items()})
        out[name] = metrics
    diffs = [float(np.max(np.abs(a - b))) for a, b in
             zip(many.model.get_weights(), one.model.get_weights())]
    moved = [float(np.max(np.abs(a - b))) for a, b in
             zip(many.model.get_weights(), initial)]
    out["max_abs_diff"] = max(diffs)
    out["max_abs_moved"] = max(moved)
    return out


def evaluate():
    from efficientlab_tf.evaluation import protocol

    strategy = distribute.get_strategy(
        RunConfig(strategy="mirrored", cpu_devices=2))
    many = learner("fomaml", "interpolate", strategy)
    one = learner("fomaml", "interpolate")
    one.model.set_weights(many.model.get_weights())
    tasks = [helpers.random_task(shots=4, query=2, seed=10 + i) for i in range(5)]
    lr, steps = 0.05, 4
    out = {"replicated": isinstance(many.eval_task, ReplicatedEval)}
    out["grouped"] = protocol.evaluate(many.eval_task, tasks, lr, steps,
                                       seed=7)["per_task"]
    out["one_at_a_time"] = protocol.evaluate(many.eval_task.task_fn, tasks, lr,
                                             steps, seed=7)["per_task"]
    out["one_device"] = protocol.evaluate(one.eval_task, tasks, lr, steps,
                                          seed=7)["per_task"]
    out["no_steps"] = protocol.evaluate(one.eval_task, tasks, lr, 0,
                                        seed=7)["per_task"]
    return out


def worker(workdir, index, ports, meta_iters, delay):
    os.environ["TF_CONFIG"] = json.dumps({
        "cluster": {"worker": [f"127.0.0.1:{p}" for p in ports.split(",")]},
        "task": {"type": "worker", "index": int(index)}})
    config = helpers.tiny_experiment(workdir, meta_iters=int(meta_iters),
                         checkpoint_every=1, strategy="multi_worker")
    strategy = distribute.get_strategy(config.run)
    with strategy.scope():
        model = helpers.tiny_efficientlab(bn_mode="batch")
    prepared = training.prepare(config, model)
    step_fn = prepared.exp.learner.meta_step

    def slow_step(*args):
        out = step_fn(*args)
        time.sleep(float(delay))
        return out

    prepared.exp.learner.meta_step = slow_step
    results = training.run(prepared)
    return {"step": results["step"], "chief": "meta_test" in results}


if __name__ == "__main__":
    logging.set_verbosity(logging.INFO)
    keras.utils.set_random_seed(0)
    if sys.argv[1] == "mirrored":
        print(json.dumps(mirrored(*sys.argv[2:4])))
    elif sys.argv[1] == "evaluate":
        print(json.dumps(evaluate()))
    else:
        print(json.dumps(worker(*sys.argv[2:7])))
