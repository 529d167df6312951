"""--mode=train: (meta-)training, evaluation and export of one run."""

import dataclasses

from efficientlab_tf import training
from efficientlab_tf import workdir as workdir_lib


def run(config, record_fn, model=None):
    """Checks a rerun against the stored record, builds, records, trains.

    Raises:
        workdir.WorkdirError: the workdir holds checkpoints of a run with
            other model-shaping flags (each named).
        training.NonFiniteError: a step produced NaN/Inf (nothing saved).
    """
    workdir_lib.check_resumable(config.run.workdir, dataclasses.asdict(config))
    prepared = training.prepare(config, model)
    record_fn(config)
    return training.run(prepared)
