"""Comparison table: paired differences and files, by hand."""

import json
import os
import tempfile

import tensorflow as tf

from efficientlab_tf.evaluation import compare
from tests import helpers


class CompareTest(tf.test.TestCase):

    def test_paired_rows_and_files(self):
        rows = [{"name": "ref", "steps": 50, "mean_iou": 0.4, "ci95": 0.1,
                 "per_task": [0.3, 0.5]},
                {"name": "meta", "steps": 5, "mean_iou": 0.6, "ci95": 0.1,
                 "per_task": [0.5, 0.7]}]
        compare.add_paired(rows, "ref")
        # meta - ref = (0.2, 0.2): mean 0.2, no spread.
        self.assertAllClose(rows[1]["diff_vs_ref"], 0.2)
        self.assertAllClose(rows[1]["diff_ci95"], 0.0)
        out = tempfile.mkdtemp()
        path = compare.write_table(rows, "ref", out)
        text = open(path).read()
        self.assertIn("| meta | 5 | 0.6000 | ±0.1000 | +0.2000 ± 0.0000 |", text)
        with open(os.path.join(out, "compare.json")) as f:
            self.assertEqual(len(json.load(f)), 2)
        with self.assertRaisesRegex(ValueError, "reference row 'nope'"):
            compare.add_paired(rows, "nope")


def _task(query_masks):
    from efficientlab_tf.data.tasks import TaskBatch

    q = tf.constant(query_masks, tf.float32)[..., None]
    n = q.shape[0]
    images = tf.zeros([n, *q.shape[1:3], 3])
    return TaskBatch(images, q, images, q)


class TrivialRowsTest(tf.test.TestCase):

    def test_centred_box_by_hand(self):
        box = compare.centred_box(8, 0.5)
        self.assertEqual(box.sum(), 16.0)
        self.assertAllEqual(box[2:6, 2:6], tf.ones([4, 4]))
        self.assertEqual(box[:2].sum() + box[6:].sum(), 0.0)

    def test_constant_predictions_score_by_hand(self):
        truth = tf.zeros([8, 8]).numpy()
        truth[0:4, 0:8] = 1  # 32 pixels, top half.
        empty = tf.zeros([8, 8]).numpy()
        task = _task([truth, empty])
        all_fg, box = compare.trivial_rows([task], 0.5)
        # All-foreground: 32/64 on the first query, 0/64 on the empty one.
        self.assertAllClose(all_fg["per_task"], [(0.5 + 0.0) / 2])
        # Box rows 2-5, cols 2-5: intersection with the top half is 2x4 = 8;
        # union 32 + 16 - 8 = 40. Empty mask vs box: 0.
        self.assertAllClose(box["per_task"], [(8 / 40 + 0.0) / 2])
        self.assertEqual(box["name"], "centred box (side 0.50)")

    def test_box_fraction_is_fitted_on_the_given_tasks(self):
        masks = [compare.centred_box(40, 0.6), compare.centred_box(40, 0.6)]
        self.assertAllClose(compare.fit_box_fraction([_task(masks)]), 0.6)

    def test_merge_pools_tasks_of_all_folds(self):
        f0 = [{"name": "a", "init": "a", "steps": 5, "mean_iou": 0.5,
               "per_task": [0.4, 0.6]},
              {"name": "only_f0", "init": "x", "steps": 5, "mean_iou": 0.1,
               "per_task": [0.1, 0.1]}]
        f1 = [{"name": "a", "init": "a", "steps": 5, "mean_iou": 0.8,
               "per_task": [0.8]}]
        rows = compare.merge_tables([f0, f1])
        self.assertEqual([r["name"] for r in rows], ["a"])
        self.assertAllClose(rows[0]["per_task"], [0.4, 0.6, 0.8])
        self.assertAllClose(rows[0]["mean_iou"], 0.6)
        self.assertAllClose(rows[0]["fold_means"], [0.5, 0.8])
        compare.add_paired(rows, "a")
        self.assertIn("0.500 / 0.800", compare.markdown_table(rows, "a"))
        # Trivial rows whose fitted box differs per fold still pool.
        box0 = {"name": "centred box (side 0.60)", "init": "trivial", "steps": 0,
                "mean_iou": 0.3, "per_task": [0.3]}
        box1 = dict(box0, name="centred box (side 0.65)", mean_iou=0.5, per_task=[0.5])
        rows = compare.merge_tables([[box0], [box1]])
        self.assertEqual(rows[0]["name"], "centred box (fitted per fold)")
        self.assertAllClose(rows[0]["per_task"], [0.3, 0.5])


def counting_model():
    """(v, a model of the one weight v, the calls, a fake U scoring every
    query v + 0.01 * steps): the calls say what was (re)computed."""
    import types

    v = tf.Variable(0.0)
    calls = []

    def eval_fn(si, sm, qi, qm, lr, steps, seed):
        calls.append(int(steps))
        return tf.fill([qi.shape[0]], v + 0.01 * tf.cast(steps, tf.float32)), None

    return v, types.SimpleNamespace(variables=[v]), calls, eval_fn


class ResumeTest(tf.test.TestCase):

    def test_an_interrupted_comparison_resumes_at_the_first_unscored_init(self):
        from efficientlab_tf.config import Omega

        v, model, calls, eval_fn = counting_model()

        def broken():
            raise RuntimeError("killed while loading b")

        tasks = [_task([[[1.0]]]), _task([[[0.0]], [[1.0]]])]
        omega = Omega(lr=0.1, steps=5)
        cache = tempfile.mkdtemp()
        inits = [("random init", None), ("a", lambda: v.assign(0.3)),
                 ("b", lambda: v.assign(0.6))]

        def run(inits, omega=omega):
            calls.clear()
            return compare.compare_inits(eval_fn, model, inits, tasks, omega,
                                         random_factor=2, cache_dir=cache)

        with self.assertRaisesRegex(RuntimeError, "killed"):
            run(inits[:2] + [("b", broken)])
        self.assertEqual(calls, [5, 5, 0, 0, 10, 10, 5, 5, 0, 0])
        rows = run(inits)
        self.assertEqual(calls, [5, 5, 0, 0])  # Only b was scored.
        by_name = {r["name"]: r["per_task"] for r in rows}
        self.assertAllClose(by_name["random init"], [0.05, 0.05])
        self.assertAllClose(by_name["random init, 2x steps"], [0.1, 0.1])
        self.assertAllClose(by_name["a"], [0.35, 0.35])
        self.assertAllClose(by_name["b, no adaptation"], [0.6, 0.6])
        self.assertEqual([r["name"] for r in rows],
                         ["random init", "random init, no adaptation",
                          "random init, 2x steps", "a", "a, no adaptation",
                          "b", "b, no adaptation"])
        self.assertEqual(float(v), 0.0)  # The random init is restored.
        # A run that trained further (another identity) is scored again,
        # alone; other settings do not reuse the kept rows.
        calls.clear()
        compare.compare_inits(eval_fn, model, inits, tasks, omega,
                              random_factor=2, cache_dir=cache,
                              identities={"a": "ckpt-400"})
        self.assertEqual(calls, [5, 5, 0, 0])
        run(inits, Omega(lr=0.1, steps=3))
        self.assertLen(calls, 14)

    def test_a_fold_1_comparison_never_reads_fold_0_rows(self):
        # Issue 24.5: rows kept in a shared --compare_rows_dir are keyed by
        # the dataset, folder, fold and model too (runners.compare.rows_context).
        from efficientlab_tf.config import ExperimentConfig
        from efficientlab_tf.config import Omega
        from efficientlab_tf.runners.compare import rows_context

        v, model, calls, eval_fn = counting_model()

        cache = tempfile.mkdtemp()
        inits = [("random init", None), ("a", lambda: v.assign(0.3))]

        def run(**knobs):
            config = ExperimentConfig.build(
                "demo", **{"dataset": "fss1000", "data_dir": "/data/fss", **knobs})
            calls.clear()
            compare.compare_inits(eval_fn, model, inits, [_task([[[1.0]]])],
                                  Omega(steps=5), random_factor=2,
                                  cache_dir=cache, context=rows_context(config))
            return len(calls)

        self.assertEqual(run(fold=0), 5)   # 3 random-init rows + 2 of a.
        self.assertEqual(run(fold=1), 5)   # Another fold: scored again.
        self.assertEqual(run(fold=0), 0)   # Its own fold: reused.
        self.assertEqual(run(fold=0, data_dir="/data/other"), 5)
        self.assertEqual(run(fold=0, image_size=96), 5)

    def test_random_steps_factor_zero_drops_the_row_and_the_reference(self):
        import types

        from efficientlab_tf.config import CompareConfig
        from efficientlab_tf.config import Omega

        self.assertEqual(CompareConfig(random_steps_factor=0).reference_row,
                         "random init")
        self.assertEqual(CompareConfig().reference_row, "random init, 10x steps")
        model = types.SimpleNamespace(variables=[tf.Variable(0.0)])
        rows = compare.compare_inits(
            lambda *a: (tf.ones([a[2].shape[0]]), None), model,
            [("random init", None)], [_task([[[1.0]]])], Omega(steps=5),
            random_factor=0)
        self.assertEqual([r["name"] for r in rows],
                         ["random init", "random init, no adaptation"])


class StudyTableTest(tf.test.TestCase):
    """The pivot of merged rows that the README's real-photo table is."""

    @staticmethod
    def _rows():
        def row(init, suffix, per_task, **extra):
            return {"name": init + suffix, "init": init, "steps": 5,
                    "mean_iou": sum(per_task) / len(per_task),
                    "per_task": per_task, **extra}
        return [
            row("joint", "", [0.4, 0.6], clustering_ratio=3.0),
            row("joint", ", no adaptation", [0.1, 0.1]),
            row("joint", " [own omega]", [0.5, 0.5]),
            row("meta", "", [0.5, 0.9], clustering_ratio=2.5),
            row("meta", " [mtl]", [0.3, 0.3]),
            row("meta", " [own omega]", [0.6, 0.6]),
            {"name": "centred box (side 0.65)", "init": "trivial", "steps": 0,
             "mean_iou": 0.3, "per_task": [0.3, 0.3]},
        ]

    def test_rows_carry_their_variant_and_merge_by_it(self):
        # A run named with " (" used to break merging (its name was cut at
        # " (" as if it were a trivial row's fitted parameter).
        def row(init, variant, per_task):
            return {"name": compare.row_name(init, variant), "init": init,
                    "variant": variant, "steps": 5, "per_task": per_task,
                    "mean_iou": sum(per_task) / len(per_task)}
        f0 = [row("run (copy)", "", [0.2]), row("run (copy)", "mtl", [0.4]),
              {"name": "centred box (side 0.60)", "init": "trivial",
               "variant": "centred box", "steps": 0, "per_task": [0.3],
               "mean_iou": 0.3}]
        f1 = [row("run (copy)", "", [0.6]), row("run (copy)", "mtl", [0.8]),
              dict(f0[2], name="centred box (side 0.65)", per_task=[0.5])]
        merged = compare.merge_tables([f0, f1])
        self.assertEqual([r["name"] for r in merged],
                         ["run (copy)", "run (copy) [mtl]",
                          "centred box (fitted per fold)"])
        self.assertAllClose(merged[1]["per_task"], [0.4, 0.8])
        self.assertEqual([compare.row_key(r) for r in merged],
                         [("run (copy)", ""), ("run (copy)", "mtl"), None])

    def test_row_names_split_into_init_and_variant(self):
        split = [compare.row_key(r) for r in self._rows()]
        self.assertEqual(split, [
            ("joint", ""), ("joint", "no adaptation"), ("joint", "own omega"),
            ("meta", ""), ("meta", "mtl"), ("meta", "own omega"), None])

    def test_cells_pair_each_variant_with_the_reference_by_hand(self):
        rows = self._rows()
        text = compare.study_table({5: rows, 1: rows[:3]}, "joint",
                                   ("", "own omega"), minutes={"meta": 30.4},
                                   clustering=True)
        lines = text.splitlines()
        self.assertEqual(lines[0], "| initialization | 5-shot full, shared "
                         "omega | 5-shot own omega | 1-shot full, shared omega "
                         "| 1-shot own omega | R_FC (5-shot) "
                         "| training minutes (as logged) |")
        # meta - joint, shared: (0.1, 0.3): mean 0.2, population sd 0.1,
        # 1.96 * 0.1 / sqrt(2) = 0.139. Own omega: (0.1, 0.1): +0.1 +- 0.
        # No 1-shot rows for meta: empty cells; no minutes for joint.
        self.assertEqual(lines[2], "| joint | 0.500 | 0.500 | 0.500 | 0.500 "
                         "| 3.00 |  |")
        self.assertEqual(lines[3], "| meta | 0.700 (+0.200 ± 0.139) | "
                         "0.600 (+0.100 ± 0.000) |  |  | 2.50 | 30 |")
        self.assertLen(lines, 4)  # The trivial row is no initialization.

    def test_procedure_columns_without_a_reference_row_show_the_mean(self):
        text = compare.study_table({5: self._rows()}, "joint", ("", "mtl"))
        self.assertIn("| meta | 0.700 (+0.200 ± 0.139) | 0.300 |", text)
        self.assertIn("| joint | 0.500 |  |", text)


class MergeFoldersTest(tf.test.TestCase):

    def test_each_shot_count_needs_one_table_per_fold(self):
        from efficientlab_tf.runners.compare_merge import tables_by_shots

        def folder(*shots):
            d = tempfile.mkdtemp()
            for k in shots:
                open(os.path.join(d, f"compare_{k}shot.json"), "w").close()
            return d

        five, one, both = folder(5), folder(1), folder(1, 5)
        found = tables_by_shots([five, one, both], [5, 1])
        self.assertEqual(found, {
            5: [os.path.join(five, "compare_5shot.json"),
                os.path.join(both, "compare_5shot.json")],
            1: [os.path.join(one, "compare_1shot.json"),
                os.path.join(both, "compare_1shot.json")]})
        # A fold whose 1-shot table is missing is an error, not a smaller pool.
        with self.assertRaisesRegex(FileNotFoundError,
                                    "2 folders for 5-shot, 1 folders for 1-shot"):
            tables_by_shots([five, both, folder()], [5, 1])
        with self.assertRaisesRegex(FileNotFoundError, "0 folders for 2-shot"):
            tables_by_shots([five], [2])


class CurveTest(tf.test.TestCase):
    """The adaptation curve (issue 24): IoU after each step count."""

    def test_one_adaptation_per_task_equals_adapting_from_scratch(self):
        # evaluate_curve carries each task's state from one reported count
        # to the next; the eval function adapts from the weights for each
        # count: the same numbers (task i's seed [seed, i] in both).
        from efficientlab_tf.evaluation import protocol
        from tests.test_learner import learner_for

        learner = learner_for("fomaml")
        tasks = [helpers.random_task(seed=s) for s in (5, 6)]
        curve = protocol.evaluate_curve(learner.stepper(learner.omega), tasks,
                                        0.3, [0, 1, 4], seed=7)
        self.assertEqual(list(curve), [0, 1, 4])
        for s, result in curve.items():
            direct = protocol.evaluate(learner.eval_fn(learner.omega), tasks,
                                       0.3, s, seed=7)
            self.assertAllClose(result["per_task"], direct["per_task"], atol=1e-4)
            self.assertAllClose(result["mean_iou"], direct["mean_iou"], atol=1e-4)
        # Adaptation moved the scores, so the equality has teeth.
        self.assertNotAllClose(curve[0]["per_task"], curve[4]["per_task"])
        with self.assertRaisesRegex(ValueError, "must increase"):
            protocol.evaluate_curve(learner.stepper(learner.omega), tasks, 0.3, [2, 1])

    def test_compare_adds_curve_rows_and_keys_the_cache_by_them(self):
        from efficientlab_tf.config import Omega

        v, model, calls, eval_fn = counting_model()
        advanced = []

        def start_fn(qi, qm):
            return tf.constant(0), v + 0.0

        def advance_fn(si, sm, qi, qm, state, lr, first, steps, seed):
            advanced.append((int(first), int(steps)))
            return state, v + 0.01 * tf.cast(first + steps, tf.float32)

        cache = tempfile.mkdtemp()
        inits = [("a", lambda: v.assign(0.3))]

        def run(steps):
            calls.clear()
            advanced.clear()
            return compare.compare_inits(
                eval_fn, model, inits, [_task([[[1.0]]])], Omega(steps=5),
                random_factor=0, cache_dir=cache,
                curve=((start_fn, advance_fn), steps) if steps else None)

        rows = run((0, 2, 10))
        self.assertEqual([r["name"] for r in rows],
                         ["a", "a, no adaptation", "a [after 0 steps]",
                          "a [after 2 steps]", "a [after 10 steps]"])
        self.assertAllClose([r["mean_iou"] for r in rows[2:]], [0.3, 0.32, 0.4])
        self.assertEqual(advanced, [(0, 2), (2, 8)])  # Jumps, no step twice.
        self.assertEqual(compare.curve_rows(rows), {"a": rows[2:]})
        self.assertLen(run((0, 2, 10)), 5)
        self.assertEqual(calls + advanced, [])  # Kept rows reused.
        run((0, 3))
        self.assertEqual(advanced, [(0, 3)])  # Other steps: scored again.

    def test_steps_to_reach_the_reference_by_hand(self):
        def curve(init, values, per_task=None):
            return [{"name": compare.row_name(init, compare.curve_variant(s)),
                     "init": init, "variant": compare.curve_variant(s), "steps": s,
                     "mean_iou": m, "per_task": per_task or [m, m]}
                    for s, m in zip((0, 1, 5), values)]
        ref = curve("joint", (0.2, 0.4, 0.5), per_task=None)
        # meta reaches joint's 5-step 0.5 after 1 step: per task (0.45,
        # 0.55) - (0.5, 0.5) = (-0.05, +0.05): mean 0, sd 0.05, CI 0.069.
        meta = curve("meta", (0.3, 0.5, 0.6))
        meta[1]["per_task"] = [0.45, 0.55]
        slow = curve("slow", (0.1, 0.2, 0.3))
        text = compare.steps_to_reach({5: ref + meta + slow}, "joint")
        lines = text.splitlines()
        self.assertEqual(lines[0], "| initialization | 5-shot: steps to 0.500 "
                         "(`joint` after 5) |")
        self.assertEqual(lines[2], "| joint | 5 (0.500, +0.000 ± 0.000) |")
        self.assertEqual(lines[3], "| meta | 1 (0.500, +0.000 ± 0.069) |")
        self.assertEqual(lines[4], "| slow | > 5 (0.300 after 5) |")
        section = compare.curve_section({5: ref + meta + slow}, "joint")
        self.assertIn("5-shot after 1 steps", section)
        self.assertIn("| meta | 0.300 (+0.100 ± 0.000) | 0.500 (+0.100 ± 0.069) |",
                      section)
        self.assertEqual(compare.curve_section({5: ref[:0] + [
            {"name": "x", "init": "x", "variant": "", "steps": 5,
             "mean_iou": 0.1, "per_task": [0.1]}]}, "x"), "")
