"""UHO (paper appendix C): early stopping, range shrinking, resumable search."""

import csv
import json
import math
import os
import tempfile

import tensorflow as tf

from efficientlab_tf.evaluation import uho


def fake_curve(lr, max_steps, batch_size):
    """IoU after t steps: rises to a peak at t* = 6 for lr = 0.05, then falls;
    a worse lr scales the whole curve down. Computable by hand."""
    quality = 1.0 - abs(math.log(lr / 0.05))
    return [quality * (1.0 - abs(t - 6) / 10.0) for t in range(max_steps + 1)]


class EarlyStopTest(tf.test.TestCase):

    def test_by_hand(self):
        # Best 0.6 at step 2; steps 3, 4, 5 bring nothing -> stop, never see 0.9.
        curve = [0.1, 0.5, 0.6, 0.55, 0.6, 0.58, 0.9]
        self.assertEqual(uho.early_stop(curve, patience=3), (0.6, 2))
        self.assertEqual(uho.early_stop(curve, patience=4), (0.9, 6))
        self.assertEqual(uho.early_stop([0.3], patience=3), (0.3, 0))

    def test_shrink_keeps_the_best_fraction(self):
        trials = [{"lr": lr, "best_steps": s, "mean_iou": iou} for lr, s, iou in
                  [(0.01, 3, 0.2), (0.04, 5, 0.7), (0.06, 7, 0.8), (0.3, 9, 0.1)]]
        lr_range, steps_range = uho.shrink(trials, 0.5, (1, 20))
        self.assertEqual(lr_range, (0.04, 0.06))
        self.assertEqual(steps_range, (5, 7))


class SearchTest(tf.test.TestCase):

    def test_finds_the_optimum_and_resumes(self):
        config = uho.UHOConfig(lr_range=(0.005, 0.5), steps_range=(2, 12),
                               samples=6, rounds=3, keep_fraction=0.34, seed=1)
        workdir = tempfile.mkdtemp()
        calls = []

        def counted(lr, cap, batch):
            calls.append((lr, cap))
            return fake_curve(lr, cap, batch)

        best = uho.search(counted, config, workdir)
        self.assertEqual(len(calls), 18)
        # The best trial stops at the curve's peak (or its cap) and its lr is
        # within a factor 1.5 of 0.05 after three rounds of shrinking.
        self.assertEqual(best["best_steps"], min(6, best["max_steps"]))
        self.assertLess(abs(math.log(best["lr"] / 0.05)), math.log(1.5))
        with open(os.path.join(workdir, "omega.json")) as f:
            omega = json.load(f)
        self.assertEqual(omega["steps"], best["best_steps"])
        self.assertAlmostEqual(omega["lr"], best["lr"])
        # Ranges shrink: round 2 samples lie inside round 0's best third.
        with open(os.path.join(workdir, "uho_trials.csv")) as f:
            rows = list(csv.DictReader(f))
        self.assertEqual(len(rows), 18)
        # An interrupted search resumes: drop the last 5 trials, rerun.
        with open(os.path.join(workdir, "uho_trials.csv"), "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=uho.FIELDS)
            writer.writeheader()
            writer.writerows(rows[:13])
        calls.clear()
        again = uho.search(counted, config, workdir)
        self.assertEqual(len(calls), 5)
        self.assertEqual(again, best)

    def test_bad_config(self):
        with self.assertRaisesRegex(ValueError, "uho_lr_range"):
            uho.UHOConfig(lr_range=(0.1, 0.01))
        with self.assertRaisesRegex(ValueError, "uho_steps_range"):
            uho.UHOConfig(steps_range=(0, 5))
