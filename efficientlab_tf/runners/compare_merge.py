"""--mode=compare_merge: pool the per-fold tables of several compare runs."""

import json
import os

from efficientlab_tf.evaluation import compare


def run(config, record_fn, model=None):
    del model  # Merges tables only.
    if not config.compare.runs:
        raise ValueError("--mode=compare_merge needs --compare_runs=<compare "
                         "workdir of each fold>,...")
    record_fn(config)
    ref = config.compare.reference_row
    sections, merged = [], {}
    for shots in config.eval.shots_list:
        tables = []
        for d in config.compare.runs:
            path = os.path.join(d, f"compare_{shots}shot.json")
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{path} not found (run --mode=compare "
                                        "there first).")
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
    return merged
