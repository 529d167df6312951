"""`main` of run_meta.py: flags -> config -> the mode's runner.

Input errors (bad flag values, missing files or packages, a locked or
incompatible workdir, NaN in training, a
failed write: disk full, read-only folder) end with one line on stderr and exit
status 2; `--verbosity=1` also logs their stack trace.
"""

import os
import sys
import traceback

import keras
import tensorflow as tf
from absl import flags
from absl import logging

from efficientlab_tf import storage
from efficientlab_tf import preflight
from efficientlab_tf import runners
from efficientlab_tf import workdir as workdir_lib
from efficientlab_tf.cli.parse import config_from_flags
from efficientlab_tf.cli.parse import write_flagfile

FLAGS = flags.FLAGS

# Errors that `main` reports as one line instead of a stack trace
# (EncoderWeightsError, LiteWeightsError, BadExamplesError: ValueError).
USER_ERRORS = (ValueError, TypeError, FileNotFoundError, NotADirectoryError,
               FileExistsError, PermissionError, FloatingPointError,
               workdir_lib.WorkdirError, workdir_lib.CheckpointError,
               preflight.MissingDependencyError, storage.WriteError)


# The program name errors start with (`entry` makes it "efficientlab").
PROGRAM = ["run_meta.py"]


def fail(message, program=None):
    """One line on stderr and exit status 2 (no stack trace)."""
    sys.stderr.write(f"{program or PROGRAM[0]}: error: {message}\n")
    sys.exit(2)


def write_record(config):
    """flags<suffix>.txt (a flagfile that repeats the run) and config<suffix>.json."""
    suffix = runners.record_suffix(config.run.mode)
    write_flagfile(os.path.join(config.run.workdir, f"flags{suffix}.txt"), FLAGS)
    runners.write_config_record(config)


def main(argv):
    """Entry point for app.run."""
    if len(argv) > 1:
        fail(f"unexpected positional arguments {argv[1:]}; use --flag=value.")
    try:
        config = config_from_flags(FLAGS)
    except (ValueError, FileNotFoundError) as e:
        fail(str(e))
    data = config.data
    if data.dataset == "synthetic" and data.data_dir and config.run.mode != "imagenet_check":
        fail(f"--data_dir={data.data_dir} is set but --dataset=synthetic reads "
             "no files; add --dataset=fss1000 (or pascal5i, fpk) to use it, or "
             "drop --data_dir.")
    if config.run.run_eagerly:
        tf.config.run_functions_eagerly(True)
    keras.utils.set_random_seed(config.run.seed)
    try:
        runners.run(config, record_fn=write_record)
    except USER_ERRORS as e:
        logging.debug("%s", traceback.format_exc())
        fail(str(e))


def entry(argv=None):
    """The `efficientlab` command: `efficientlab <mode> [--flags]` runs a mode
    (`efficientlab train --recipe=synthetic_smoke`, `efficientlab segment
    ...`), `efficientlab recipes` lists the recipes, `efficientlab --flags`
    is `run_meta.py --flags`. `--recipe=NAME` / `--flagfile=@NAME` read a
    shipped recipe (`cli/recipes.py`)."""
    from absl import app

    from efficientlab_tf import config as config_lib
    from efficientlab_tf.cli import flags as cli_flags
    from efficientlab_tf.cli import recipes

    argv = list(sys.argv if argv is None else argv)
    program = PROGRAM[0] = "efficientlab"
    if len(argv) > 1 and argv[1] == "recipes":
        print(recipes.listing(), end="")
        return
    if len(argv) > 1 and argv[1] in config_lib.MODES:
        argv = [argv[0], f"--mode={argv[1]}"] + argv[2:]
    elif len(argv) > 1 and not argv[1].startswith("-"):
        fail(f"unknown command {argv[1]!r}; commands: recipes, "
             f"{', '.join(config_lib.MODES)} (or --flags alone).", program)
    try:
        argv = recipes.expand_argv(argv)
    except (ValueError, FileNotFoundError) as e:
        fail(str(e), program)
    cli_flags.define_flags()
    app.run(main, argv=argv)
