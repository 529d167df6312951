"""Reliability round 4 (a hostile-but-fair probe): each case failed before
its fix. Items 1-12 of the round, in order."""

import dataclasses
import os
import tempfile

import numpy as np
import pytest
import tensorflow as tf

from efficientlab_tf import training
from tests import helpers
from tests import tf_serving_emulation as emulation


# --- 1: divergence found by an evaluation is the NaN stop, not a traceback ------

@pytest.mark.slow  # Three short trainings (about 25 s each).
@pytest.mark.parametrize("phase,run,every,iters", [
    ("the meta-val image summary", {"image_every": 1}, 0, 2),
    ("meta-validation", {}, 1, 2),
    ("the final meta-test evaluation", {}, 0, 1),  # Without meta-val classes.
])
def test_divergence_seen_by_an_evaluation_stops_training(phase, run, every,
                                                         iters):
    # --inner_lr=1e6: the first step's loss is finite (computed before the
    # update) and so are the exploded weights; the first evaluation after it
    # predicts NaN. Before the fix its check_numerics error escaped as a
    # TensorFlow traceback. (Step 2's loss would be NaN: the final case
    # trains one step.)
    workdir = tempfile.mkdtemp()
    config = helpers.tiny_experiment(workdir, meta_iters=iters, checkpoint_every=100,
                                     export=True, **run)
    config = dataclasses.replace(
        config, meta=dataclasses.replace(config.meta, inner_lr=1e6),
        eval=dataclasses.replace(config.eval, every=every),
        data=dataclasses.replace(config.data, val_classes=4 if iters > 1 else 0))
    with pytest.raises(training.NonFiniteError,
                       match=rf"meta-iteration \d+, {phase}: .*NaN/Inf"):
        helpers.run_training(config)
    assert not os.path.exists(os.path.join(workdir, "results.json"))
    assert not os.path.exists(os.path.join(workdir, "saved_model"))


# --- 3: the GPU extra requires a cuDNN that TensorFlow 2.21 can train with -------

def test_the_gpu_extra_requires_cudnn_9_24():
    # tensorflow[and-cuda] admits nvidia-cudnn-cu12 >= 9.3, and 9.3-9.5 fail
    # TF 2.21's autotuning of the fused conv-bias-activation (docs/scale.md).
    from importlib import metadata

    from packaging.requirements import Requirement

    gpu = [Requirement(r) for r in metadata.requires("efficientlab-tf")
           if 'extra == "gpu"' in r]
    cudnn = [r for r in gpu if r.name == "nvidia-cudnn-cu12"]
    assert cudnn, [str(r) for r in gpu]
    assert not cudnn[0].specifier.contains("9.5.1.17")
    assert not cudnn[0].specifier.contains("9.3.0.75")
    assert cudnn[0].specifier.contains("9.24.0.43")


# --- 6: the API shows its names and its progress ---------------------------------

def test_dir_of_the_package_lists_the_api():
    import efficientlab_tf as el

    names = dir(el)
    for name in ("configure", "train", "load", "Segmenter", "MetaLearner"):
        assert name in names


@pytest.mark.slow  # A short training.
def test_el_train_logs_the_progress_line_with_its_eta(caplog):
    # Outside app.run absl shows warnings only: el.train printed nothing for
    # the whole run before. The records reach caplog's root handler only if
    # the absl logger lets INFO through.
    from absl import logging as absl_logging

    import efficientlab_tf as el

    before = absl_logging.get_verbosity()
    config = helpers.tiny_experiment(tempfile.mkdtemp(), meta_iters=2)
    el.train(config, model=helpers.tiny_efficientlab(bn_mode="batch"))
    lines = [r.getMessage() for r in caplog.records]
    assert any(line.startswith("step 2/2 |") and "ETA" in line for line in lines), lines
    assert absl_logging.get_verbosity() == before  # Restored after the call.


# --- 8 and 11: knobs that wrapped, and config gaps ------------------------------

@pytest.mark.parametrize("knobs,message", [
    # 8: int32/int64 graph constants that wrapped (3e9 -> -1294967296) and
    # made the export refuse every request and fail its own warmup.
    (dict(max_request_steps=3_000_000_000), "--max_request_steps` must be at most 2147483647"),
    (dict(max_request_images=3_000_000_000), "--max_request_images` must be at most 2147483647"),
    (dict(max_request_pixels=2**63), "--max_request_pixels` must be at most 4611686018427387904"),
    (dict(serve_batch_threads=3_000_000_000), "--serve_batch_threads` must be at most 1024"),
    # 11: None for knobs that are not optional failed later (KeyError,
    # TypeError); learned_lr_step had no check; seeds out of range gave a
    # numpy traceback; cpu_devices=3e9 a MemoryError.
    (dict(mode=None), "--mode` must be a string; got None"),
    (dict(meta_iters=None), "--meta_iters` must be an integer; got None"),
    (dict(learned_lr_step=float("nan")), "--learned_lr_step` must be a finite number"),
    (dict(learned_lr_step=float("inf")), "--learned_lr_step` must be a finite number"),
    (dict(learned_lr_step=-1.0), "--learned_lr_step` must be positive"),
    (dict(seed=-1), r"--seed` must be in \[0, 2147483647\]"),
    (dict(seed=2**63), r"--seed` must be in \[0, 2147483647\]"),
    (dict(split_seed=-1), r"--split_seed` must be in \[0, 2147483647\]"),
    (dict(cpu_devices=3_000_000_000), "--cpu_devices` must be at most 256"),
])
def test_out_of_range_knobs_are_refused_by_name(knobs, message):
    import efficientlab_tf as el

    with pytest.raises(ValueError, match=message):
        el.configure("smoke", **knobs)


@pytest.mark.slow  # An export and its warmup.
def test_the_largest_accepted_limits_export_and_serve(tmp_path):
    # The bounds are the graph's: at the bound itself nothing wraps.
    from efficientlab_tf.config import ExportConfig
    from efficientlab_tf.config import INT32_MAX
    from efficientlab_tf.config import Omega
    from efficientlab_tf.export.saved_model import export_saved_model
    from efficientlab_tf.segmentation import build_adapter

    model = helpers.tiny_efficientlab(bn_mode="running")
    limits = ExportConfig(max_request_steps=INT32_MAX, max_request_images=INT32_MAX,
                          max_request_pixels=2**62, serve_batch_size=0)
    path = export_saved_model(model, str(tmp_path / "m"), 32, limits=limits,
                              few_shot_adapter=build_adapter(model, Omega(batch_size=2)),
                              omega=helpers.OMEGA, version=1)
    # Loading replays the export's warmup through every signature, as the
    # model server does (a failing record fails the load).
    servable = emulation.Servable("m", 1, path)
    served = servable.predict("few_shot_omega", {
        "support_images": np.zeros((1, 32, 32, 3), np.uint8),
        "support_masks": np.full((1, 32, 32), 255, np.uint8),
        "query_images": np.zeros((2, 32, 32, 3), np.uint8),
        "lr": np.array([0.01], np.float32), "steps": np.array([2], np.int32)})
    assert served["masks"].shape == (2, 32, 32)


# --- 10: shards follow the umask ------------------------------------------------

@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o027, 0o640)])
def test_shards_follow_the_umask(umask, mode, tmp_path):
    # Since the unpredictable temporary names (mkstemp), shards were 0600:
    # a training job of another user could not read a shared shard folder.
    import stat

    from efficientlab_tf.data import tfrecords

    root = helpers.make_tree(classes=("cat", "dog"), pairs=2)
    old = os.umask(umask)
    try:
        tfrecords.write_shards(root, str(tmp_path / "shards"), num_shards=2)
    finally:
        os.umask(old)
    for name in os.listdir(tmp_path / "shards"):
        got = stat.S_IMODE(os.stat(tmp_path / "shards" / name).st_mode)
        assert got == mode, (name, oct(got))


# --- 9: a crafted .pth may not ask for unbounded memory -------------------------

def _views_of_one_storage(path, entries, side):
    """A legacy torch.save file whose `entries` tensors are all the
    transposed [side, side] view of one side*side float storage (the
    opcodes of tests/torch_writer.py, one storage key shared)."""
    import pickle
    import struct

    from efficientlab_tf.pretrained import torch_legacy
    from tests import torch_writer as w

    storage = w._op_tuple([w._op_string("storage"), w._op_global("torch", "FloatStorage"),
                           w._op_string("k"), w._op_string("cpu"),
                           w._op_int(side * side), b"N"]) + b"Q"
    body = [b"\x80\x02", w._op_global("collections", "OrderedDict"), b")R("]
    for i in range(entries):
        body += [w._op_string(f"t{i}"), w._op_global("torch._utils", "_rebuild_tensor_v2"),
                 w._op_tuple([storage, w._op_int(0),
                              w._op_tuple([w._op_int(side)] * 2),
                              w._op_tuple([w._op_int(1), w._op_int(side)]),
                              b"\x89", w._op_global("collections", "OrderedDict") + b")R"]) + b"R"]
    body.append(b"u.")
    with open(path, "wb") as f:
        for header in (torch_legacy.MAGIC_NUMBER, torch_legacy.PROTOCOL_VERSION,
                       {"little_endian": True}):
            pickle.dump(header, f, protocol=2)
        f.write(b"".join(body))
        pickle.dump(["k"], f, protocol=2)
        f.write(struct.pack("<q", side * side))
        f.write(np.arange(side * side, dtype="<f4").tobytes())
    return str(path)


def test_many_views_of_one_storage_are_refused(tmp_path):
    # 40 transposed views of a 1 MiB storage: 40 MiB asked for from a ~1 MiB
    # file (the round's 3,000 views of 4 MiB asked for 12 GiB).
    from efficientlab_tf.pretrained import torch_legacy

    path = _views_of_one_storage(tmp_path / "views.pth", 40, 512)
    with pytest.raises(torch_legacy.TorchFileError,
                       match=r"would take more than \d+ bytes once read"):
        torch_legacy.load_state_dict(path)
    # Two views fit the budget, and read the transposed values.
    got = torch_legacy.load_state_dict(_views_of_one_storage(tmp_path / "two.pth", 2, 512))
    expected = np.arange(512 * 512, dtype=np.float32).reshape(512, 512).T
    np.testing.assert_array_equal(got["t1"], expected)


# --- 12: resuming with a variable-adding flag names the flag ----------------------

@pytest.mark.parametrize("flag", ["mtl", "learned_lr"])
def test_resuming_with_mtl_or_learned_lr_added_names_the_flag(flag, tmp_path):
    import dataclasses as dc

    from efficientlab_tf import workdir as workdir_lib

    config = helpers.tiny_experiment(str(tmp_path))
    os.makedirs(tmp_path / "checkpoints")
    (tmp_path / "checkpoints" / "checkpoint").write_text('model_checkpoint_path: "ckpt-2"\n')
    (tmp_path / "config.json").write_text(__import__("json").dumps(dc.asdict(config)))
    resumed = dc.replace(config, model=dc.replace(config.model, **{flag: True}))
    with pytest.raises(workdir_lib.WorkdirError,
                       match=rf"--{flag}: stored False, given True.*--flagfile="):
        workdir_lib.check_resumable(str(tmp_path), dc.asdict(resumed))
    workdir_lib.check_resumable(str(tmp_path), dc.asdict(config))  # Same flags: fine.


# --- 7: the error of a synthetic recipe on a folder dataset names the flag --------

def test_too_few_classes_for_the_split_names_val_classes():
    from efficientlab_tf.data import fss1000

    names = [f"c{i}" for i in range(34)]
    with pytest.raises(ValueError, match=r"32 meta-val \(--val_classes=32\).*lower "
                       "--val_classes"):
        fss1000.split_classes(names, 32, 2, 0)
    with pytest.raises(ValueError, match="--val_classes=3 of them meta-val"):
        fss1000.split_classes(names[:4], 3, 0, 0, fold=0, num_folds=4)


# --- issue 36 (3): the omega file's optimizer reaches evaluation and export -------

@pytest.mark.slow  # An export.
def test_the_omega_files_optimizer_reaches_evaluation_and_export(tmp_path):
    # Before, --omega_file was split into the lr, steps and batch fields and
    # rebuilt without its optimizer: evaluate and export silently used SGD.
    import json

    from efficientlab_tf import config as config_lib
    from efficientlab_tf.experiment import Experiment
    from efficientlab_tf.export.saved_model import read_record

    omega_file = tmp_path / "omega.json"
    omega_file.write_text(json.dumps({"lr": 0.01, "steps": 3, "batch_size": 2,
                                      "optimizer": "adam"}))
    base = helpers.tiny_experiment(str(tmp_path / "run"))
    config = config_lib.ExperimentConfig.build(
        "demo", omega_file=str(omega_file), workdir=str(tmp_path / "run"))
    assert config.eval_omega.optimizer == "adam"
    assert (config.eval_omega.lr, config.eval_omega.steps) == (0.01, 3)
    config = base.with_eval_omega(config.eval_omega, source=str(omega_file))
    assert config.eval_omega.optimizer == "adam"
    exp = Experiment(config, helpers.tiny_efficientlab(bn_mode="batch"))
    path = exp.export(str(tmp_path / "export"))
    assert read_record(path)["omega"]["optimizer"] == "adam"
