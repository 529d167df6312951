"""bench/gpu_check.py runs (here on CPU, at a tiny size) before anyone spends
a device loan on it, and writes the format docs/scale.md documents."""

import json
import os
import subprocess
import sys
import tempfile

import pytest

from tests import helpers


def gpu_check(out, *args):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="-1", TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run(
        [sys.executable, os.path.join(helpers.ROOT, "bench", "gpu_check.py"),
         f"--out={out}", "--image_size=32", "--meta_batch=1", "--train_shots=4",
         "--inner_iters=2", "--inner_batch=2", "--timed_steps=1",
         "--eval_repeats=1", *args],
        capture_output=True, text=True, timeout=600, env=env)


@pytest.mark.slow  # A process that builds EfficientNet-B0.
def test_tiny_run_writes_the_documented_json_and_table():
    out = tempfile.mkdtemp()
    proc = gpu_check(out, "--modes=fomaml")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.load(open(os.path.join(out, "gpu_check.json")))
    assert result["device"].startswith("CPU")
    assert not result["stopped_early"]
    (row,) = result["modes"]
    assert row["mode"] == "fomaml" and row["finite"]
    assert row["first_step_s"] > row["step_s"] > 0
    assert row["peak_gpu_mib"] is None  # No GPU here.
    e = result["eval"]
    assert e["omega"]["lr"] == 0.005 and e["shots"] == 5
    assert e["projected_protocol_min_per_shot_count"] == pytest.approx(
        e["task_s"] * 480 / 60, abs=0.01)
    table = open(os.path.join(out, "gpu_check.md")).read()
    assert "| fomaml |" in table and "240 x 2 protocol" in table

    # A deadline already past: no mode starts, and what is known is written.
    late = tempfile.mkdtemp()
    proc = gpu_check(late, "--modes=fomaml,reptile", "--deadline_s=0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.load(open(os.path.join(late, "gpu_check.json")))
    assert result["stopped_early"] and result["modes"] == [] and result["eval"] is None
    assert "stopped early" in open(os.path.join(late, "gpu_check.md")).read()


@pytest.mark.slow  # Starts a process.
def test_unknown_mode_is_refused():
    proc = gpu_check(tempfile.mkdtemp(), "--modes=fomaml,fp8")
    assert proc.returncode != 0
    assert "unknown ['fp8']" in proc.stderr
