"""Loads an export folder through the emulated shipped TF Serving deployment.

    python bench/check_served_export.py --saved_model=runs/demo/saved_model

Mounts the folder's parent as the model base path `/models/efficientlab` of
`efficientlab_tf/export/serving/docker-compose.yml` + `models.config` (the
model-server emulation of tests/tf_serving_emulation.py), reports load
errors and the load + warmup time, then sends one image alone and with a
second image in the same request and counts the mask pixels that differ
(0 is what issue 23 requires, also for `--bn_mode=batch`).
"""

import os
import shutil
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from tests import tf_serving_emulation as emulation  # noqa: E402

flags.DEFINE_string("saved_model", "runs/demo/saved_model",
                    "Export folder holding integer version folders.")
COMPOSE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       "efficientlab_tf", "export", "serving", "docker-compose.yml")


def main(argv):
    del argv
    mount = tempfile.mkdtemp()
    shutil.copytree(flags.FLAGS.saved_model, os.path.join(mount, "efficientlab"))
    start = time.perf_counter()
    server = emulation.ModelServer.from_compose(COMPOSE, mounts={"/models": mount})
    print(f"load errors: {server.load_errors or 'none'}; versions "
          f"{sorted(server.models['efficientlab'])}; load and warmup "
          f"{time.perf_counter() - start:.1f} s")
    servable = server.servable("efficientlab")
    size = servable.signatures["serve_bytes"].structured_outputs["masks"].shape[1]
    rng = np.random.RandomState(0)
    image, other = (rng.randint(0, 256, (1, size, size, 3)).astype(np.uint8)
                    for _ in range(2))
    alone = servable.predict("serving_default", {"images": image})
    company = servable.predict("serving_default",
                               {"images": np.concatenate([image, other])})
    differ = int((alone["masks"][0] != company["masks"][0]).sum())
    gap = float(np.abs(alone["probabilities"][0] - company["probabilities"][0]).max())
    print(f"one image alone vs with a second one: {differ} of "
          f"{alone['masks'][0].size} mask pixels differ; largest probability "
          f"difference {gap:.2e}")


if __name__ == "__main__":
    app.run(main)
