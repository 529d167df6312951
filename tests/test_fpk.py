"""FP-k runner: bookkeeping checked with a fake update routine."""

import os
import tempfile

import tensorflow as tf

from efficientlab_tf.evaluation import fpk
from tests import helpers


class FPKTest(tf.test.TestCase):

    def test_rows_by_hand(self):
        calls = []

        def eval_fn(si, sm, qi, qm, lr, steps, seed):
            # IoU = (k + steps) / 100 for every query: known by construction.
            calls.append((si.shape[0], int(steps)))
            value = (si.shape[0] + int(steps)) / 100.0
            return tf.fill([qi.shape[0]], value), None

        def task_fn(t, r, k):
            return helpers.random_task(shots=k, query=3, size=8, seed=t * 10 + r)

        loaded = []
        inits = [("random", None), ("meta", lambda: loaded.append(True))]
        rows = fpk.run_fpk(eval_fn, task_fn, inits, [1, 5], [2, 10], tasks=2,
                           repeats=3, lr=0.1)
        self.assertEqual(loaded, [True])
        self.assertEqual(len(calls), 2 * 2 * 2 * 3)
        self.assertEqual([(r["init"], r["k"], r["iterations"]) for r in rows],
                         [("random", 1, 2), ("random", 5, 10),
                          ("meta", 1, 2), ("meta", 5, 10)])
        self.assertAllClose(rows[1]["mean_iou"], 0.15)
        self.assertAllClose(rows[1]["ci95"], 0.0)
        self.assertEqual(len(rows[0]["scores"]), 6)
        out = tempfile.mkdtemp()
        md = fpk.write_fpk(rows, out)
        self.assertIn("| 5 (10) | 0.150 ± 0.000 | 0.150 ± 0.000 |", md)
        self.assertTrue(os.path.exists(os.path.join(out, "fpk.csv")))
        self.assertTrue(os.path.exists(os.path.join(out, "fpk.png")))
