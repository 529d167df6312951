"""Issue 28, round 3 of the hostile probe: each case failed before the fix.

(1, 5: test_fss1000; 2: test_lite; 7, 11: test_serving; 8, 9: test_client.)
"""

import contextlib
import json
import math
import os
import resource
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from efficientlab_tf import config as config_lib
from efficientlab_tf import storage
from efficientlab_tf import preflight
from efficientlab_tf import training
from efficientlab_tf import workdir as workdir_lib
from efficientlab_tf.config import ExportConfig
from efficientlab_tf.config import Omega
from efficientlab_tf.data import tfrecords
from efficientlab_tf.export import saved_model
from efficientlab_tf.segmentation import build_adapter
from tests import helpers


@contextlib.contextmanager
def file_size_limit(nbytes):
    """RLIMIT_FSIZE for this process: a write past `nbytes` fails with EFBIG
    ("File too large"), as on a full disk. Python ignores SIGXFSZ, so the
    process lives to report it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def _entries(root):
    from efficientlab_tf.data import fss1000

    classes = fss1000.scan(root)
    return [(name, "", i, m, -1) for name in sorted(classes) for i, m in classes[name]]


# --- 3: symlinks ------------------------------------------------------------------

def test_a_symlinked_lock_file_is_refused_and_its_target_kept(tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    workdir = tmp_path / "run"
    workdir.mkdir()
    os.symlink(target, workdir / workdir_lib.LOCK_FILE)
    with pytest.raises(workdir_lib.WorkdirError, match="not a regular file"):
        with workdir_lib.lock(str(workdir)):
            pass
    assert target.read_text() == "keep me"
    os.remove(workdir / workdir_lib.LOCK_FILE)
    os.mkfifo(workdir / workdir_lib.LOCK_FILE)
    with pytest.raises(workdir_lib.WorkdirError, match="not a regular file"):
        with workdir_lib.lock(str(workdir)):
            pass


def test_shards_are_written_under_unpredictable_names(tmp_path):
    """The old `.tmp-shard-00000-of-00002.tfrecord` names could be planted
    as symlinks (TFRecordWriter follows them): every predictable name now
    stays untouched, and the planted link's target too."""
    root = helpers.make_tree(classes=("cat", "dog"), pairs=2)
    target = tmp_path / "precious.bin"
    target.write_bytes(b"keep me")
    out = tmp_path / "shards"
    out.mkdir()
    for i in range(2):
        os.symlink(target, out / f".tmp-shard-{i:05d}-of-00002.tfrecord")
    index = tfrecords.write_entries(_entries(root), str(out), num_shards=2)
    assert index["examples"] == 4
    assert target.read_bytes() == b"keep me"
    written = sorted(p for p in os.listdir(out) if not p.startswith(".tmp-shard-0"))
    assert written == ["shard-00000-of-00002.tfrecord",
                       "shard-00001-of-00002.tfrecord", "shards.json"]


# --- 4, 10: values that passed validation ------------------------------------------

@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_omegas_are_refused_where_they_are_made(bad, tmp_path):
    with pytest.raises(ValueError, match="omega lr. must be a finite number"):
        Omega(lr=bad)
    with pytest.raises(ValueError, match="finite"):
        config_lib.EvalConfig(inner_lr=bad)
    path = tmp_path / "omega.json"
    path.write_text(json.dumps({"lr": bad, "steps": 3}))  # JSON NaN/Infinity.
    with pytest.raises(ValueError, match=str(path)):
        Omega.from_file(str(path), Omega())
    with pytest.raises(ValueError, match="max_request_lr"):
        ExportConfig(max_request_lr=bad)


def test_the_exported_omega_must_be_within_the_request_limits(tmp_path):
    model = helpers.tiny_efficientlab()
    adapter = build_adapter(model, Omega(batch_size=2))
    with pytest.raises(ValueError, match="exceeds the request limits"):
        saved_model.export_saved_model(
            model, str(tmp_path / "m"), 32, few_shot_adapter=adapter,
            omega=Omega(lr=2.0, steps=3), limits=ExportConfig(max_request_lr=1.0))
    with pytest.raises(ValueError, match="--max_request_steps=10"):
        saved_model.export_saved_model(
            model, str(tmp_path / "m"), 32, few_shot_adapter=adapter,
            omega=Omega(lr=0.1, steps=11), limits=ExportConfig(max_request_steps=10))
    assert not os.path.exists(tmp_path / "m")


@pytest.mark.parametrize("size", [100000, 1056, 0, 100])
def test_image_size_is_bounded(size):
    with pytest.raises(ValueError, match=r"`--image_size` must be a multiple of 32 "
                       r"in \[32, 1024\]"):
        config_lib.ModelConfig(image_size=size)
    assert config_lib.ModelConfig(image_size=1024).image_size == 1024


# --- 6: write failures ---------------------------------------------------------------

def test_a_full_disk_during_convert_is_one_line_and_leaves_nothing(tmp_path):
    root = helpers.make_tree(classes=("cat", "dog"), pairs=3)
    out = tmp_path / "shards"
    with file_size_limit(600):  # Each shard needs several KiB.
        with pytest.raises(storage.WriteError, match=f"cannot write TFRecord shards to "
                           f"'{out}': .*File too large"):
            tfrecords.write_entries(_entries(root), str(out), num_shards=2)
    assert os.listdir(out) == []


def test_a_full_disk_during_export_is_one_line_and_leaves_nothing(tmp_path):
    model = helpers.tiny_efficientlab()
    base = tmp_path / "efficientlab"
    with file_size_limit(4096):
        with pytest.raises(storage.WriteError, match=f"cannot write the SavedModel to "
                           f"'{base}/1'.*File too large"):
            saved_model.export_saved_model(model, str(base), 32, warmup=False)
    assert os.listdir(base) == []


def test_unwritable_output_folders_are_found_at_second_0(tmp_path):
    """A folder that cannot be created or written (here a file in the way;
    root ignores permission bits) is refused before any work."""
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "checkpoints").write_text("a file, not a folder")
    config = helpers.tiny_experiment(str(workdir))
    with pytest.raises(storage.WriteError, match="cannot write checkpoints to "
                       f"'{workdir}/checkpoints'.*checked before starting"):
        preflight.check_outputs(config, "train")
    export = tmp_path / "file"
    export.write_text("x")
    config = config_lib.ExperimentConfig(export=ExportConfig(
        export_dir=str(export / "efficientlab")))
    with pytest.raises(storage.WriteError, match="cannot write the SavedModel"):
        preflight.check_outputs(config, "export")


@pytest.mark.slow  # Over 7 s on the 2-core VM: not in the fast tier.
def test_a_checkpoint_that_cannot_be_written_is_one_line(tmp_path):
    """The checkpoint folder disappears after the run started (a full or
    unmounted disk): the save fails with the path and what was written."""
    config = helpers.tiny_experiment(str(tmp_path / "run"), meta_iters=2)
    prepared = training.prepare(config, helpers.tiny_efficientlab(bn_mode="batch"))
    folder = os.path.join(config.run.workdir, "checkpoints")
    shutil.rmtree(folder, ignore_errors=True)
    with open(folder, "w") as f:
        f.write("in the way")
    with pytest.raises(storage.WriteError, match=f"cannot write checkpoint 2 to "
                       f"'{folder}'"):
        training.run(prepared)


@pytest.mark.slow  # Over 7 s on the 2-core VM: not in the fast tier.
def test_the_cli_reports_a_write_failure_in_one_line(tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "checkpoints").write_text("in the way")
    proc = subprocess.run(
        [sys.executable, "run_meta.py", f"--workdir={workdir}", "--meta_iters=1",
         "--image_size=32"], capture_output=True, text=True, timeout=300,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        env=dict(os.environ, CUDA_VISIBLE_DEVICES="-1", TF_CPP_MIN_LOG_LEVEL="3"))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "run_meta.py: error: cannot write checkpoints to")


# --- 12: litter of killed processes -----------------------------------------------------

def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_litter_of_killed_runs_is_removed_at_the_next_start(tmp_path):
    dead, host = _dead_pid(), storage.temp_prefix("")[:8]
    base = tmp_path / "efficientlab"
    stale_export = base / f"{saved_model.EXPORT_TMP}{host}.{dead}-abc"
    live_export = base / f"{saved_model.EXPORT_TMP}{host}.{os.getpid()}-xyz"
    other_host = base / f"{saved_model.EXPORT_TMP}00000000.{dead}-abc"
    for folder in (stale_export, live_export, other_host):
        (folder / "variables").mkdir(parents=True)
    saved_model.export_saved_model(helpers.tiny_efficientlab(), str(base), 32,
                                   warmup=False)
    assert sorted(os.listdir(base)) == sorted(["1", live_export.name, other_host.name])

    shards = tmp_path / "shards"
    shards.mkdir()
    stale_shard = shards / f"{tfrecords.SHARD_TMP}{host}.{dead}-q.tfrecord"
    stale_shard.write_bytes(b"half")
    tfrecords.write_entries(_entries(helpers.make_tree(pairs=2)), str(shards), num_shards=1)
    assert not stale_shard.exists()

    checkpoints = tmp_path / "run" / "checkpoints"
    (checkpoints / "ckpt-3_temp").mkdir(parents=True)
    (checkpoints / "ckpt-3_temp" / "part-0").write_bytes(b"half")
    training.prepare(helpers.tiny_experiment(str(tmp_path / "run")),
                     helpers.tiny_efficientlab(bn_mode="batch"))
    assert not (checkpoints / "ckpt-3_temp").exists()


def test_scan_and_training_see_the_same_decoded_mask():
    """One decoder: the scan's target count equals the pipeline's."""
    from efficientlab_tf.data import decode
    from efficientlab_tf.data import validate

    root = helpers.make_tree(classes=("cat",), pairs=1)
    image, mask = os.path.join(root, "cat", "1.jpg"), os.path.join(root, "cat", "1.png")
    _, target = validate.check_pair(image, mask)
    decoded = decode.decode_mask(tf.io.read_file(mask), 32)
    assert target == int(np.sum(decoded.numpy()))
