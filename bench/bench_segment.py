"""`efficientlab segment` speed and memory: N photos of one size, one support set.

    python bench/bench_segment.py --model=saved_models/efficientlab_realfss62 \
        --photos=1,10,100 --sizes=224,phone --repeats=3

Each (photos, size) runs `--mode=segment` in a fresh process (so its peak
resident memory, ru_maxrss, is its own), `--repeats` times; the median wall
time is reported, and the time is split, from the same process, into
decoding (read + EXIF + resize to S, per photo), one adaptation (a few_shot
request of one photo) and prediction (the extra time per photo of a request
of 16). Photos are smooth synthetic JPEGs (quality 90) of 224 x 224 or a phone's
4032 x 3024; the support set is 5 pairs of the same size. `--impl=old` times
the command of an older checkout run from its root (e.g. a `git worktree` of
the commit before issue 34) for the before/after table of BENCHMARKS.md.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image

SIZES = {"224": (224, 224), "phone": (3024, 4032)}


def _photo(height, width, seed):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width] / max(height, width)
    cy, cx, r = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), rng.uniform(0.1, 0.25)
    disc = ((yy - cy) ** 2 + (xx - cx) ** 2) < r ** 2
    base = np.stack([yy * 200, xx * 200, np.full_like(yy, 90)], -1)
    return (base + 50 * disc[..., None]).clip(0, 255).astype(np.uint8), disc


def make_folders(root, count, size):
    height, width = SIZES[size]
    support, photos = os.path.join(root, "support"), os.path.join(root, "photos")
    os.makedirs(support)
    os.makedirs(photos)
    first = None
    for i in range(5):
        image, disc = _photo(height, width, i)
        Image.fromarray(image).save(os.path.join(support, f"{i + 1}.jpg"), quality=90)
        Image.fromarray(disc.astype(np.uint8) * 255).save(os.path.join(support, f"{i + 1}.png"))
    for i in range(count):
        path = os.path.join(photos, f"p{i:03d}.jpg")
        if first is None:
            Image.fromarray(_photo(height, width, 100)[0]).save(path, quality=90)
            first = path
        else:  # Same bytes: generating 100 phone photos would dominate.
            with open(first, "rb") as src, open(path, "wb") as dst:
                dst.write(src.read())
    return support, photos


def run_once(args, count, size):
    root = tempfile.mkdtemp()
    support, photos = make_folders(root, count, size)
    out = os.path.join(root, "out")
    command = [sys.executable, "run_meta.py", "--mode=segment",
               f"--segment_support={support}", f"--segment_images={photos}",
               f"--segment_out_dir={out}"]
    if args.model:
        command.append(f"--segment_model={os.path.abspath(args.model)}")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="-1")
    start = time.time()
    subprocess.run(command, cwd=args.checkout, env=env, check=True,
                   capture_output=True, text=True)
    wall = time.time() - start
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return wall, peak_mib, support, photos


def split(args, support_dir, photos_dir):
    """(decode s per photo, adaptation s, prediction s per photo)."""
    sys.path.insert(0, args.checkout)
    from efficientlab_tf import shipped
    from efficientlab_tf.export import photos
    from efficientlab_tf.export.segmenter import Segmenter

    segmenter = Segmenter(args.model or shipped.model_path())
    images, masks, _ = photos.read_support(support_dir)
    support = segmenter.support(images, masks)
    path = sorted(os.listdir(photos_dir))[0]
    start = time.time()
    small = photos.to_network(photos.read_photo(os.path.join(photos_dir, path)),
                              segmenter.image_size)
    decode = time.time() - start
    segmenter.probabilities(support, [small])  # Trace.
    times = {}
    for n in (1, 16):
        runs = []
        for _ in range(3):
            start = time.time()
            segmenter.probabilities(support, [small] * n, chunk=n)
            runs.append(time.time() - start)
        times[n] = statistics.median(runs)
    per_photo = (times[16] - times[1]) / 15
    return decode, times[1] - per_photo, per_photo


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="")
    parser.add_argument("--photos", default="1,10,100")
    parser.add_argument("--sizes", default="224,phone")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--impl", default="new", choices=["new", "old"])
    parser.add_argument("--checkout", default=os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))))
    args = parser.parse_args()
    rows = []
    for size in args.sizes.split(","):
        for count in map(int, args.photos.split(",")):
            walls, peaks = [], []
            for _ in range(args.repeats):
                # A process per run: ru_maxrss of children is the largest so far,
                # so each run is measured in its own child of a fresh parent.
                probe = subprocess.run(
                    [sys.executable, "-c", "import sys, json; sys.path.insert(0, "
                     f"{os.path.dirname(os.path.abspath(__file__))!r}); import "
                     "bench_segment as b, argparse; a = argparse.Namespace(**json."
                     "loads(sys.argv[1])); w, p, s, ph = b.run_once(a, int(sys.argv[2]), "
                     "sys.argv[3]); print(json.dumps([w, p, s, ph]))",
                     json.dumps(vars(args)), str(count), size],
                    check=True, capture_output=True, text=True)
                wall, peak, support, photos_dir = json.loads(probe.stdout.splitlines()[-1])
                walls.append(wall)
                peaks.append(peak)
            row = {"size": size, "photos": count, "impl": args.impl,
                   "median_s": round(statistics.median(walls), 2),
                   "runs_s": [round(w, 2) for w in walls],
                   "peak_mib": round(max(peaks))}
            if args.impl == "new" and count == max(map(int, args.photos.split(","))):
                decode, adapt, predict = split(args, support, photos_dir)
                row.update(decode_s_per_photo=round(decode, 3),
                           adaptation_s=round(adapt, 3),
                           prediction_s_per_photo=round(predict, 3))
            rows.append(row)
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
