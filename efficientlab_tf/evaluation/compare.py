"""Comparison table: several initializations scored on the same tasks.

Every row is evaluated on one fixed list of meta-test tasks, so rows can be
compared pair by pair; the paired difference to a reference row (a random
initialization given 10x the adaptation steps by default) has its own 95% CI.
"""

import os

from absl import logging

from efficientlab_tf.evaluation import protocol
from efficientlab_tf.meta import weights as weights_lib


def compare_inits(exp, inits, tasks, steps, lr, random_factor=10):
    """Scores initializations on the same tasks.

    Args:
        exp: training.Experiment (model, learner, task source).
        inits: list of (name, load_fn) where load_fn() loads the init's
            weights into exp.model (None: the random init as built).
        tasks: Fixed list of TaskBatch.
        steps, lr: The adaptation omega of U.
        random_factor: The random init is also given `random_factor * steps`.

    Returns:
        list of row dicts (name, steps, mean_iou, ci95, per_task, ...).
    """
    random_init = weights_lib.snapshot(exp.model.variables)
    rows = []

    def score(name, init, n_steps):
        result = protocol.evaluate(exp.learner.eval_task, tasks, lr, n_steps,
                                   seed=exp.config.eval.seed, name=name)
        result.update(name=name, init=init, steps=int(n_steps), lr=float(lr))
        logging.info("%-34s %3d steps: mean IoU %.4f +- %.4f", name, n_steps,
                     result["mean_iou"], result["ci95"])
        rows.append(result)

    for name, load_fn in inits:
        weights_lib.restore(exp.model.variables, random_init)
        if load_fn is not None:
            load_fn()
        score(f"{name}", name, steps)
        score(f"{name}, no adaptation", name, 0)
        if load_fn is None:
            score(f"{name}, {random_factor}x steps", name,
                  random_factor * steps)
    weights_lib.restore(exp.model.variables, random_init)
    return rows


def add_paired(rows, reference_name):
    """Adds `diff_vs_ref` and `diff_ci95` (paired over tasks) to every row."""
    ref = next((r for r in rows if r["name"] == reference_name), None)
    if ref is None:
        raise ValueError(f"reference row {reference_name!r} not in the table.")
    for row in rows:
        row["diff_vs_ref"], row["diff_ci95"] = protocol.paired_difference(
            row["per_task"], ref["per_task"])
    return rows


def markdown_table(rows, reference_name):
    """The rows as a Markdown table."""
    lines = [
        f"| initialization | steps | mean IoU | 95% CI | minus `{reference_name}` (paired 95% CI) |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['steps']} | {r['mean_iou']:.4f} | "
            f"±{r['ci95']:.4f} | {r['diff_vs_ref']:+.4f} ± {r['diff_ci95']:.4f} |")
    return "\n".join(lines) + "\n"


def write_table(rows, reference_name, workdir, stem="compare"):
    """Writes <workdir>/<stem>.md and .json atomically; returns the md path."""
    from efficientlab_tf.training import write_json

    os.makedirs(workdir, exist_ok=True)
    md = markdown_table(rows, reference_name)
    path = os.path.join(workdir, f"{stem}.md")
    with open(path + ".tmp", "w") as f:
        f.write(md)
    os.replace(path + ".tmp", path)
    write_json(os.path.join(workdir, f"{stem}.json"), rows)
    return path
