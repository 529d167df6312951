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


# --- 1: divergence found by an evaluation is the NaN stop, not a traceback ------

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
