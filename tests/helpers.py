"""What the tests share: tiny models, tasks and configs, seeded training
runs, dataset trees in the real on-disk formats (FSS-1000 folders, PASCAL VOC
with palette PNGs), a tiny export, and run_meta.py as a process."""

import dataclasses
import os
import subprocess
import sys
import tempfile

import keras
import numpy as np
import tensorflow as tf
from PIL import Image

from efficientlab_tf import config as config_lib
from efficientlab_tf import training
from efficientlab_tf.config import ModelConfig
from efficientlab_tf.config import Omega
from efficientlab_tf.data import pascal
from efficientlab_tf.export.saved_model import export_saved_model
from efficientlab_tf.segmentation import build_adapter
from efficientlab_tf.data.tasks import TaskBatch
from efficientlab_tf.model.efficientlab import build_efficientlab
from efficientlab_tf.model.layers import BatchNorm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_encoder(image_size=32, batch_stats=False):
    """Two-conv encoder with the EfficientNet endpoint contract."""
    images = keras.Input((image_size, image_size, 3))
    x = keras.layers.Rescaling(1.0 / 255.0)(images)
    x = keras.layers.Conv2D(8, 3, strides=4, padding="same", use_bias=False)(x)
    s3 = keras.layers.ReLU()(BatchNorm(batch_stats=batch_stats)(x))
    x = keras.layers.Conv2D(12, 3, strides=4, padding="same")(s3)
    s6 = keras.layers.ReLU()(x)
    return keras.Model(images, {"stage_3": s3, "stage_6": s6}, name="tiny")


def tiny_config(**kwargs):
    base = dict(image_size=32, decoder_filters=8, bn_mode="running")
    base.update(kwargs)
    return ModelConfig(**base)


def tiny_efficientlab(**kwargs):
    config = tiny_config(**kwargs)
    return build_efficientlab(
        config, encoder=tiny_encoder(config.image_size,
                                     config.bn_mode == "batch"))


def random_task(shots=4, query=2, size=32, seed=0, meta_batch=None):
    rng = np.random.RandomState(seed)

    def make(n):
        lead = (n,) if meta_batch is None else (meta_batch, n)
        images = rng.uniform(0, 255, lead + (size, size, 3)).astype(np.float32)
        masks = (rng.uniform(size=lead + (size, size, 1)) > 0.6).astype(np.float32)
        return tf.constant(images), tf.constant(masks)

    si, sm = make(shots)
    qi, qm = make(query)
    return TaskBatch(si, sm, qi, qm)


def variable_values(model):
    return [np.array(v.numpy()) for v in model.variables]


def tiny_experiment(workdir, algo="fomaml", meta_iters=4, **run):
    return config_lib.ExperimentConfig(
        model=tiny_config(bn_mode="batch"),
        data=config_lib.DataConfig(synthetic_classes=24, val_classes=4,
                                   test_classes=4, query_shots=2),
        meta=config_lib.MetaConfig(algo=algo, train_shots=4, foml_tail=2,
                                   inner_iters=2, inner_batch=2, inner_lr=0.05,
                                   meta_batch=2, meta_step=1.0,
                                   meta_step_final=0.5, meta_iters=meta_iters),
        eval=config_lib.EvalConfig(shots=2, tasks=2, every=0),
        run=config_lib.RunConfig(**{
            "workdir": workdir, "checkpoint_every": 2, "log_every": 1,
            "image_every": 0, "export": False, **run}),
    )


def prepared_run(config, crash_at=None):
    """A seeded tiny run (crashing before meta-step `crash_at`, like kill
    -9, if given); returns (the prepared run, its results)."""
    keras.utils.set_random_seed(config.run.seed)
    model = tiny_efficientlab(bn_mode="batch")
    prepared = training.prepare(config, model)
    if crash_at is not None:
        step_fn = prepared.exp.learner.meta_step

        def crashing(*args):
            if int(prepared.step) == crash_at:
                raise RuntimeError("simulated kill")
            return step_fn(*args)

        prepared.exp.learner.meta_step = crashing
    return prepared, training.run(prepared)


def run_training(config, crash_at=None):
    prepared, results = prepared_run(config, crash_at)
    return prepared.exp.model, results


def make_tree(classes=("cat", "dog", "bus"), pairs=4, root=None):
    root = root or tempfile.mkdtemp()
    for c, name in enumerate(classes):
        for n in range(1, pairs + 1):
            write_pair(os.path.join(root, name), n, seed=10 * c + n)
    with open(os.path.join(root, "README.md"), "w") as f:
        f.write("not a class\n")
    return root


def write_pair(folder, n, size=32, seed=0, mask_values=(0, 255)):
    rng = np.random.RandomState(seed)
    os.makedirs(folder, exist_ok=True)
    image = rng.randint(0, 256, (size, size, 3)).astype(np.uint8)
    mask = np.where(rng.uniform(size=(size, size)) > 0.5, *mask_values[::-1])
    Image.fromarray(image).save(os.path.join(folder, f"{n}.jpg"), quality=95)
    Image.fromarray(mask.astype(np.uint8), "L").save(os.path.join(folder, f"{n}.png"))


SIZE = 32


PALETTE = sum(([(37 * i) % 256, (91 * i) % 256, (53 * i) % 256] for i in range(256)), [])


def label_map(labels, seed, size=SIZE):
    """[size, size] uint8: one square per label, each with a 255 border."""
    rng = np.random.RandomState(seed)
    out = np.zeros((size, size), np.uint8)
    side = max(10, size // 3)
    for label in labels:
        y, x = rng.randint(2, size - side - 2, 2)
        out[y - 1:y + side + 1, x - 1:x + side + 1] = 255
        out[y:y + side, x:x + side] = label
    return out


def write_voc(root, train, val, aug=None, size=SIZE):
    """train/val/aug: {image id: [labels]}. Returns {id: label map}."""
    maps = {}
    for sub in ("JPEGImages", "SegmentationClass", "SegmentationClassAug",
                "ImageSets/Segmentation", "ImageSets/SegmentationAug"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    everything = {**train, **val, **(aug or {})}
    for n, (image_id, labels) in enumerate(sorted(everything.items())):
        rng = np.random.RandomState(100 + n)
        image = rng.randint(0, 256, (size, size, 3)).astype(np.uint8)
        Image.fromarray(image).save(os.path.join(root, "JPEGImages", f"{image_id}.jpg"),
                                    quality=95)
        labels_map = label_map(labels, seed=n, size=size)
        maps[image_id] = labels_map
        palette = Image.fromarray(labels_map, "P")
        palette.putpalette(PALETTE)
        palette.save(os.path.join(root, "SegmentationClass", f"{image_id}.png"))
        Image.fromarray(labels_map, "L").save(
            os.path.join(root, "SegmentationClassAug", f"{image_id}.png"))
    for name, ids in (("Segmentation/train.txt", train), ("Segmentation/val.txt", val),
                      ("SegmentationAug/train_aug.txt", {**train, **(aug or {})})):
        with open(os.path.join(root, "ImageSets", name), "w") as f:
            f.write("".join(f"{i}\n" for i in ids))
    return maps


def voc_tree(tmp_path):
    # Fold 0 test classes: aeroplane(1) .. boat(4) and bottle(5).
    train = {f"2007_{i:06d}": [6 + i % 3, 1] for i in range(6)}  # bus/car/cat + aeroplane
    val = {f"2008_{i:06d}": [1 + i % 2] for i in range(6)}  # aeroplane, bicycle
    root = str(tmp_path / "VOCdevkit" / "VOC2012")
    maps = write_voc(root, train, val, aug={"2009_000000": [6], "2008_000000": [1]})
    return str(tmp_path / "VOCdevkit"), maps


def fpk_tree(tmp_path, pairs=3):
    fss = tmp_path / "fss"
    for c, name in enumerate(pascal.FPK_ANALOGS):
        for n in range(1, pairs + 1):
            write_pair(str(fss / name), n, seed=10 * c + n)
    analogs = [pascal.voc_index(v) for v in pascal.FPK_ANALOGS.values()]
    train = {f"2007_{i:06d}": [analogs[i % 5]] for i in range(10)}
    val = {f"2008_{i:06d}": [analogs[i % 5], 15] for i in range(5)}
    write_voc(str(tmp_path / "voc"), train, val)
    return str(fss), str(tmp_path / "voc")


OMEGA = Omega(lr=0.05, steps=3)


def export_tiny(bn_mode="batch", base=None):
    """A tiny model's export as the next version of `base` (default: a new
    `<tmp>/efficientlab`): (model, adapter, base, version path)."""
    model = tiny_efficientlab(bn_mode=bn_mode)
    base = base or os.path.join(tempfile.mkdtemp(), "efficientlab")
    adapter = build_adapter(model, Omega(batch_size=2))
    path = export_saved_model(model, base, image_size=32,
                              few_shot_adapter=adapter, omega=OMEGA)
    return model, adapter, base, path


def with_(config, **sections):
    """`config` with fields replaced per section: with_(c, run={"mode": ..})."""
    return dataclasses.replace(config, **{
        name: dataclasses.replace(getattr(config, name), **fields)
        for name, fields in sections.items()})


def run_meta(*args, timeout=600):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="-1", TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "run_meta.py"), *args],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
