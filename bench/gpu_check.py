"""The paper-configuration GPU check that fits in one short device loan.

    python bench/gpu_check.py --out=gpu_check          # on the GPU: < 8 minutes
    python bench/gpu_check.py --image_size=32 --meta_batch=1 --train_shots=4 \
        --inner_iters=2 --timed_steps=1 --modes=fomaml,fomaml_bf16 --out=gpu_check_cpu

EfficientLab-B0 at 224 px (`--encoder_weights=none`: nothing is downloaded)
on the embedded synthetic family, the paper's meta-batch (5 tasks of 10
shots, 5 inner steps of batch 8, FOMAML's tail of 5), and per mode: the first
meta-step (trace, and XLA's compile) and the median of `--timed_steps` more,
peak GPU memory (`tf.config.experimental.get_memory_info`), and how far one
meta-step's update of the weights is from float32's from the same weights
and tasks (relative L2 error against `TOLERANCES`, the tolerances the tests
hold each mode to). Then one 5-shot evaluation task at the paper's omega
(lr 0.005, 5 steps, batch 8), and the 240-class x 2-draw protocol time it
projects, per shot count. Dropout and stochastic depth are off, so that the
modes' updates can be compared (XLA draws other dropout noise); their cost
is a few elementwise ops.

Modes (`--modes`, in this order by default): fomaml and reptile in float32;
fomaml under `--jit_compile`; under mixed_bfloat16; under mixed_float16; and
under mixed_float16 / mixed_bfloat16 with depthwise convolutions in float32
(`--float32_layers=DepthwiseConv2D`, tensorflow#41715).

Writes `<out>/gpu_check.json` and `<out>/gpu_check.md` after every mode
(atomically), so a run stopped by its deadline (`--deadline_s`: no new mode
starts when the time left is less than the slowest mode so far took) or
killed still leaves what it measured. Output format: docs/scale.md.
"""

import json
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from efficientlab_tf import storage  # noqa: E402
from efficientlab_tf.config import ExperimentConfig  # noqa: E402
from efficientlab_tf.data.source import meta_batches  # noqa: E402
from efficientlab_tf.experiment import Experiment  # noqa: E402

# name -> (algo, precision, jit_compile, float32 layer types)
MODES = {
    "fomaml": ("fomaml", "float32", False, ()),
    "reptile": ("reptile", "float32", False, ()),
    "fomaml_xla": ("fomaml", "float32", True, ()),
    "fomaml_bf16": ("fomaml", "mixed_bfloat16", False, ()),
    "fomaml_fp16": ("fomaml", "mixed_float16", False, ()),
    "fomaml_fp16_dw32": ("fomaml", "mixed_float16", False, ("DepthwiseConv2D",)),
    "fomaml_bf16_dw32": ("fomaml", "mixed_bfloat16", False, ("DepthwiseConv2D",)),
}
# Relative L2 error of one meta-step's update against float32's that each
# mode is held to: XLA reorders float sums (tests/test_learner.py::XLATest
# holds probabilities to 1e-5); bfloat16 and float16 as tests/test_precision.py
# (a meta-step within 10% for bfloat16; an inner step within 3% for float16).
TOLERANCES = {"float32": 1e-3, "mixed_bfloat16": 0.1, "mixed_float16": 0.03}
# The FSS-1000 protocol: 240 test classes x 2 draws per shot count.
PROTOCOL_TASKS = 240 * 2

FLAGS = flags.FLAGS
flags.DEFINE_string("out", "gpu_check", "Folder of gpu_check.json and .md.")
flags.DEFINE_list("modes", list(MODES), f"Modes to run, from {','.join(MODES)}.")
flags.DEFINE_integer("image_size", 224, "Input size.")
flags.DEFINE_string("encoder", "efficientnet_b0", "Encoder.")
flags.DEFINE_integer("meta_batch", 5, "Tasks per meta-step.")
flags.DEFINE_integer("train_shots", 10, "Shots per training task.")
flags.DEFINE_integer("inner_iters", 5, "Inner steps.")
flags.DEFINE_integer("inner_batch", 8, "Inner batch size.")
flags.DEFINE_integer("timed_steps", 5, "Timed meta-steps per mode (after the first).")
flags.DEFINE_integer("eval_repeats", 5, "Timed evaluation tasks (after the first).")
flags.DEFINE_float("deadline_s", 420.0, "Start no mode that would end past this.")


def device_name():
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return f"CPU ({platform.machine()}, {os.cpu_count()} cores)"
    details = tf.config.experimental.get_device_details(gpus[0])
    return f"{details.get('device_name', 'GPU')} x{len(gpus)}"


def peak_mib():
    """Peak GPU memory since the last reset, MiB (None without a GPU)."""
    if not tf.config.list_physical_devices("GPU"):
        return None
    return tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20


def reset_peak():
    if tf.config.list_physical_devices("GPU"):
        tf.config.experimental.reset_memory_stats("GPU:0")


def config_for(name, workdir):
    algo, precision, jit, float32_layers = MODES[name]
    return ExperimentConfig.build(
        "paper", algo=algo, precision=precision, jit_compile=jit,
        float32_layers=list(float32_layers), encoder=FLAGS.encoder,
        encoder_weights="none", image_size=FLAGS.image_size, dropout=0.0,
        drop_connect_rate=0.0, meta_batch=FLAGS.meta_batch,
        train_shots=FLAGS.train_shots,
        foml_tail=FLAGS.train_shots // 2 if algo == "fomaml" else None,
        inner_iters=FLAGS.inner_iters, inner_batch=FLAGS.inner_batch,
        train_query_shots=0, synthetic_classes=96, val_classes=16,
        test_classes=16, eval_tasks=1, workdir=workdir)


def flat(model):
    return np.concatenate([np.asarray(v).ravel() for v in model.get_weights()])


def run_mode(name, workdir, references):
    """One mode's row: timing, memory, and the update's distance to float32."""
    config = config_for(name, os.path.join(workdir, name))
    reset_peak()
    keras.utils.set_random_seed(0)  # The same initial weights in every mode.
    exp = Experiment(config)
    tasks = next(iter(meta_batches(exp.source, config, 0)))
    seed, meta_lr = tf.constant([0, 0]), tf.constant(1.0)
    before = flat(exp.model)
    start = time.perf_counter()
    out = exp.learner.meta_step(tasks, meta_lr, seed, tf.constant(False))
    finite = bool(out["finite"])
    first = time.perf_counter() - start
    update = flat(exp.model) - before
    seconds = []
    for i in range(FLAGS.timed_steps):
        start = time.perf_counter()
        float(exp.learner.meta_step(tasks, meta_lr, tf.constant([0, i + 1]),
                                    tf.constant(False))["meta_train_loss"])
        seconds.append(time.perf_counter() - start)
    algo, precision, jit, _ = MODES[name]
    row = {"mode": name, "algo": algo, "precision": precision, "jit_compile": jit,
           "float32_layers": list(MODES[name][3]), "finite": finite,
           "first_step_s": round(first, 3),
           "step_s": round(statistics.median(seconds), 4) if seconds else None,
           "timed_steps": len(seconds), "peak_gpu_mib": peak_mib()}
    reference = references.get(algo)
    if precision == "float32" and not jit:
        references[algo] = update
    elif reference is not None:
        rel = float(np.linalg.norm(update - reference) / np.linalg.norm(reference))
        row["rel_diff_vs_float32"] = rel
        row["tolerance"] = TOLERANCES[precision]
        row["within_tolerance"] = bool(finite and rel <= TOLERANCES[precision])
    return row, exp


def eval_row(exp):
    """One 5-shot evaluation task at the paper's omega, and the protocol time."""
    config = exp.config
    omega = config.eval_omega
    task = exp.eval_tasks("test", shots=5, count=1)[0]
    fn = exp.eval_fn(omega)
    lr, steps = tf.constant(omega.lr), tf.constant(omega.steps)
    start = time.perf_counter()
    float(tf.reduce_mean(fn(*task, lr, steps, tf.constant([0, 0]))[0]))
    first = time.perf_counter() - start
    seconds = []
    for i in range(FLAGS.eval_repeats):
        start = time.perf_counter()
        float(tf.reduce_mean(fn(*task, lr, steps, tf.constant([0, i + 1]))[0]))
        seconds.append(time.perf_counter() - start)
    per_task = statistics.median(seconds) if seconds else first
    return {"mode": exp.config.run.precision, "shots": 5,
            "omega": omega.to_dict(), "first_task_s": round(first, 3),
            "task_s": round(per_task, 4),
            "protocol_tasks_per_shot_count": PROTOCOL_TASKS,
            "projected_protocol_min_per_shot_count": round(
                per_task * PROTOCOL_TASKS / 60, 2)}


def markdown(result):
    lines = [f"Device: {result['device']}; {result['config']}; "
             f"{result['elapsed_s']:.0f} s in all"
             + (" (stopped early: deadline)" if result["stopped_early"] else "") + ".",
             "",
             "| mode | first meta-step (trace) | meta-step (median) | peak GPU memory "
             "| update vs float32 (rel. L2) | within tolerance |",
             "|---|---:|---:|---:|---:|---|"]
    for r in result["modes"]:
        peak = "-" if r["peak_gpu_mib"] is None else f"{r['peak_gpu_mib']:.0f} MiB"
        step = "-" if r["step_s"] is None else f"{r['step_s']:.3f} s"
        rel = r.get("rel_diff_vs_float32")
        verdict = ("reference" if rel is None else
                   f"{rel:.2e} | {'yes' if r['within_tolerance'] else 'NO'} "
                   f"(tolerance {r['tolerance']})")
        if rel is None:
            verdict += " | -"
        lines.append(f"| {r['mode']} | {r['first_step_s']:.2f} s | {step} | "
                     f"{peak} | {verdict} |")
    e = result.get("eval")
    if e:
        lines += ["", f"One 5-shot evaluation task at omega {e['omega']}: "
                  f"{e['task_s']:.3f} s (first {e['first_task_s']:.2f} s); the "
                  f"240 x 2 protocol: {e['projected_protocol_min_per_shot_count']:.1f} "
                  "min per shot count."]
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    unknown = [m for m in FLAGS.modes if m not in MODES]
    if unknown:
        raise app.UsageError(f"--modes: unknown {unknown}; choose from {list(MODES)}.")
    t0 = time.perf_counter()
    os.makedirs(FLAGS.out, exist_ok=True)
    result = {"device": device_name(), "tensorflow": tf.__version__,
              "keras": keras.__version__,
              "config": (f"{FLAGS.encoder} at {FLAGS.image_size} px, meta-batch "
                         f"{FLAGS.meta_batch} x {FLAGS.train_shots} shots, "
                         f"{FLAGS.inner_iters} inner steps of batch {FLAGS.inner_batch}"),
              "modes": [], "eval": None, "stopped_early": False, "elapsed_s": 0.0}

    def write():
        result["elapsed_s"] = round(time.perf_counter() - t0, 1)
        storage.write_json(os.path.join(FLAGS.out, "gpu_check.json"), result)
        storage.write_text(os.path.join(FLAGS.out, "gpu_check.md"), markdown(result))

    references, slowest, exp = {}, 0.0, None
    for name in FLAGS.modes:
        left = FLAGS.deadline_s - (time.perf_counter() - t0)
        if left < slowest or left <= 0:
            result["stopped_early"] = True
            print(f"gpu_check: {left:.0f} s left, the slowest mode took "
                  f"{slowest:.0f} s: stopping before {name}.", flush=True)
            break
        start = time.perf_counter()
        row, mode_exp = run_mode(name, FLAGS.out, references)
        if exp is None and row["precision"] == "float32":
            exp = mode_exp
        slowest = max(slowest, time.perf_counter() - start)
        result["modes"].append(row)
        print(f"gpu_check: {json.dumps(row)}", flush=True)
        write()
    if exp is not None and not result["stopped_early"]:
        result["eval"] = eval_row(exp)
        print(f"gpu_check: eval {json.dumps(result['eval'])}", flush=True)
    write()
    print(markdown(result))


if __name__ == "__main__":
    app.run(main)
