"""Command line: `efficientlab` (and run_meta.py) and efficientlab-client.

`flags.py` defines every flag (the only module that does), `parse.py` turns
them into an `ExperimentConfig` once, `main.py` hands the config to the
mode's runner (`efficientlab_tf/runners/`), `recipes.py` reads the shipped
flagfiles (`--recipe=NAME`); nothing else reads `FLAGS`.
"""

from efficientlab_tf.cli.client import client_entry  # noqa: F401
from efficientlab_tf.cli.flags import define_flags  # noqa: F401
from efficientlab_tf.cli.main import entry  # noqa: F401
from efficientlab_tf.cli.main import main  # noqa: F401
from efficientlab_tf.cli.parse import config_from_flags  # noqa: F401
