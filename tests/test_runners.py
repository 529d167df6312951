"""Every mode of run_meta.py, called in-process with a config (no flags)."""

import csv
import dataclasses
import glob
import json
import os
import tempfile

import numpy as np
import tensorflow as tf
import pytest

from efficientlab_tf import runners
from efficientlab_tf import summaries
from efficientlab_tf.config import Omega
from efficientlab_tf.evaluation import features
from efficientlab_tf.evaluation import uho as uho_lib
from efficientlab_tf.experiment import Experiment
from efficientlab_tf.experiment import load_model_weights
from tests import helpers


def model():
    return helpers.tiny_efficientlab(bn_mode="batch")


@pytest.mark.slow  # Over 7 s on the 2-core VM: not in the fast tier.
class RunnersTest(tf.test.TestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.run_dir = tempfile.mkdtemp()
        cls.base = helpers.with_(helpers.tiny_experiment(cls.run_dir, meta_iters=2),
                         eval={"shots_list": (1, 2), "draws": 1})
        cls.results = runners.run(cls.base, model=model())

    def mode(self, mode, **sections):
        run = {"mode": mode, "workdir": tempfile.mkdtemp(), **sections.pop("run", {})}
        return helpers.with_(self.base, run=run, **sections)

    def test_train_writes_results_and_the_whole_config(self):
        self.assertEqual(self.results["step"], 2)
        self.assertIn("meta_test", self.results)
        with open(os.path.join(self.run_dir, "config.json")) as f:
            stored = json.load(f)
        self.assertEqual(stored, json.loads(json.dumps(dataclasses.asdict(self.base))))
        for section in ("uho", "compare", "fpk", "convert", "export"):
            self.assertIn(section, stored)

    def test_evaluate_and_the_omega_batch_size_reaches_it(self):
        # The same tasks scored with omega batch size 1 and 2 (omega.json
        # from UHO carries it): different numbers, each equal to adapting
        # directly with that omega.
        scores = {}
        for batch in (1, 2):
            config = self.mode("evaluate", run={"init_from": self.run_dir})
            omega_file = os.path.join(config.run.workdir, "omega.json")
            with open(omega_file, "w") as f:
                json.dump({"lr": 0.05, "steps": 3, "batch_size": batch}, f)
            config = config.with_eval_omega(
                Omega.from_file(omega_file, config.eval_omega), omega_file)
            summary = runners.run(config, model=model())
            self.assertEqual(summary["omega"]["batch_size"], batch)
            scores[batch] = summary["1-shot"]["mean_iou"], summary["2-shot"]["mean_iou"]
            # Independently: the experiment's own evaluation with that omega.
            exp = Experiment(config, model())
            load_model_weights(exp.model, self.run_dir)
            tasks = [t for _, t in exp.source.class_tasks(
                "test", 2, config.data.query_shots, config.eval.seed, 1)]
            direct = exp.evaluate(tasks, Omega(0.05, 3, batch, "sgd"))
            self.assertAllClose(direct["mean_iou"], scores[batch][1], atol=1e-6)
        self.assertNotAllClose(scores[1][1], scores[2][1])

    def test_compare_and_merge(self):
        steps = self.base.eval_omega.steps
        config = self.mode("compare", compare={"runs": (self.run_dir,),
                                               "curve_steps": (0, 1, steps)})
        tables = runners.run(config, model=model())
        names = [r["name"] for r in tables[1]]
        name = os.path.basename(self.run_dir)
        self.assertIn(name, names)
        self.assertIn("random init, 10x steps", names)
        # The curve's ends are the rows scored by adapting from scratch.
        by_name = {r["name"]: r["per_task"] for r in tables[1]}
        self.assertAllClose(by_name[f"{name} [after 0 steps]"],
                            by_name[f"{name}, no adaptation"], atol=1e-5)
        self.assertAllClose(by_name[f"{name} [after {steps} steps]"],
                            by_name[name], atol=1e-5)
        self.assertTrue(os.path.isfile(os.path.join(config.run.workdir, "curve.png")))
        merge = self.mode("compare_merge", compare={
            "runs": (config.run.workdir, config.run.workdir)})
        merged = runners.run(merge)
        row = next(r for r in merged[2] if r["name"] == "random init")
        self.assertLen(row["per_task"], 2 * len(tables[2][0]["per_task"]))
        # summary.md: one line per init; the run's minutes are its own
        # (the median over the two identical folds).
        with open(os.path.join(merge.run.workdir, "summary.md")) as f:
            text = f.read()
        minutes = summaries.total_training_minutes(self.run_dir)
        name = os.path.basename(self.run_dir)
        line = next(x for x in text.splitlines() if x.startswith(f"| {name} |"))
        self.assertTrue(line.endswith(f"| {minutes:.0f} |"), line)
        self.assertIn("| random init |", text)
        self.assertIn("#### Adaptation curve", text)
        self.assertIn(f"1-shot after {steps} steps", text)
        self.assertTrue(os.path.isfile(os.path.join(merge.run.workdir, "curve.png")))

    def test_comparisons_sharing_a_rows_dir_reuse_the_first_runs_rows(self):
        # A comparison of the first runs, then one of more in another
        # workdir: the shared rows are read back, not scored again (a kept
        # row altered on disk comes back altered), the new run is scored.
        rows_dir = tempfile.mkdtemp()
        name = os.path.basename(self.run_dir)
        first = self.mode("compare", compare={"runs": (self.run_dir,),
                                              "rows_dir": rows_dir},
                          eval={"shots_list": (2,)})
        scored = runners.run(first, model=model())[2]
        # <index>_<name>_<context digest>.json (compare.compare_inits).
        (kept,) = glob.glob(os.path.join(rows_dir, "2shot", f"1_{name}_*.json"))
        with open(kept) as f:
            data = json.load(f)
        data["rows"][0]["per_task"] = [0.123] * len(data["rows"][0]["per_task"])
        with open(kept, "w") as f:
            json.dump(data, f)
        self.assertFalse(os.path.exists(os.path.join(first.run.workdir, "rows")))
        more = self.mode("compare", compare={"runs": (self.run_dir, self.run_dir),
                                             "rows_dir": rows_dir},
                         eval={"shots_list": (2,)})
        rows = [r for r in runners.run(more, model=model())[2] if r["name"] == name]
        self.assertLen(rows, 2)
        self.assertAllClose(rows[0]["per_task"], [0.123] * len(rows[0]["per_task"]))
        original = next(r for r in scored if r["name"] == name)
        self.assertAllClose(rows[1]["per_task"], original["per_task"], atol=1e-6)
        self.assertLen(glob.glob(os.path.join(rows_dir, "2shot", f"2_{name}_*.json")), 1)

    def test_compare_procedures_clustering_and_own_omega(self):
        # Every init is also scored with the last layer only, the prototype
        # head and (the run) its own omega; each row equals scoring the
        # loaded run directly with that procedure on the same tasks.
        name = os.path.basename(self.run_dir)
        omega_file = os.path.join(tempfile.mkdtemp(), "omega.json")
        with open(omega_file, "w") as f:
            json.dump({"lr": 0.02, "steps": 2, "batch_size": 1}, f)
        config = self.mode("compare", compare={
            "runs": (self.run_dir,), "procedures": ("head", "prototype"),
            "clustering": True, "omega_files": (f"{name}={omega_file}",)},
            eval={"shots_list": (2,), "draws": 1})
        rows = {r["name"]: r for r in runners.run(config, model=model())[2]}
        exp = Experiment(config, model())
        load_model_weights(exp.model, self.run_dir)
        tasks = exp.eval_tasks("test", shots=2)
        omega = config.eval_omega
        head = exp.evaluate(tasks, dataclasses.replace(omega, scope="head"))
        self.assertAllClose(rows[f"{name} [head]"]["per_task"], head["per_task"],
                            atol=1e-6)
        own = exp.evaluate(tasks, Omega(0.02, 2, 1, "sgd"))
        self.assertAllClose(rows[f"{name} [own omega]"]["per_task"],
                            own["per_task"], atol=1e-6)
        self.assertEqual(rows[f"{name} [own omega]"]["steps"], 2)
        proto = rows[f"{name} [prototype]"]
        self.assertEqual(proto["steps"], 0)
        self.assertNotAllClose(proto["per_task"], rows[name]["per_task"])
        ratio = features.clustering_summary(exp.model, tasks)
        self.assertAllClose(rows[name]["clustering_ratio"],
                            ratio["clustering_ratio"], rtol=1e-5)
        self.assertIn("R_FC", open(os.path.join(config.run.workdir,
                                                "compare_2shot.md")).read())
        with self.assertRaisesRegex(ValueError, "not compared"):
            runners.run(helpers.with_(config, compare={"omega_files": (f"x={omega_file}",)}),
                        model=model())

    def test_uho_without_weights_says_which_flag_to_pass(self):
        config = self.mode("uho", run={"init_from": ""})
        with self.assertRaisesRegex(FileNotFoundError,
                                    "holds no checkpoint.*--init_from=random"):
            runners.run(config, model=model())

    def test_uho_writes_omega_and_lr_sweep_writes_the_curve(self):
        uho = {"samples": 2, "rounds": 2, "tasks": 2, "steps_min": 1,
               "steps_max": 3, "sweep_points": 2}
        config = self.mode("uho", run={"init_from": self.run_dir}, uho=uho)
        best = runners.run(config, model=model())
        with open(os.path.join(config.run.workdir, "omega.json")) as f:
            omega = json.load(f)
        with open(os.path.join(config.run.workdir, "uho_trials.csv")) as f:
            top = max(csv.DictReader(f), key=lambda r: float(r["mean_iou"]))
        self.assertEqual(best, omega)
        self.assertEqual(omega["steps"], int(top["best_steps"]))
        # UHO searched the batch size among those that fit the shots.
        self.assertEqual(omega["batch_size"], int(top["batch_size"]))
        self.assertIn(omega["batch_size"],
                      uho_lib.candidate_batch_sizes(config.eval.shots))
        sweep = self.mode("lr_sweep", run={"init_from": self.run_dir}, uho=uho)
        rows = runners.run(sweep, model=model())
        self.assertAllClose([r["lr"] for r in rows], [0.005, 0.5])
        self.assertTrue(os.path.exists(os.path.join(sweep.run.workdir, "lr_sweep.png")))

    def test_fpk(self):
        config = self.mode("fpk", fpk={"shots": (1, 2), "iters": (1, 2),
                                       "tasks": 2, "repeats": 1, "query": 2},
                           compare={"runs": (self.run_dir,)})
        rows = runners.run(config, model=model())
        self.assertEqual([(r["init"], r["k"]) for r in rows],
                         [("random init", 1), ("random init", 2),
                          (os.path.basename(self.run_dir), 1),
                          (os.path.basename(self.run_dir), 2)])
        self.assertTrue(os.path.exists(os.path.join(config.run.workdir, "fpk.md")))

    def test_export_and_adapt(self):
        export_dir = os.path.join(tempfile.mkdtemp(), "served")
        out = runners.run(self.mode("export", run={"init_from": self.run_dir},
                                    export={"export_dir": export_dir}),
                          model=model())
        self.assertEqual(out["saved_model"], os.path.join(export_dir, "1"))
        folder = os.path.join(helpers.make_tree(classes=("cat",), pairs=3), "cat")
        adapted = runners.run(self.mode("adapt", run={"init_from": self.run_dir},
                                        export={"export_dir": export_dir,
                                                "adapt_data": folder}),
                              model=model())
        self.assertEqual(adapted["saved_model"], os.path.join(export_dir, "2"))
        self.assertEqual(adapted["examples"], 3)
        loaded = tf.saved_model.load(adapted["saved_model"])
        self.assertIn("few_shot", loaded.signatures)

    def test_convert(self):
        root = helpers.make_tree(pairs=3)
        shards = os.path.join(tempfile.mkdtemp(), "shards")
        config = self.mode("convert",
                           data={"dataset": "fss1000", "data_dir": root},
                           convert={"shard_dir": shards, "num_shards": 2})
        index = runners.run(config)
        self.assertEqual(index["examples"], 9)
        self.assertEqual(sorted(os.listdir(shards)), [
            "shard-00000-of-00002.tfrecord", "shard-00001-of-00002.tfrecord",
            "shards.json"])

    def test_imagenet_check_on_one_photo(self):
        from efficientlab_tf.pretrained import lite
        import importlib.util

        if importlib.util.find_spec(lite.PACKAGE) is None:
            self.skipTest("needs the [pretrained] extra (CI installs it)")
        realfss = os.path.join(os.path.dirname(os.path.dirname(
            os.path.abspath(__file__))), "..", "shared", "data", "realfss-train")
        if not os.path.isdir(realfss):
            self.skipTest("needs ../shared/data/realfss-train beside the checkout")
        root = tempfile.mkdtemp()
        os.makedirs(os.path.join(root, "dog"))
        for ext in ("jpg", "png"):
            src = os.path.join(realfss, "dog", f"1.{ext}")
            with open(src, "rb") as f, open(os.path.join(root, "dog", f"1.{ext}"), "wb") as g:
                g.write(f.read())
        config = self.mode("imagenet_check",
                           model={"encoder": "efficientnet_lite0",
                                  "encoder_weights": "imagenet", "image_size": 224},
                           data={"dataset": "fss1000", "data_dir": root})
        summary = runners.run(config)
        self.assertEqual(summary["images"], 1)
        self.assertEqual(summary["hits"], 1)  # A dog's photo is a dog.

    def test_refused_in_process_without_flags(self):
        with self.assertRaisesRegex(ValueError, "needs --compare_runs"):
            runners.run(self.mode("compare"))
        with self.assertRaisesRegex(ValueError, "needs --adapt_data"):
            runners.run(self.mode("adapt"))
        np.testing.assert_equal(self.base.run.mode, "train")


class FlagsReachConfigTest(tf.test.TestCase):

    def test_every_flag_is_read_into_the_config(self):
        from absl import flags as absl_flags

        from efficientlab_tf import cli
        from efficientlab_tf.cli import parse

        cli.define_flags()
        real = absl_flags.FLAGS
        if not real.is_parsed():
            real(["run_meta.py"])
        names = parse.package_flag_names(real)
        self.assertGreater(len(names), 80)
        read = set()

        class Recording:
            def __getattr__(self, name):
                read.add(name)
                return getattr(real, name)

            def __getitem__(self, name):
                read.add(name)
                return real[name]

        parse.config_from_flags(Recording())
        self.assertEqual(sorted(set(names) - read), [])
