"""run_meta.py end to end and its answers to bad input."""

import json
import os
import subprocess
import sys
import tempfile

import pytest
import tensorflow as tf
from absl.testing import parameterized

from efficientlab_tf import config as config_lib
from tests import helpers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read_flagfile(path):
    values = {}
    for line in open(path):
        line = line.strip()
        if line.startswith("--") and not line.startswith("--flagfile"):
            name, _, value = line[2:].partition("=")
            values[name] = value
    return values


class FlagfileTest(tf.test.TestCase):

    def test_demo_flagfile_matches_flag_defaults(self):
        # `python run_meta.py --algo=fomaml` must run exactly the demo.
        demo = config_lib.ExperimentConfig.demo()
        flags = read_flagfile(os.path.join(ROOT, "flags/synthetic_demo.flags"))
        self.assertEqual(int(flags["image_size"]), demo.model.image_size)
        self.assertEqual(flags["bn_mode"], demo.model.bn_mode)
        self.assertEqual(float(flags["inner_lr"]), demo.meta.inner_lr)
        self.assertEqual(float(flags["meta_step"]), demo.meta.meta_step)
        self.assertEqual(float(flags["meta_step_final"]),
                         demo.meta.meta_step_final)
        self.assertEqual(int(flags["meta_iters"]), demo.meta.meta_iters)
        self.assertEqual(int(flags["eval_tasks"]), demo.eval.tasks)
        self.assertEqual(int(flags["eval_every"]), demo.eval.every)

    def test_best_realfss_flagfile_is_the_measured_study_row(self):
        # Its header reports fomaml_jointlong's figures: the flags must be
        # that row's training flags in docs/studies/realfss34.sh.
        flags = read_flagfile(os.path.join(ROOT, "flags/realfss_best.flags"))
        script = open(os.path.join(ROOT, "docs/studies/realfss34.sh")).read()
        row = next(line.strip().strip('"') for line in script.splitlines()
                   if line.strip().startswith('"fomaml_jointlong|'))
        study = dict(arg[2:].partition("=")[::2]
                     for arg in row.split("|", 1)[1].split())
        self.assertEqual(study.pop("init_from"), "@/joint_joint")
        self.assertTrue(flags.pop("init_from").endswith("/joint_joint"))
        flags.pop("workdir")
        self.assertEqual(flags, study)
        joint = next(line for line in script.splitlines()
                     if line.strip().startswith('"joint_joint|'))
        header = open(os.path.join(ROOT, "flags/realfss_best.flags")).read()
        for arg in joint.strip().strip('"').split("|", 1)[1].split():
            if not arg.startswith("--init_from"):
                self.assertIn(arg, header)

    def test_paper_flagfile_has_the_paper_values(self):
        flags = read_flagfile(os.path.join(ROOT, "flags/fss1000_fomaml_5shot.flags"))
        paper = config_lib.MetaConfig()
        self.assertEqual(float(flags["inner_lr"]), paper.inner_lr)
        self.assertEqual(int(flags["meta_batch"]), paper.meta_batch)
        self.assertEqual(int(flags["meta_iters"]), paper.meta_iters)
        self.assertEqual(float(flags["meta_step_final"]), paper.meta_step_final)


@pytest.mark.slow
class SmokeRunTest(tf.test.TestCase):

    def test_smoke_flagfile_writes_flags_events_and_saved_model(self):
        workdir = tempfile.mkdtemp()
        proc = helpers.run_meta("--flagfile=flags/synthetic_smoke.flags",
                        f"--workdir={workdir}")
        self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
        flags = read_flagfile(os.path.join(workdir, "flags.txt"))
        self.assertEqual(flags["meta_iters"], "2")
        self.assertEqual(flags["workdir"], workdir)
        self.assertTrue(os.listdir(os.path.join(workdir, "train")))
        self.assertTrue(os.path.exists(
            os.path.join(workdir, "saved_model", "1", "saved_model.pb")))
        self.assertIn("step 2/2", proc.stderr)
        # The written flagfile repeats the run: it resumes at step 2 and
        # exports version 2.
        proc = helpers.run_meta(f"--flagfile={workdir}/flags.txt")
        self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
        self.assertIn("Resumed from", proc.stderr)
        self.assertTrue(os.path.exists(os.path.join(workdir, "saved_model", "2")))

        # --mode=export runs in-process in tests/test_runners.py
        # (test_export_and_adapt), its signatures in tests/test_export.py, and
        # the installed package exports on resume (tests/test_installed.py):
        # one process fewer here keeps CI inside 15 minutes.
        # --mode=adapt and --mode=uho run in-process in tests/test_runners.py
        # (export_and_adapt, uho_writes_omega...): every process here costs a
        # B0 build and its traces, and CI has 15 minutes.
        # The FSS-1000 evaluation protocol on the trained run.
        proc = helpers.run_meta("--flagfile=flags/synthetic_smoke.flags", "--mode=evaluate",
                        f"--workdir={workdir}", "--eval_shots_list=1,2",
                        "--eval_draws=2", "--test_classes=4", "--eval_pictures=2")
        self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
        import csv
        import json
        with open(os.path.join(workdir, "eval", "eval_1shot.csv")) as f:
            rows = list(csv.DictReader(f))
        self.assertEqual(len(rows), 4)  # one row per meta-test class
        with open(os.path.join(workdir, "eval", "summary.json")) as f:
            self.assertEqual(json.load(f)["2-shot"]["tasks"], 8)
        pictures = [f for f in os.listdir(os.path.join(workdir, "eval"))
                    if f.startswith("pictures_1shot")]
        self.assertEqual(len(pictures), 2)
        # lr_sweep and fpk run in-process in tests/test_runners.py (their
        # flags reaching the config: tests/test_config.py); each process here
        # costs a B0 build and its traces.
        proc = helpers.run_meta("--mode=adapt", f"--workdir={workdir}",
                        "--adapt_data=/no/such/class")
        self.assertNotEqual(proc.returncode, 0)
        self.assertIn("/no/such/class", proc.stderr)
        self.assertNotIn("Traceback", proc.stderr)


class BadInputTest(tf.test.TestCase, parameterized.TestCase):

    @parameterized.parameters(
        (["--algo=maml2"], "algo"),
        (["--encoder=resnet50"], "encoder"),
        (["--image_size=100"], "multiple of 32"),
        (["--encoder_weights=/nonexistent/w.h5"], "/nonexistent/w.h5"),
        (["--foml_tail=10"], "foml_tail"),
        (["positional"], "positional"),
        (["--data_dir=/tmp"], "--dataset=synthetic reads no files"),
        (["--flagfile=flags/fss1000_fomaml_5shot.flags",
          "--data_dir=/no/such/fss1000"], "/no/such/fss1000"),
    )
    def test_one_line_error_and_non_zero_exit(self, args, message):
        proc = helpers.run_meta(*args, f"--workdir={tempfile.mkdtemp()}",
                        "--meta_iters=1")
        self.assertNotEqual(proc.returncode, 0)
        self.assertIn(message, proc.stderr)
        self.assertNotIn("Traceback", proc.stderr)

    def test_workdir_that_is_a_file(self):
        path = tempfile.mkstemp()[1]
        proc = helpers.run_meta(f"--workdir={path}", "--meta_iters=1")
        self.assertNotEqual(proc.returncode, 0)
        self.assertIn("is not a directory", proc.stderr)
        self.assertNotIn("Traceback", proc.stderr)


@pytest.mark.slow
class KillResumeTest(tf.test.TestCase):

    def test_kill_9_then_resume_reaches_the_final_step(self):
        import json
        import signal
        import time

        workdir = tempfile.mkdtemp()
        args = ["--flagfile=flags/synthetic_smoke.flags", f"--workdir={workdir}",
                "--image_size=32", "--meta_iters=8", "--checkpoint_every=2",
                "--export=false", "--image_every=0"]
        env = dict(os.environ, CUDA_VISIBLE_DEVICES="-1", TF_CPP_MIN_LOG_LEVEL="3")
        proc = subprocess.Popen(
            [sys.executable, os.path.join(ROOT, "run_meta.py"), *args], cwd=ROOT,
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Checkpoint 4 counts once the manager's state file lists it (its
        # .index appears earlier, while it is still being committed).
        state = os.path.join(workdir, "checkpoints", "checkpoint")

        def committed():
            try:
                return '"ckpt-4"' in open(state).read()
            except OSError:
                return False

        deadline = time.time() + 300
        while not committed() and proc.poll() is None:
            self.assertLess(time.time(), deadline, "no checkpoint 4 in 300 s")
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        self.assertFalse(os.path.exists(os.path.join(workdir, "results.json")))
        done = helpers.run_meta(*args)
        self.assertEqual(done.returncode, 0, done.stderr[-3000:])
        resumed = [line for line in done.stderr.splitlines() if "Resumed from" in line]
        self.assertTrue(resumed, done.stderr[-3000:])
        step = int(resumed[0].rsplit("at step ", 1)[1].rstrip("."))
        self.assertGreaterEqual(step, 4)  # at most one interval lost
        with open(os.path.join(workdir, "results.json")) as f:
            self.assertEqual(json.load(f)["step"], 8)


@pytest.mark.slow
class FSS1000FlagfileTest(tf.test.TestCase):

    def test_paper_flagfile_runs_on_a_generated_fss1000_tree(self):

        root = helpers.make_tree(classes=("bus", "cat", "dog", "owl", "fox"), pairs=10)
        shards = os.path.join(tempfile.mkdtemp(), "shards")
        proc = helpers.run_meta("--mode=convert", "--dataset=fss1000", f"--data_dir={root}",
                        f"--shard_dir={shards}", "--num_shards=2",
                        f"--workdir={tempfile.mkdtemp()}")
        self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
        self.assertIn("50 examples, 5 classes", proc.stdout)
        for data_dir in (root, shards):  # folder tree and shards alike
            workdir = tempfile.mkdtemp()
            proc = helpers.run_meta(
                "--flagfile=flags/fss1000_fomaml_5shot.flags", f"--data_dir={data_dir}",
                "--encoder_weights=none", "--image_size=32", "--meta_iters=2",
                "--meta_batch=2", "--inner_iters=2", "--val_classes=1",
                "--eval_tasks=2", "--export=false", "--image_every=0",
                f"--workdir={workdir}")
            self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
            self.assertIn("2 meta-train, 1 meta-val, 2 meta-test", proc.stderr)
            self.assertIn("step 2/2", proc.stderr)
            self.assertTrue(os.path.exists(os.path.join(workdir, "results.json")))


@pytest.mark.slow
class RealDataModesTest(tf.test.TestCase):
    """compare / compare_merge on class folds, PASCAL-5i training and FP-k data."""

    def test_fold_compare_with_trivial_rows_and_merge(self):

        root = helpers.make_tree(classes=("c1", "c2", "c3", "c4", "c5", "c6"), pairs=10)
        small = ["--image_size=32", "--meta_batch=2", "--inner_iters=2",
                 "--eval_tasks=2", "--val_classes=1", "--num_folds=3", "--fold=1",
                 "--encoder_weights=none", "--export=false", "--image_every=0"]
        workdir = tempfile.mkdtemp()
        proc = helpers.run_meta("--flagfile=flags/fss1000_fomaml_5shot.flags",
                        f"--data_dir={root}", "--meta_iters=1", *small,
                        f"--workdir={workdir}")
        self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
        self.assertIn("3 meta-train, 1 meta-val, 2 meta-test", proc.stderr)
        out = tempfile.mkdtemp()
        proc = helpers.run_meta("--flagfile=flags/fss1000_fomaml_5shot.flags",
                        f"--data_dir={root}", "--mode=compare", *small,
                        f"--compare_runs={workdir}", "--eval_shots_list=1,2",
                        f"--workdir={out}")
        self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
        with open(os.path.join(out, "compare_2shot.json")) as f:
            names = [r["name"] for r in json.load(f)]
        self.assertIn("all-foreground", names)
        self.assertTrue(any(n.startswith("centred box (side") for n in names))
        self.assertIn("random init, 10x steps", names)
        self.assertIn(os.path.basename(workdir), names)
        self.assertIn("### 1-shot, 2 meta-test tasks", proc.stdout)
        merged = tempfile.mkdtemp()
        proc = helpers.run_meta("--mode=compare_merge", f"--compare_runs={out},{out}",
                        "--eval_shots_list=2", f"--workdir={merged}")
        self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
        with open(os.path.join(merged, "compare_merged_2shot.json")) as f:
            rows = json.load(f)
        self.assertLen(rows[0]["per_task"], 4)  # 2 tasks x 2 "folds"
        self.assertIn("2 folds, 4 tasks", proc.stdout)

    def test_pascal5i_training_and_fpk_on_generated_trees(self):
        import pathlib

        tmp = pathlib.Path(tempfile.mkdtemp())
        voc, _ = helpers.voc_tree(tmp / "a")
        workdir = tempfile.mkdtemp()
        proc = helpers.run_meta("--flagfile=flags/synthetic_smoke.flags", "--dataset=pascal5i",
                        f"--data_dir={voc}", "--fold=0", "--skip_bad_examples",
                        "--image_size=32", "--train_shots=2", "--foml_tail=1",
                        "--train_query_shots=0", "--eval_shots=1", "--query_shots=1",
                        "--meta_iters=1", "--export=false", "--image_every=0",
                        f"--workdir={workdir}")
        self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
        self.assertIn("PASCAL-5i fold 0", proc.stderr)
        self.assertIn("step 1/1", proc.stderr)
        fss, pascal_dir = helpers.fpk_tree(tmp / "b")
        proc = helpers.run_meta("--flagfile=flags/synthetic_smoke.flags", "--mode=fpk",
                        "--dataset=fpk", f"--data_dir={fss}", f"--pascal_dir={pascal_dir}",
                        "--image_size=32", "--fpk_shots=1,2,50", "--fpk_iters=1,1,1",
                        "--fpk_tasks=5", "--fpk_repeats=1", "--fpk_query=2",
                        f"--workdir={tempfile.mkdtemp()}")
        self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
        self.assertIn("k = [50] need more than the data holds", proc.stdout)
        self.assertIn("'airliner': 6", proc.stdout)
