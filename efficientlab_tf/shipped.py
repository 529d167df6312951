"""The model shipped with the package (`saved_models/` of a checkout,
installed as `efficientlab_tf.models`): what `efficientlab segment` without
`--segment_model`, `el.load()` without a path and the shipped TF Serving
deployment use. Its card: `saved_models/<NAME>/MODEL_CARD.md`; the recipe
that rebuilt it: `RECIPE` (`efficientlab recipes`).
"""

import importlib.util
import os

NAME = "efficientlab_realfss62"
RECIPE = "realfss62_ship"


def models_dir():
    """The installed `efficientlab_tf/models`, or a checkout's `saved_models/`."""
    spec = importlib.util.find_spec("efficientlab_tf.models")
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            if os.path.isdir(os.path.join(folder, NAME)):
                return folder
    checkout = os.path.join(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))), "saved_models")
    if os.path.isdir(os.path.join(checkout, NAME)):
        return checkout
    raise FileNotFoundError(
        f"the shipped model ({NAME}) is not installed; reinstall "
        "efficientlab-tf, or pass a model (--segment_model, el.load(path)).")


def model_path():
    """The export folder of the shipped model (its newest version is used)."""
    return os.path.join(models_dir(), NAME)
