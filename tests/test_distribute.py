"""--strategy: the meta-batch across replicas gives the one-device result.

Mirrored replicas need the CPU split into logical devices before TensorFlow
sets up its devices, and a multi-worker run needs one process per worker,
so both run in subprocesses (tests/replicas.py).
"""

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf
import pytest

from efficientlab_tf import config as config_lib
from efficientlab_tf import distribute
from efficientlab_tf import runners
from efficientlab_tf.experiment import load_model_weights
from tests import helpers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": ROOT,
       "TF_NUM_INTEROP_THREADS": "2", "TF_NUM_INTRAOP_THREADS": "1"}


def replicas(*args, timeout=300):
    out = subprocess.run([sys.executable, "-m", "tests.replicas", *args],
                         cwd=ROOT, env=ENV, capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ",".join(map(str, ports))


def start_workers(workdir, meta_iters, delay):
    ports = free_ports(2)
    return [subprocess.Popen(
        [sys.executable, "-m", "tests.replicas", "worker", workdir, str(i),
         ports, str(meta_iters), str(delay)],
        cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True) for i in range(2)]


def weights_of(run_dir):
    keras.utils.set_random_seed(1)
    model = helpers.tiny_efficientlab(bn_mode="batch")
    load_model_weights(model, run_dir)
    return model.get_weights()


@pytest.mark.slow  # Over 7 s on the 2-core VM: not in the fast tier.
class MirroredTest(tf.test.TestCase):

    def test_two_replicas_equal_one_device_fomaml(self):
        # Tasks 0-1 on replica 0, 2-3 on replica 1, directions all-reduced:
        # the same sums as one device in another order (float rounding).
        out = replicas("mirrored", "fomaml", "interpolate")
        self.assertEqual(out["replicas"], 2)
        self.assertGreater(out["max_abs_moved"], 1e-3)  # The steps did move.
        self.assertLess(out["max_abs_diff"], 1e-6)
        for a, b in zip(out["mirrored"], out["one"]):
            # task_scores: each replica fills its tasks' places of the
            # meta-batch's score vector, the all-reduce assembles it.
            for key in ("meta_train_loss", "post_adapt_query_iou", "task_scores"):
                self.assertAllClose(a[key], b[key], atol=1e-5)
            self.assertLen(a["task_scores"], 4)

    def test_two_replicas_equal_one_device_reptile_adam(self):
        # Adam divides by sqrt(v): near-zero directions amplify the rounding
        # differences, hence the looser tolerance (moves are ~8).
        out = replicas("mirrored", "reptile", "adam")
        self.assertGreater(out["max_abs_moved"], 1.0)
        self.assertLess(out["max_abs_diff"], 1e-2)


@pytest.mark.slow  # Over 7 s on the 2-core VM: not in the fast tier.
class ReplicatedEvaluationTest(tf.test.TestCase):

    def test_one_task_per_replica_scores_what_one_device_scores(self):
        # 5 tasks on 2 replicas: groups (0, 1), (2, 3), (4 + padding); task i
        # keeps its seed (7, i) on whichever replica adapts it.
        out = replicas("evaluate")
        self.assertTrue(out["replicated"])
        self.assertLen(out["grouped"], 5)
        self.assertAllClose(out["grouped"], out["one_at_a_time"], atol=1e-5)
        self.assertAllClose(out["grouped"], out["one_device"], atol=1e-5)
        # Adaptation changed the scores, so the equality has teeth.
        self.assertGreater(np.max(np.abs(np.subtract(out["grouped"],
                                                     out["no_steps"]))), 1e-3)


@pytest.mark.slow  # Over 7 s on the 2-core VM: not in the fast tier.
class MultiWorkerTest(tf.test.TestCase):

    def test_killed_worker_then_restart_resumes_to_the_one_device_weights(self):
        meta_iters = 6
        reference = tempfile.mkdtemp()
        keras.utils.set_random_seed(0)
        runners.run(helpers.tiny_experiment(reference, meta_iters=meta_iters,
                                checkpoint_every=1),
                    model=helpers.tiny_efficientlab(bn_mode="batch"))

        workdir = tempfile.mkdtemp()
        procs = start_workers(workdir, meta_iters, delay=1.0)
        deadline = time.time() + 240
        ckpt_dir = os.path.join(workdir, "checkpoints")
        while time.time() < deadline:
            state = tf.train.get_checkpoint_state(ckpt_dir)
            if state and state.model_checkpoint_path.endswith(("-2", "-3")):
                break
            if procs[0].poll() is not None:
                self.fail(procs[0].communicate()[1][-3000:])
            time.sleep(0.2)
        else:
            self.fail("the chief wrote no checkpoint in 240 s")
        procs[1].send_signal(signal.SIGKILL)  # Worker 1 dies mid-run.
        procs[1].wait()
        # The chief cannot finish a step without it; the user restarts all.
        time.sleep(1.5)
        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait()
        killed_at = tf.train.get_checkpoint_state(ckpt_dir).model_checkpoint_path
        self.assertFalse(killed_at.endswith(f"-{meta_iters}"))

        procs = start_workers(workdir, meta_iters, delay=0.0)
        outs = [p.communicate(timeout=300) for p in procs]
        for p, (_, err) in zip(procs, outs):
            self.assertEqual(p.returncode, 0, err[-3000:])
        results = [json.loads(o.strip().splitlines()[-1]) for o, _ in outs]
        self.assertEqual(results, [{"step": meta_iters, "chief": True},
                                   {"step": meta_iters, "chief": False}])
        self.assertIn("Resumed from", outs[0][1])
        # Only the chief writes the run's files.
        self.assertTrue(os.path.exists(os.path.join(workdir, "results.json")))
        for a, b in zip(weights_of(workdir), weights_of(reference)):
            np.testing.assert_allclose(a, b, atol=1e-5)


class ConfigTest(tf.test.TestCase):

    def test_roles_from_tf_config(self):
        env = {"TF_CONFIG": json.dumps({"cluster": {"worker": ["a:1", "b:2"]},
                                        "task": {"type": "worker", "index": 1}})}
        run = config_lib.RunConfig(strategy="multi_worker")
        self.assertEqual(distribute.task_role(env), ("worker", 1))
        self.assertFalse(distribute.is_chief(run, env))
        env0 = {"TF_CONFIG": env["TF_CONFIG"].replace('"index": 1', '"index": 0')}
        self.assertTrue(distribute.is_chief(run, env0))
        self.assertTrue(distribute.is_chief(config_lib.RunConfig(), env))
        with self.assertRaisesRegex(distribute.DistributeError, "TF_CONFIG"):
            distribute.task_role({"TF_CONFIG": "{not json"})

    def test_multi_worker_without_tf_config_is_one_line(self):
        os.environ.pop("TF_CONFIG", None)
        with self.assertRaisesRegex(distribute.DistributeError,
                                    "needs TF_CONFIG"):
            distribute.get_strategy(
                config_lib.RunConfig(strategy="multi_worker"))

    def test_incompatible_flags_are_refused(self):
        with self.assertRaisesRegex(ValueError, "--adapt_in_place"):
            config_lib.RunConfig(strategy="mirrored", adapt_in_place=True)
        with self.assertRaisesRegex(ValueError, "--algo=joint runs on one"):
            config_lib.ExperimentConfig(
                meta=config_lib.MetaConfig(algo="joint"),
                run=config_lib.RunConfig(strategy="mirrored"))
