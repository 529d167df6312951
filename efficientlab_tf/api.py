"""The Python API (`import efficientlab_tf as el`): docs/python_api.md.

* `el.configure(preset="demo", recipe=None, flagfile=None, **knobs)`: an
  `ExperimentConfig`; knobs by flag name (`meta_iters=50`), after the
  recipe's or flagfile's values, which come after the preset's.
* `el.train(config)`, `el.evaluate(config)`, `el.compare(config)`,
  `el.export_model(config)`, `el.run(config)`: the modes of `efficientlab`,
  returning their results dicts. (Not `el.config` or `el.export`: those
  names are the package's modules.)
* `el.load(path=None) -> Segmenter` (export/segmenter.py): an exported
  model (a SavedModel, an export folder or a training run folder; none:
  the shipped model); `Segmenter.segment(support_images, support_masks,
  query_images)` adapts once inside the model's `few_shot` signature, as
  TF Serving would serve it, and returns one mask per query at the query's
  own size; `Segmenter.segment_folder(...)` is `efficientlab segment`.
* The meta-learning core for any Keras model: `TaskFns` (the contract: a
  loss, a prediction and a per-example metric), `MetaLearner`
  (`meta_step`, `joint_step`, `eval_fn(omega)`), `MetaConfig`, `Omega`,
  `TaskBatch`, `make_adapter`.
"""

import dataclasses


from efficientlab_tf import config as config_lib
from efficientlab_tf.config import ExperimentConfig  # noqa: F401
from efficientlab_tf.config import MetaConfig  # noqa: F401
from efficientlab_tf.config import Omega  # noqa: F401
from efficientlab_tf.data.tasks import TaskBatch  # noqa: F401
from efficientlab_tf.export import segmenter as segmenter_lib
from efficientlab_tf.meta.contract import TaskFns  # noqa: F401
from efficientlab_tf.meta.contract import make_adapter  # noqa: F401
from efficientlab_tf.meta.learner import MetaLearner  # noqa: F401


def configure(preset="demo", recipe=None, flagfile=None, **knobs):
    """An ExperimentConfig: the preset ("paper", "demo", "smoke"), then a
    recipe (`efficientlab recipes`) or flagfile, then `knobs` by flag name.

    Raises:
        ValueError: an unknown knob, recipe or flag value (naming it).
    """
    values = {}
    if recipe or flagfile:
        from absl import flags

        from efficientlab_tf.cli import flags as cli_flags
        from efficientlab_tf.cli import parse
        from efficientlab_tf.cli import recipes

        parsed = flags.FlagValues()
        cli_flags.define_flags(parsed)
        args = recipes.expand(recipe) if recipe else []
        args += [f"--flagfile={flagfile}"] if flagfile else []
        try:
            parsed(["efficientlab"] + args)
        except flags.Error as e:
            raise ValueError(str(e)) from None
        values = {k.name: parse._value(k, parsed[k.name])
                  for k in config_lib.knobs() if parsed[k.name].present}
    return ExperimentConfig.build(preset, **{**values, **knobs})


def run(config, model=None):
    """Runs `config.run.mode` (`runners.run`); returns its results.

    Progress is logged as the command logs it (the step line with its ETA):
    outside `app.run` absl shows only warnings, so INFO is switched on for
    the call unless the caller chose a verbosity.
    """
    from absl import logging

    from efficientlab_tf import runners

    previous = logging.get_verbosity()
    if previous < logging.INFO:
        logging.set_verbosity(logging.INFO)
    try:
        return runners.run(config, model=model)
    finally:
        logging.set_verbosity(previous)


def _mode(mode):
    def run_mode(config, model=None):
        return run(dataclasses.replace(
            config, run=dataclasses.replace(config.run, mode=mode)), model)
    run_mode.__name__ = mode
    run_mode.__doc__ = f"Runs `config` in mode {mode!r}; returns its results."
    return run_mode


train, evaluate, compare, export_model = (
    _mode(m) for m in ("train", "evaluate", "compare", "export"))


def load(path=None):
    """A `Segmenter` of the SavedModel `path` names (itself, an export
    folder's newest version, or a training run's); no path: the model
    shipped with the package (`efficientlab_tf.shipped`)."""
    from efficientlab_tf import shipped

    return Segmenter(path or shipped.model_path())


class Segmenter(segmenter_lib.Segmenter):
    """An exported EfficientLab in this process (`export/segmenter.py`:
    `support`, `probabilities`, `segment` on arrays), plus the folder tool."""

    def segment_folder(self, support, images, out_dir="segmented", **knobs):
        """`efficientlab segment`: masks, overlays, segments.csv and a
        contact sheet of `images` (files, folders) in `out_dir`; returns
        its results. `knobs`: more flags by name (e.g. segment_coco=True)."""
        return run(ExperimentConfig.build(
            "paper", mode="segment", segment_model=self.path,
            segment_support=support, segment_images=list(images),
            segment_out_dir=out_dir, **knobs))
