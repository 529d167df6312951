"""Latency and throughput of `serve_bytes`: in-graph batching vs none.

    python bench/bench_serving.py --image_size=224 --clients=1,4,16 --repeats=3

Exports one EfficientLab (B0, random weights: the timing does not depend on
them) twice, with `--serve_batch_size=16` (the default: concurrent requests
share one BatchFunction batch) and with `--serve_batch_size=0` (no
batching), loads both as the model server would (`tf.saved_model.load`;
concurrent requests are concurrent calls of the same signature, as the
server's concurrent Session::Run calls are), and for each client count runs
`clients` threads that each send `requests` one-image requests (a JPEG of
`image_size`) back to back. Reports, as medians over `repeats`: requests per
second and the p50 / p90 latency of one request. Every batched answer is
checked against the unbatched answer to the same request (probabilities
within 1e-5, masks equal away from the 0.5 threshold). Figures go to
BENCHMARKS.md with the machine they ran on.
"""

import os
import statistics
import tempfile
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app  # noqa: E402
from absl import logging  # noqa: E402
from absl import flags  # noqa: E402

from efficientlab_tf.config import ExportConfig  # noqa: E402
from efficientlab_tf.config import ModelConfig  # noqa: E402
from efficientlab_tf.export.saved_model import export_saved_model  # noqa: E402
from efficientlab_tf.model.efficientlab import build_efficientlab  # noqa: E402

flags.DEFINE_integer("image_size", 224, "Network input size S.")
flags.DEFINE_string("bn_mode", "running", "running (paper) or batch (demo).")
flags.DEFINE_list("clients", ["1", "4", "16"], "Concurrent client counts.")
flags.DEFINE_integer("requests", 8, "Requests per client per repeat.")
flags.DEFINE_integer("repeats", 3, "Timed repeats (medians reported).")
flags.DEFINE_integer("batch_timeout_micros", 2000, "In-graph batch timeout.")
flags.DEFINE_integer("batch_threads", 2, "In-graph batch threads.")
FLAGS = flags.FLAGS


def _images(count, size):
    rng = np.random.RandomState(0)
    return [tf.io.encode_jpeg(rng.randint(0, 256, (size, size, 3)).astype(np.uint8),
                              quality=90).numpy() for _ in range(count)]


def _run(fn, jpegs, clients, per_client):
    """(seconds in all, per-request latencies, answers by request index)."""
    latencies, answers = [], {}
    lock = threading.Lock()

    def client(c):
        for r in range(per_client):
            i = (c * per_client + r) % len(jpegs)
            start = time.perf_counter()
            out = fn(encoded=tf.constant([jpegs[i]]))
            seconds = time.perf_counter() - start
            with lock:
                latencies.append(seconds)
                answers[(c, r)] = (i, out["probabilities"].numpy()[0])

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start, latencies, answers


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # Export logs name every capture.
    size = FLAGS.image_size
    model = build_efficientlab(ModelConfig(image_size=size, bn_mode=FLAGS.bn_mode))
    base = tempfile.mkdtemp()
    fns = {}
    for name, batch in (("unbatched", 0), ("batched", 16)):
        path = export_saved_model(model, os.path.join(base, name), size, warmup=False,
                                  limits=ExportConfig(
                                      serve_batch_size=batch,
                                      serve_batch_threads=FLAGS.batch_threads,
                                      serve_batch_timeout_micros=FLAGS.batch_timeout_micros))
        fns[name] = tf.saved_model.load(path).signatures["serve_bytes"]
    jpegs = _images(16, size)
    reference = [fns["unbatched"](encoded=tf.constant([j]))["probabilities"].numpy()[0]
                 for j in jpegs]
    fns["batched"](encoded=tf.constant([jpegs[0]]))  # First call traces.
    print(f"serve_bytes, one {size} px JPEG per request, bn_mode={FLAGS.bn_mode}, "
          f"batch timeout {FLAGS.batch_timeout_micros} us, {FLAGS.batch_threads} "
          f"batch threads, {FLAGS.requests} "
          f"requests per client, medians of {FLAGS.repeats}")
    print("| clients | path | requests/s | p50 latency ms | p90 latency ms |")
    print("|---:|---|---:|---:|---:|")
    worst = 0.0
    for clients in [int(c) for c in FLAGS.clients]:
        for name, fn in fns.items():
            rates, p50s, p90s = [], [], []
            for _ in range(FLAGS.repeats):
                seconds, latencies, answers = _run(fn, jpegs, clients, FLAGS.requests)
                rates.append(len(latencies) / seconds)
                p50s.append(1000 * np.percentile(latencies, 50))
                p90s.append(1000 * np.percentile(latencies, 90))
                for i, probs in answers.values():
                    diff = np.abs(probs - reference[i])
                    worst = max(worst, float(diff.max()))
                    sure = np.abs(reference[i] - 0.5) > 1e-4
                    assert np.array_equal(probs[sure] >= 0.5, reference[i][sure] >= 0.5)
            print(f"| {clients} | {name} | {statistics.median(rates):.2f} | "
                  f"{statistics.median(p50s):.1f} | {statistics.median(p90s):.1f} |",
                  flush=True)
    print(f"largest |probability - unbatched| over every answer: {worst:.2e}")
    assert worst <= 1e-5, worst


if __name__ == "__main__":
    app.run(main)
