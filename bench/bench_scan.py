"""Times the folder scan of an FSS-1000-layout tree: first run and cached.

    /usr/bin/time -f "peak RSS %M KiB" python bench/bench_scan.py --data_dir=data/fss_tree

The first scan decodes every pair with the pipeline's decoder
(`data/validate.py`); the second reads the per-file cache only. Bad pairs are
listed (first lines) and left out, as `--skip_bad_examples` does. The cache
goes to a fresh temporary folder so the first scan is really the first.
"""

import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ["EFFICIENTLAB_CACHE_DIR"] = tempfile.mkdtemp(prefix="bench-scan-")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from efficientlab_tf.data import fss1000  # noqa: E402

flags.DEFINE_string("data_dir", None, "FSS-1000-layout tree.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    root = fss1000.resolve_root(FLAGS.data_dir)
    start = time.perf_counter()
    try:
        fss1000.scan(root)
    except fss1000.BadExamplesError as e:
        print("\n".join(str(e).splitlines()[:6]))
    first = time.perf_counter() - start
    start = time.perf_counter()
    classes = fss1000.scan(root, skip_bad=True)
    cached = time.perf_counter() - start
    pairs = sum(len(p) for p in classes.values())
    print(f"first scan {first:.1f} s, cached {cached:.2f} s; {len(classes)} "
          f"classes, {pairs} good pairs")


if __name__ == "__main__":
    flags.mark_flag_as_required("data_dir")
    app.run(main)
