"""--mode=compare_merge: pool the per-fold tables of several compare runs.

Writes, in --workdir, `compare_merged_<k>shot.{md,json}` per shot count and
`summary.md`: every initialization's pooled mean IoU and paired difference
to the reference, with the shared and its own omega, under each adaptation
procedure, with its R_FC and its training minutes (median over folds of
`summaries.total_training_minutes`, warm starts included); with curve rows
(`--compare_curve_steps`) the adaptation curve and `curve.png`.
"""

import json
import os
import statistics

from absl import logging
import tensorflow as tf

from efficientlab_tf import storage
from efficientlab_tf import summaries
from efficientlab_tf.evaluation import compare
from efficientlab_tf.runners.compare import write_curves
from efficientlab_tf.model.efficientlab import ADAPT_SCOPES

PROCEDURE_COLUMNS = ("", *[s for s in ADAPT_SCOPES if s != "all"],
                     "prototype", "no adaptation")


def compared_runs(compare_dir):
    """The training run folders a compare workdir scored (its recorded
    config), [] when it has no record."""
    path = os.path.join(compare_dir, "config_compare.json")
    if not tf.io.gfile.exists(path):
        return []
    with tf.io.gfile.GFile(path) as f:
        return list(json.load(f)["compare"]["runs"])


def median_minutes(compare_dirs):
    """{row name: median over folds of the run's training minutes}."""
    per_name = {}
    for d in compare_dirs:
        for run in compared_runs(d):
            name = os.path.basename(os.path.normpath(run))
            try:
                per_name.setdefault(name, []).append(
                    summaries.total_training_minutes(run))
            except (FileNotFoundError, ValueError) as e:
                logging.warning("no training minutes for %s: %s", run, e)
    return {name: statistics.median(m) for name, m in per_name.items()}


def tables_by_shots(compare_dirs, shots_list):
    """{shots: [compare_<shots>shot.json of each folder that has it]}.

    A folder may hold one shot count's table (the per-fold, per-shot
    compare jobs of docs/studies/realfss34.sh) or several; every shot count
    must be found in as many folders (one per fold)."""
    found = {k: [os.path.join(d, f"compare_{k}shot.json") for d in compare_dirs
                 if os.path.isfile(os.path.join(d, f"compare_{k}shot.json"))]
             for k in shots_list}
    counts = {k: len(paths) for k, paths in found.items()}
    if not all(counts.values()) or len(set(counts.values())) > 1:
        raise FileNotFoundError(
            "--mode=compare_merge: compare_<k>shot.json found in "
            + ", ".join(f"{n} folders for {k}-shot" for k, n in counts.items())
            + f" among --compare_runs={','.join(compare_dirs)}; every shot "
            "count needs one table per fold (run --mode=compare there first).")
    return found


def run(config, record_fn, model=None):
    del model  # Merges tables only.
    if not config.compare.runs:
        raise ValueError("--mode=compare_merge needs --compare_runs=<compare "
                         "workdir of each fold>,...")
    record_fn(config)
    ref = config.compare.reference_row
    sections, merged = [], {}
    for shots, paths in tables_by_shots(config.compare.runs,
                                        config.eval.shots_list).items():
        tables = []
        for path in paths:
            with open(path) as f:
                tables.append(json.load(f))
        rows = compare.add_paired(compare.merge_tables(tables), ref)
        path = compare.write_table(rows, ref, config.run.workdir,
                                   stem=f"compare_merged_{shots}shot")
        merged[shots] = rows
        n = len(rows[0]["per_task"])
        with open(path) as f:
            sections.append(f"### {shots}-shot, {len(tables)} folds, {n} tasks\n\n"
                            + f.read())
    print("\n".join(sections))
    storage.write_text(os.path.join(config.run.workdir, "summary.md"),
                       summary(merged, ref, median_minutes(config.compare.runs))
                       + write_curves(merged, ref, config.run.workdir))
    return merged


def summary(merged, reference_row, minutes):
    """The two pivot tables of `summary.md` (see the module docstring)."""
    first = merged[next(iter(merged))]
    ref_row = next(r for r in first if r["name"] == reference_row)
    key = compare.row_key(ref_row)
    reference = key[0] if key else reference_row
    clustering = any("clustering_ratio" in r for r in first)
    return (
        f"Cells: pooled mean IoU (paired difference to `{reference}` under the "
        "same column, 95% CI).\n\n"
        "#### Shared omega and each initialization's own omega\n\n"
        + compare.study_table(merged, reference, ("", "own omega"),
                              minutes=minutes, clustering=clustering)
        + "\n#### Adaptation procedures\n\n"
        + compare.study_table(merged, reference, PROCEDURE_COLUMNS))
