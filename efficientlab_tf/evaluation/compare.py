"""Comparison table: several initializations scored on the same tasks.

Every row is evaluated on one fixed list of meta-test tasks, so rows can be
compared pair by pair; the paired difference to a reference row (a random
initialization given 10x the adaptation steps by default) has its own 95% CI.
"""

import dataclasses
import hashlib
import json
import os
import re

import numpy as np
import tensorflow as tf
from absl import logging

from efficientlab_tf.evaluation import protocol
from efficientlab_tf.meta import weights as weights_lib
from efficientlab_tf.model.metrics import binary_iou
from efficientlab_tf.evaluation.protocol import mean_ci95
from efficientlab_tf import storage

BOX_FRACTIONS = tuple(np.round(np.arange(0.2, 1.0001, 0.05), 2))


def compare_inits(eval_fn, model, inits, tasks, omega, seed=0,
                  random_factor=10, parallel=1, procedures=(), measure_fn=None,
                  own_omegas=None, cache_dir=None, identities=None,
                  context=None, curve=None):
    """Scores initializations on the same tasks.

    Args:
        eval_fn: `eval_fn(support..., query..., lr, steps, seed) -> (IoU per
            query, probs)`, adapting `model` (Experiment.eval_fn(omega)).
        model: The model whose variables the inits are loaded into.
        inits: list of (name, load_fn) where load_fn() loads the init's
            weights into `model` (None: the random init as built).
        tasks: Fixed list of TaskBatch.
        omega: The adaptation omega of U (config.Omega).
        seed: Evaluation seed.
        random_factor: The random init is also given `random_factor * steps`
            (0: not).
        parallel: Tasks adapted at once (`protocol.evaluate`).
        procedures: Further adaptation procedures, (label, eval_fn, steps):
            each init gets a row "<name> [<label>]" scored with that eval_fn
            (e.g. decoder-only, last layer, the prototype head with 0 steps).
        measure_fn: `measure_fn(model) -> dict` of extra numbers for each
            init (e.g. the feature-clustering ratio), added to its row.
        own_omegas: {init name: (eval_fn, Omega)}: that init also gets a
            row "<name> [own omega]" adapted with its own omega (UHO's
            omega.json for that initialization, tuned on meta-val tasks).
        cache_dir: Folder where each initialization's rows are kept as soon
            as they are scored (`<i>_<name>.json`, written atomically); a
            comparison run again with the same settings reuses them, so an
            interrupted comparison resumes at the first unscored init.
            Rows are reused only when their fingerprint (name, omegas,
            seed, tasks' count and shapes, procedures, measure, identity)
            matches.
        identities: {init name: str} naming the weights behind a name (a
            run's newest checkpoint and its time), so that rows kept for a
            run are not reused after it trained further.
        context: JSON-able description of everything else the numbers
            depend on (dataset, data folder, fold, model, precision: see
            `runners/compare.py`), so comparisons of different folds or
            datasets sharing `cache_dir` never read each other's rows.
        curve: `(stepper, steps)`: every init also gets a row "<name>
            [after s steps]" for each s of `steps`, the shared omega's lr
            and batch size run for s steps (`protocol.evaluate_curve`: one
            adaptation per task; `stepper` is `Evaluator.stepper(omega)`).

    Returns:
        list of row dicts (name, init, variant, steps, mean_iou, ci95,
        per_task, ...). `variant` says how the init was adapted: "" (omega),
        "no adaptation", "<k>x steps", a procedure label, "own omega" or
        "after <s> steps".
    """
    random_init = weights_lib.snapshot(model.variables)
    rows = []

    def score(init, variant, n_steps, fn=eval_fn, procedure=None, lr=omega.lr):
        name = row_name(init, variant)
        result = protocol.evaluate(fn, tasks, lr, n_steps, seed=seed,
                                   name=name, parallel=parallel)
        result.update(name=name, init=init, variant=variant,
                      steps=int(n_steps), lr=float(lr))
        if procedure:
            result["procedure"] = procedure
        logging.info("%-34s %3d steps: mean IoU %.4f +- %.4f", name, n_steps,
                     result["mean_iou"], result["ci95"])
        rows.append(result)
        return result

    for index, (name, load_fn) in enumerate(inits):
        own = own_omegas.get(name) if own_omegas else None
        key = _fingerprint(name, load_fn is None, omega, own and own[1], seed,
                           tasks, random_factor, procedures, measure_fn,
                           (identities or {}).get(name), context,
                           curve and curve[1])
        # One file per init and context: comparisons of other folds or
        # datasets sharing `cache_dir` keep theirs side by side.
        path = cache_dir and os.path.join(
            cache_dir, f"{index}_{_slug(name)}_{_digest(context)}.json")
        cached = _read_cached(path, key)
        if cached is not None:
            logging.info("%s: %d rows reused from %s", name, len(cached), path)
            rows.extend(cached)
            continue
        first = len(rows)
        weights_lib.restore(model.variables, random_init)
        if load_fn is not None:
            load_fn()
        main = score(name, "", omega.steps)
        if measure_fn is not None:
            main.update(measure_fn(model))
        score(name, "no adaptation", 0)
        if curve is not None:
            stepper, curve_steps = curve
            for s, result in protocol.evaluate_curve(
                    stepper, tasks, omega.lr, curve_steps, seed=seed,
                    parallel=parallel).items():
                variant = curve_variant(s)
                result.update(name=row_name(name, variant), init=name,
                              variant=variant, steps=s, lr=float(omega.lr))
                rows.append(result)
            logging.info("%-34s curve: %s", name, ", ".join(
                f"{r['steps']}: {r['mean_iou']:.3f}" for r in rows[-len(curve_steps):]))
        if load_fn is None and random_factor:
            score(name, f"{random_factor}x steps", random_factor * omega.steps)
        for label, fn, n_steps in procedures:
            score(name, label, n_steps, fn, label)
        if own is not None:
            fn, own_omega = own
            score(name, "own omega", own_omega.steps, fn, "own omega",
                  lr=own_omega.lr)
        if path:
            storage.write_json(path, {"fingerprint": key, "rows": rows[first:]})
    weights_lib.restore(model.variables, random_init)
    return rows


def _digest(value):
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:12]


def _slug(name):
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "row"


def curve_variant(steps):
    """The variant of an adaptation-curve row."""
    return f"after {int(steps)} steps"


def curve_rows(rows):
    """{init: [row, ...] by step count} of the adaptation-curve rows."""
    out = {}
    for row in rows:
        key = row_key(row)
        if key and key[1] == curve_variant(row["steps"]):
            out.setdefault(key[0], []).append(row)
    return {init: sorted(r, key=lambda row: row["steps"]) for init, r in out.items()}


def steps_to_reach(tables, reference):
    """Markdown: the fewest curve steps at which each init's mean IoU reaches
    `reference`'s IoU after its last curve step (the paper's later claim:
    meta-learned initializations "require significantly fewer gradient
    updates"), with the paired difference there; tables {shots: rows}."""
    head, cells = ["initialization"], {}
    for shots, rows in tables.items():
        curves = curve_rows(rows)
        if reference not in curves:
            raise ValueError(f"reference {reference!r} has no curve rows.")
        target = curves[reference][-1]
        head.append(f"{shots}-shot: steps to {target['mean_iou']:.3f} "
                    f"(`{reference}` after {target['steps']})")
        for init, curve in curves.items():
            hit = next((r for r in curve if r["mean_iou"] >= target["mean_iou"]), None)
            if hit is None:
                cell = (f"> {curve[-1]['steps']} ({curve[-1]['mean_iou']:.3f} "
                        f"after {curve[-1]['steps']})")
            else:
                diff, ci = protocol.paired_difference(hit["per_task"], target["per_task"])
                cell = f"{hit['steps']} ({hit['mean_iou']:.3f}, {diff:+.3f} ± {ci:.3f})"
            cells.setdefault(init, []).append(cell)
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    lines += [f"| {init} | " + " | ".join(c) + " |" for init, c in cells.items()
              if len(c) == len(tables)]
    return "\n".join(lines) + "\n"


def curve_section(tables, reference):
    """The adaptation-curve part of a summary (empty without curve rows):
    IoU after each step count, paired with `reference` at the same count,
    and `steps_to_reach`."""
    first = next(iter(tables.values()))
    variants = [curve_variant(s) for s in sorted(
        {r["steps"] for r in first if r.get("variant") == curve_variant(r["steps"])})]
    if not variants:
        return ""
    return ("#### Adaptation curve (the shared omega's lr and batch size, "
            "s steps)\n\n" + study_table(tables, reference, variants)
            + "\n" + steps_to_reach(tables, reference))


def row_name(init, variant):
    """The display name of a row: "<init>", "<init>, no adaptation",
    "<init>, 10x steps", "<init> [<procedure or own omega>]"."""
    if not variant:
        return init
    if variant == "no adaptation" or variant.endswith("x steps"):
        return f"{init}, {variant}"
    return f"{init} [{variant}]"


# Rows of no initialization: the trivial predictors and the oracle.
NO_INIT = ("trivial", "oracle object masks")

# Bumped when rows gain fields (2: `variant`, `context`); older kept rows
# are scored again.
ROWS_VERSION = 2


def _fingerprint(name, is_random, omega, own_omega, seed, tasks, random_factor,
                 procedures, measure_fn, identity, context, curve_steps=None):
    """What an initialization's rows depend on, as JSON-able values."""
    shapes = sorted({tuple(int(d) for d in t.support_images.shape)
                     + tuple(int(d) for d in t.query_images.shape)
                     for t in tasks})
    return json.loads(json.dumps({
        "name": name, "random": bool(is_random),
        "omega": dataclasses.asdict(omega),
        "own_omega": dataclasses.asdict(own_omega) if own_omega else None,
        "seed": int(seed), "tasks": len(tasks), "shapes": shapes,
        "random_factor": int(random_factor) if is_random else None,
        "procedures": [[label, int(steps)] for label, _, steps in procedures],
        "measure": measure_fn is not None, "identity": identity,
        "context": context, "version": ROWS_VERSION,
        # Only when set: rows kept before curves existed stay valid.
        **({"curve": [int(x) for x in curve_steps]} if curve_steps else {})}))


def _read_cached(path, key):
    """The rows kept at `path` when its fingerprint is `key`, else None."""
    if not path or not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            kept = json.load(f)
    except (OSError, ValueError):
        return None
    return kept["rows"] if kept.get("fingerprint") == key else None


def centred_box(size, fraction):
    """float32 [size, size] mask of a centred square box, side `fraction` * size."""
    side = int(round(fraction * size))
    start = (size - side) // 2
    box = np.zeros((size, size), np.float32)
    box[start:start + side, start:start + side] = 1.0
    return box


def constant_prediction_scores(tasks, mask):
    """Per-task mean query IoU of predicting `mask` [H, W] for every query."""
    scores = []
    for task in tasks:
        n = task.query_masks.shape[0]
        probs = tf.broadcast_to(tf.constant(mask), [n, *mask.shape])
        scores.append(float(tf.reduce_mean(binary_iou(task.query_masks, probs))))
    return scores


def fit_box_fraction(tasks, fractions=BOX_FRACTIONS):
    """Side fraction of the centred box with the best mean IoU on `tasks`
    (meta-train tasks: the box is a prior learned from training classes)."""
    size = tasks[0].query_masks.shape[1]
    means = [np.mean(constant_prediction_scores(tasks, centred_box(size, f)))
             for f in fractions]
    return float(fractions[int(np.argmax(means))])


def trivial_rows(tasks, box_fraction):
    """Rows for two predictors that ignore the support set: every pixel
    foreground, and a centred box of side `box_fraction`."""
    size = tasks[0].query_masks.shape[1]
    rows = []
    for name, mask in (
        ("all-foreground", np.ones((size, size), np.float32)),
        (f"centred box (side {box_fraction:.2f})", centred_box(size, box_fraction)),
    ):
        scores = constant_prediction_scores(tasks, mask)
        mean, ci = mean_ci95(scores)
        rows.append({"name": name, "init": "trivial",
                     "variant": name.split(" (")[0], "steps": 0,
                     "mean_iou": mean, "ci95": ci, "per_task": scores})
        logging.info("%-34s: mean IoU %.4f +- %.4f", name, mean, ci)
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
    """The rows as a Markdown table (with per-fold means for merged rows)."""
    folds = "fold_means" in rows[0]
    clustering = any("clustering_ratio" in r for r in rows)
    lines = [
        f"| initialization | steps | mean IoU | 95% CI | minus `{reference_name}` (paired 95% CI) |"
        + (" R_FC (feature clustering) |" if clustering else "")
        + (" per-fold means |" if folds else ""),
        "|---|---:|---:|---:|---:|" + ("---:|" if clustering else "")
        + ("---|" if folds else ""),
    ]
    for r in rows:
        cell = ""
        if clustering:
            cell = (f" {r['clustering_ratio']:.3f} ± {r['clustering_ci95']:.3f} |"
                    if "clustering_ratio" in r else " |")
        lines.append(
            f"| {r['name']} | {r['steps']} | {r['mean_iou']:.4f} | "
            f"±{r['ci95']:.4f} | {r['diff_vs_ref']:+.4f} ± {r['diff_ci95']:.4f} |"
            + cell
            + (" " + " / ".join(f"{m:.3f}" for m in r["fold_means"]) + " |"
               if folds else ""))
    return "\n".join(lines) + "\n"


def write_table(rows, reference_name, workdir, stem="compare"):
    """Writes <workdir>/<stem>.md and .json atomically; returns the md path."""
    path = storage.write_text(os.path.join(workdir, f"{stem}.md"),
                         markdown_table(rows, reference_name))
    storage.write_json(os.path.join(workdir, f"{stem}.json"), rows)
    return path


def merge_tables(tables):
    """Pools per-fold comparison rows (same row names) into one table.

    Args:
        tables: list of row lists (one per fold), e.g. from compare_<k>shot.json.

    Returns:
        rows: every name present in all folds, with per-task scores
        concatenated (folds hold disjoint tasks), mean/CI over all tasks,
        and "fold_means" (the row's mean per fold).
    """
    def key(row):
        if "variant" in row:
            return (str(row["init"]), row["variant"])
        # Tables written before rows carried their variant: trivial rows
        # carry a per-fold fitted parameter in the name.
        return row["name"].split(" (")[0] if row.get("init") == "trivial" else row["name"]

    keys = [key(r) for r in tables[0]]
    common = [k for k in keys if all(any(key(r) == k for r in t) for t in tables)]
    merged = []
    for k in common:
        parts = [next(r for r in t if key(r) == k) for t in tables]
        names = {p["name"] for p in parts}
        name = (names.pop() if len(names) == 1 else
                f"{parts[0]['name'].split(' (')[0]} (fitted per fold)")
        per_task = [x for p in parts for x in p["per_task"]]
        mean, ci = mean_ci95(per_task)
        row = {"name": name, "init": parts[0]["init"],
               **({"variant": parts[0]["variant"]} if "variant" in parts[0] else {}),
               "steps": parts[0]["steps"],
               "mean_iou": mean, "ci95": ci, "per_task": per_task,
               "fold_means": [p["mean_iou"] for p in parts]}
        if all("clustering_per_task" in p for p in parts):
            ratios = [x for p in parts for x in p["clustering_per_task"]]
            row["clustering_ratio"], row["clustering_ci95"] = mean_ci95(ratios)
            row["clustering_per_task"] = ratios
        merged.append(row)
    return merged


def row_key(row):
    """(initialization, variant) of a comparison row (variant "" for the
    init under the shared omega); None for rows of no initialization
    (trivial predictors, oracles)."""
    if "variant" in row:
        return None if row["init"] in NO_INIT else (row["init"], row["variant"])
    # Rows written before they carried their variant: read it off the name.
    init, name = row.get("init"), row["name"]
    if not isinstance(init, str) or not name.startswith(init):
        return None
    rest = name[len(init):]
    if not rest:
        return init, ""
    if rest.startswith(" [") and rest.endswith("]"):
        return init, rest[2:-1]
    if rest.startswith(", "):
        return init, rest[2:]
    return None


def study_table(tables, reference, variants, minutes=None, clustering=False):
    """One Markdown table across shot counts and variants of every init.

    Args:
        tables: {shots: rows} (e.g. merged folds), rows as `compare_inits`.
        reference: The init every cell is paired with: a cell of init X,
            variant v, k shots shows X's mean IoU and the paired difference
            (95% CI) to `reference`'s row of the same variant and shots
            (own omega against the reference's own omega: each init under
            its best update routine). No reference row: the mean alone.
        variants: Columns per shot count, e.g. ("", "own omega") or
            ("", "mtl", "decoder", "head", "prototype"); "" is the shared
            omega's full fine-tune.
        minutes: {init: training minutes} for a minutes column, or None.
        clustering: Adds the R_FC column of the first shot count's "" row.

    Returns:
        The table (str); inits in the first table's order.
    """
    indexed = {}
    inits = []
    for shots, rows in tables.items():
        for row in rows:
            key = row_key(row)
            if key is None:
                continue
            indexed[(shots, *key)] = row
            if key[0] not in inits:
                inits.append(key[0])
    columns = [(shots, v) for shots in tables for v in variants
               if any((shots, i, v) in indexed for i in inits)]
    label = {"": "full, shared omega"}
    head = ["initialization"] + [
        f"{shots}-shot {label.get(v, v)}" for shots, v in columns]
    if clustering:
        head.append(f"R_FC ({next(iter(tables))}-shot)")
    if minutes is not None:
        head.append("training minutes (as logged)")
    lines = ["| " + " | ".join(head) + " |",
             "|---|" + "---:|" * (len(head) - 1)]
    for init in inits:
        cells = [init]
        for shots, v in columns:
            row = indexed.get((shots, init, v))
            ref = indexed.get((shots, reference, v))
            if row is None:
                cells.append("")
            elif ref is None or init == reference:
                cells.append(f"{row['mean_iou']:.3f}")
            else:
                diff, ci = protocol.paired_difference(row["per_task"],
                                                      ref["per_task"])
                cells.append(f"{row['mean_iou']:.3f} ({diff:+.3f} ± {ci:.3f})")
        if clustering:
            first = next(iter(tables))
            row = indexed.get((first, init, ""))
            cells.append(f"{row['clustering_ratio']:.2f}"
                         if row and "clustering_ratio" in row else "")
        if minutes is not None:
            m = minutes.get(init)
            cells.append("" if m is None else f"{m:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
