"""FP-k: few-to-many-shot benchmark (paper section 6, Figure 3 and its table).

For each k in {1, 5, 10, 50, 100, 200, 400} with {1, 5, 10, 25, 50, 100, 200}
adaptation iterations: `tasks` fixed classes x `repeats` random draws of k
training examples and `query` test examples each; every initialization is
adapted with the update routine and scored on the test examples. Rows are
mean IoU with a 95% CI over the tasks x repeats scores.
"""

import csv
import os

import numpy as np
import tensorflow as tf
from absl import logging

from efficientlab_tf.evaluation.protocol import mean_ci95
from efficientlab_tf import storage


def plan_shots(sizes, shots, iters, tasks, query):
    """Which k values real data can serve, with the same classes for every k.

    Args:
        sizes: {class: examples} of the test classes, or None (synthetic:
            unlimited examples).
        shots, iters: Paired k values and adaptation iterations.
        tasks: Classes needed; query: test examples per draw.

    Returns:
        (shots, iters, dropped k values, min_pairs): every k uses the classes
        that hold the largest kept k + query examples (min_pairs; 0 when
        `sizes` is None).

    Raises:
        ValueError: no k fits the data.
    """
    if sizes is None:
        return list(shots), list(iters), [], 0

    def serves(k):
        return sum(c >= k + query for c in sizes.values()) >= tasks

    dropped = [k for k in shots if not serves(k)]
    kept = [(k, i) for k, i in zip(shots, iters) if serves(k)]
    if not kept:
        raise ValueError(f"no FP-k k value fits the data: fewer than {tasks} "
                         f"test classes hold k + {query} examples for any k of "
                         f"{list(shots)} (examples per class: {sizes}).")
    shots, iters = [k for k, _ in kept], [i for _, i in kept]
    return shots, iters, dropped, max(shots) + query


def run_fpk(eval_fn, task_fn, inits, shots, iters, tasks, repeats, lr, seed=0):
    """Scores initializations across k.

    Args:
        eval_fn: MetaLearner.eval_task.
        task_fn: `task_fn(task index, repeat, k) -> TaskBatch` (k support).
        inits: list of (name, load_fn) as in evaluation/compare.py; load_fn()
            puts the init's weights into the model (None: left as is).
        shots, iters: Paired lists of k and adaptation iterations.
        tasks, repeats: Tasks and draws per task.
        lr: Adaptation learning rate.

    Returns:
        list of rows {init, k, iterations, mean_iou, ci95, scores}.
    """
    rows = []
    lr = tf.constant(lr, tf.float32)
    for name, load_fn in inits:
        if load_fn is not None:
            load_fn()
        for k, n_iter in zip(shots, iters):
            scores = []
            for t in range(tasks):
                for r in range(repeats):
                    task = task_fn(t, r, k)
                    iou, _ = eval_fn(*task, lr, tf.constant(n_iter),
                                     tf.constant([seed, 1000 * t + r]))
                    scores.append(float(tf.reduce_mean(iou)))
            mean, ci = mean_ci95(scores)
            rows.append({"init": name, "k": k, "iterations": n_iter,
                         "mean_iou": mean, "ci95": ci, "scores": scores})
            logging.info("FP-k %-22s k=%3d (%3d it): mean IoU %.4f +- %.4f",
                         name, k, n_iter, mean, ci)
    return rows


def write_fpk(rows, out_dir, query=20):
    """fpk.csv, fpk.md (table: rows = k, columns = inits) and fpk.png
    (`query`: test examples per task, for the axis label)."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "fpk.csv")
    with storage.atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["init", "k", "iterations", "mean_iou", "ci95"])
        for r in rows:
            writer.writerow([r["init"], r["k"], r["iterations"],
                             f"{r['mean_iou']:.6f}", f"{r['ci95']:.6f}"])
    inits = list(dict.fromkeys(r["init"] for r in rows))
    ks = list(dict.fromkeys((r["k"], r["iterations"]) for r in rows))
    cell = {(r["init"], r["k"]): r for r in rows}
    lines = ["| k (iterations) | " + " | ".join(inits) + " |",
             "|---|" + "---:|" * len(inits)]
    for k, n in ks:
        lines.append(f"| {k} ({n}) | " + " | ".join(
            f"{cell[(i, k)]['mean_iou']:.3f} ± {cell[(i, k)]['ci95']:.3f}"
            for i in inits) + " |")
    md = "\n".join(lines) + "\n"
    storage.write_text(os.path.join(out_dir, "fpk.md"), md)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logging.warning("matplotlib missing: no fpk.png (pip install "
                        "'efficientlab-tf[plot]').")
        return md
    fig, ax = plt.subplots(figsize=(5, 3.4), dpi=120)
    for i in inits:
        xs = [k for k, _ in ks]
        ys = np.array([cell[(i, k)]["mean_iou"] for k in xs])
        es = np.array([cell[(i, k)]["ci95"] for k in xs])
        ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=i)
    ax.set_xscale("log")
    ax.set_xlabel("k training examples")
    ax.set_ylabel(f"mean IoU ({query} test examples per task)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with storage.atomic_path(os.path.join(out_dir, "fpk.png")) as tmp:
        fig.savefig(tmp)
    plt.close(fig)
    return md
