"""One module per mode of run_meta.py: `run(config) -> results`, no flags.

`run(config)` is what the command line calls and what Python code calls:
it checks the packages the mode needs (preflight), takes the workdir's lock,
and dispatches on `config.run.mode`. Each mode writes its record
(`config<suffix>.json`, and through the CLI's `record_fn` also `flags.txt`)
once it is safe to: a training rerun only after the resume check and after
the run was built, so a refused rerun leaves the run's record intact.
"""

import dataclasses
import importlib
import os

from efficientlab_tf import distribute
from efficientlab_tf import storage
from efficientlab_tf import preflight
from efficientlab_tf import workdir as workdir_lib

# mode -> module of this package (each defines `run(config, record_fn)`).
MODULES = {
    "train": "train",
    "evaluate": "evaluate",
    "compare": "compare",
    "compare_merge": "compare_merge",
    "uho": "uho",
    "lr_sweep": "lr_sweep",
    "fpk": "fpk",
    "adapt": "adapt",
    "export": "export",
    "convert": "convert",
    "imagenet_check": "imagenet_check",
    "segment": "segment",
}


def record_suffix(mode):
    """A training run's record is flags.txt/config.json; other modes get
    their own files so they never overwrite the run's."""
    return "" if mode == "train" else f"_{mode}"


def write_config_record(config):
    """Writes <workdir>/config<suffix>.json (every field of the config)."""
    suffix = record_suffix(config.run.mode)
    storage.write_json(os.path.join(config.run.workdir, f"config{suffix}.json"),
                  dataclasses.asdict(config))


def run(config, record_fn=None, model=None):
    """Runs `config.run.mode` in its locked workdir; returns its results.

    Args:
        config: ExperimentConfig.
        record_fn: `record_fn(config)` writing the run's record; default
            `write_config_record` (the CLI also writes flags.txt).
        model: A built model to use instead of the one `config.model`
            describes (tests inject tiny ones).

    Raises:
        preflight.MissingDependencyError, workdir.WorkdirError, ValueError,
        FileNotFoundError, ...: bad input, before the mode's work starts.
    """
    preflight.check(config, config.run.mode,
                    uses_imagenet=config.compare.imagenet)
    module = importlib.import_module(
        f"efficientlab_tf.runners.{MODULES[config.run.mode]}")
    record_fn = record_fn or write_config_record
    if config.run.mode == "segment":  # Its record and lock: a hidden
        # subfolder of the output folder, never among the user's masks.
        from efficientlab_tf.runners.segment import RECORD_DIR

        config = dataclasses.replace(config, run=dataclasses.replace(
            config.run, workdir=os.path.join(config.segment.out_dir, RECORD_DIR)))
    folder = config.run.workdir
    if not distribute.is_chief(config.run):
        # A non-chief worker writes nothing of the run's; it locks its own
        # folder so that two processes never claim the same worker index.
        _, index = distribute.task_role()
        folder = os.path.join(folder, "workers", str(index))
        record_fn = _no_record
    with workdir_lib.lock(folder):
        if distribute.is_chief(config.run):
            preflight.check_outputs(config, config.run.mode)
        return module.run(config, record_fn, model)


def _no_record(config):
    del config
