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


def fail(message, program="run_meta.py"):
    """One line on stderr and exit status 2 (no stack trace)."""
    sys.stderr.write(f"{program}: error: {message}\n")
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
