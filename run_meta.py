"""Meta-trains EfficientLab with FOMAML or Reptile (or joint training).

    python run_meta.py --algo=fomaml                      # synthetic demo
    python run_meta.py --flagfile=flags/fss1000_fomaml_5shot.flags \
        --data_dir=/data/fewshot_data --workdir=runs/fomaml_run1
    tensorboard --logdir=runs
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402

from efficientlab_tf import cli  # noqa: E402

if __name__ == "__main__":
    cli.define_flags()  # every flag has a default: `--algo=fomaml` runs the demo
    app.run(cli.main)
