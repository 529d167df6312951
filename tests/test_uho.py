"""UHO (paper appendix C): early stopping, range shrinking, resumable search."""

import csv
import json
import math
import os
import tempfile

import tensorflow as tf

from efficientlab_tf.config import UHOConfig
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
        trials = [{"lr": lr, "best_steps": s, "batch_size": b, "mean_iou": iou}
                  for lr, s, b, iou in [(0.01, 3, 1, 0.2), (0.04, 5, 2, 0.7),
                                        (0.06, 7, 4, 0.8), (0.3, 9, 8, 0.1)]]
        lr_range, steps_range, batches = uho.refine_search_space(
            trials, 0.5, (1, 20), (1, 2, 4, 5, 8))
        self.assertEqual(lr_range, (0.04, 0.06))
        self.assertEqual(steps_range, (5, 7))
        self.assertEqual(batches, (2, 4))  # The top half used 2 and 4.

    def test_candidate_batch_sizes_fit_the_shots(self):
        self.assertEqual(uho.candidate_batch_sizes(1), (1,))
        self.assertEqual(uho.candidate_batch_sizes(5), (1, 2, 4, 5))
        self.assertEqual(uho.candidate_batch_sizes(8), (1, 2, 4, 8))
        self.assertEqual(uho.candidate_batch_sizes(10), (1, 2, 4, 8, 10))


def fake_score(lr, max_steps, batch_size, patience, log=None):
    """Early-stopped score of `fake_curve`, computing step by step."""
    curve = fake_curve(lr, max_steps, batch_size)

    def step(t):
        if log is not None:
            log.append(t)
        return curve[t]

    best, best_t, _ = uho.early_stopped_score(step, max_steps, patience)
    return best, best_t


class EarlyStoppedScoreTest(tf.test.TestCase):

    def test_stops_computing_after_patience(self):
        # Peak 0.6 at step 2, then no improvement: steps 3, 4, 5 are looked
        # at, step 6 (0.9) and beyond are never computed.
        curve = [0.1, 0.5, 0.6, 0.55, 0.6, 0.58, 0.9] + [1.0] * 14
        computed = []

        def step(t):
            computed.append(t)
            return curve[t]

        self.assertEqual(uho.early_stopped_score(step, 20, 3), (0.6, 2, 5))
        self.assertEqual(computed, [0, 1, 2, 3, 4, 5])


class recording_sampler:
    """`with recording_sampler() as seen:` uho.sample_configs, recording its
    (lr range, steps range, batch sizes) each round."""

    def __enter__(self):
        self.real, seen = uho.sample_configs, []

        def recording(rng, n, lr_range, steps_range, batch_sizes):
            seen.append((lr_range, steps_range, batch_sizes))
            return self.real(rng, n, lr_range, steps_range, batch_sizes)

        uho.sample_configs = recording
        return seen

    def __exit__(self, *exc):
        uho.sample_configs = self.real


class SearchTest(tf.test.TestCase):

    def test_finds_the_optimum_and_resumes(self):
        config = UHOConfig(lr_min=0.005, lr_max=0.5, steps_min=2, steps_max=12,
                               samples=6, rounds=3, keep_fraction=0.34, seed=1)
        workdir = tempfile.mkdtemp()
        calls = []

        def counted(lr, cap, batch, patience):
            calls.append((lr, cap))
            return fake_score(lr, cap, batch, patience)

        best = uho.search(counted, config, workdir)
        with open(os.path.join(workdir, "uho_trials.csv")) as f:
            rows = list(csv.DictReader(f))
        rounds = 1 + max(int(r["round"]) for r in rows)
        self.assertEqual(len(calls), 6 * rounds)
        self.assertEqual(len(rows), 6 * rounds)
        # The best trial stops at the curve's peak (or its cap) and its lr is
        # within a factor 1.5 of 0.05.
        top = max(rows, key=lambda r: float(r["mean_iou"]))
        self.assertEqual(best.steps, int(top["best_steps"]))
        self.assertEqual(best.steps, min(6, int(top["max_steps"])))
        self.assertLess(abs(math.log(best.lr / 0.05)), math.log(1.5))
        with open(os.path.join(workdir, "omega.json")) as f:
            omega = json.load(f)
        self.assertEqual(omega["steps"], best.steps)
        self.assertEqual(omega["batch_size"], 8)
        self.assertAlmostEqual(omega["lr"], best.lr)
        # An interrupted search resumes: drop the last 5 trials, rerun.
        with open(os.path.join(workdir, "uho_trials.csv"), "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=uho.FIELDS)
            writer.writeheader()
            writer.writerows(rows[:-5])
        calls.clear()
        again = uho.search(counted, config, workdir)
        self.assertEqual(len(calls), 5)
        self.assertEqual(again, best)

    def test_refinement_uses_all_trials_so_far(self):
        # Algorithm 2 refines from the accumulated trials: the ranges each
        # round samples in equal refine_search_space(all earlier trials),
        # recomputed here from the CSV.
        config = UHOConfig(lr_min=0.005, lr_max=0.5, steps_min=2, steps_max=12,
                               samples=5, rounds=4, keep_fraction=0.4, seed=3)
        # A surface that improves every round (the score grows with the
        # call count) so that no round stops the search early.
        count = [0]

        def rising(lr, cap, batch, patience):
            count[0] += 1
            return 0.01 * count[0] * (1.0 - abs(math.log(lr / 0.05)) / 10), 3

        workdir = tempfile.mkdtemp()
        with recording_sampler() as ranges:
            uho.search(rising, config, workdir)
        with open(os.path.join(workdir, "uho_trials.csv")) as f:
            trials = [{"lr": float(r["lr"]), "best_steps": int(r["best_steps"]),
                       "mean_iou": float(r["mean_iou"]), "round": int(r["round"])}
                      for r in csv.DictReader(f)]
        self.assertLen(ranges, 4)
        self.assertEqual(ranges[0], ((0.005, 0.5), (2, 12), (8,)))
        for t in trials:
            t["batch_size"] = 8
        for r in range(1, 4):
            earlier = [t for t in trials if t["round"] < r]
            self.assertEqual(ranges[r],
                             uho.refine_search_space(earlier, 0.4, (2, 12), (8,)))
            # ... which differs from refining on the last round alone.
            last = [t for t in trials if t["round"] == r - 1]
            if r > 1:
                self.assertNotEqual(
                    ranges[r], uho.refine_search_space(last, 0.4, (2, 12), (8,)))

    def test_batch_size_is_searched_and_refined(self):
        # Issue 24.4: with 5 shots UHO tries batch sizes 1, 2, 4, 5 by
        # default; on a surface whose best batch is 2 it returns 2, and the
        # candidates narrow round after round.
        config = UHOConfig(lr_min=0.005, lr_max=0.5, steps_min=2, steps_max=12,
                           samples=8, rounds=4, keep_fraction=0.25, seed=5)
        count = [0]

        def surface(lr, cap, batch, patience):
            # Peak at batch 2 (0.3 below it per halving/doubling), and a
            # tiny rise per call so that every round improves.
            count[0] += 1
            quality = 1.0 - 0.3 * abs(math.log2(batch / 2))
            return quality * fake_score(lr, cap, batch, patience)[0] + 1e-4 * count[0], 6

        with recording_sampler() as ranges:
            best = uho.search(surface, config, tempfile.mkdtemp(), shots=5)
        seen = [batches for _, _, batches in ranges]
        self.assertEqual(seen[0], (1, 2, 4, 5))
        self.assertEqual(best.batch_size, 2)
        self.assertLess(len(seen[-1]), len(seen[0]))
        self.assertIn(2, seen[-1])

    def test_stops_when_a_round_does_not_improve(self):
        config = UHOConfig(samples=4, rounds=6, seed=0)
        calls = []

        def flat(lr, cap, batch, patience):
            calls.append(lr)
            return 0.5, 1  # Every configuration is as good as any other.

        uho.search(flat, config, tempfile.mkdtemp())
        # Round 0 sets the expected score; round 1 does not improve it: stop.
        self.assertLen(calls, 8)

        improving = []

        def better_each_call(lr, cap, batch, patience):
            improving.append(lr)
            return len(improving) / 100.0, 1

        uho.search(better_each_call, config, tempfile.mkdtemp())
        self.assertLen(improving, 24)  # The rounds cap.

    def test_bad_config(self):
        with self.assertRaisesRegex(ValueError, "uho_lr_min"):
            UHOConfig(lr_min=0.1, lr_max=0.01)
        with self.assertRaisesRegex(ValueError, "uho_steps_min"):
            UHOConfig(steps_min=0, steps_max=5)
