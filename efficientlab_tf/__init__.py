"""efficientlab_tf: meta-learned initializations for few-shot segmentation.

A TensorFlow 2 / Keras 3 reimplementation of "Meta-Learning Initializations
for Image Segmentation" (Hendryx, Leach, Hein, Morrison): the EfficientLab
network, FOMAML and Reptile meta-training around one update routine, and the
evaluation that goes with them. `import efficientlab_tf as el`: el.configure,
el.train, el.load(...).segment(...), el.MetaLearner (docs/python_api.md).
"""

__version__ = "0.1.0"

# The Python API (`efficientlab_tf/api.py`, docs/python_api.md), imported on
# first use so that `import efficientlab_tf` stays light.
__all__ = ["configure", "run", "train", "evaluate", "compare", "export_model", "load",
           "Segmenter", "ExperimentConfig", "MetaConfig", "Omega", "TaskBatch",
           "TaskFns", "MetaLearner", "make_adapter"]


def __getattr__(name):
    if name in __all__:
        from efficientlab_tf import api

        return getattr(api, name)
    raise AttributeError(f"module 'efficientlab_tf' has no attribute {name!r}")


def __dir__():
    # The lazily imported API names too, so dir(el) and tab completion show them.
    return sorted(set(globals()) | set(__all__))
