"""--mode=compare: several initializations scored on the same meta-test tasks."""

import dataclasses
import os

from absl import logging
import tensorflow as tf

from efficientlab_tf import config as config_lib
from efficientlab_tf import storage
from efficientlab_tf import summaries
from efficientlab_tf.evaluation import compare
from efficientlab_tf.evaluation import features
from efficientlab_tf.evaluation import plots
from efficientlab_tf.experiment import Experiment
from efficientlab_tf.experiment import resolve_checkpoints
from efficientlab_tf.evaluation.protocol import mean_ci95


def initializations(exp, config):
    """[(row name, load_fn)]: the random init, optionally the ImageNet
    encoder, then every run of `compare.runs`."""
    inits = [("random init", None)]
    if config.compare.imagenet:
        inits.append(("ImageNet encoder", exp.imagenet_init()))
    inits += [(os.path.basename(os.path.normpath(p)), exp.run_loader(p))
              for p in config.compare.runs]
    return inits


def run_identities(config):
    """{row name: newest checkpoint and its modification time} of each run
    of `compare.runs` (what a kept row was scored from)."""
    out = {}
    for path in config.compare.runs:
        prefix = resolve_checkpoints(path)[-1]
        out[os.path.basename(os.path.normpath(path))] = (
            f"{prefix} {tf.io.gfile.stat(prefix + '.index').mtime_nsec}")
    return out


def class_agnostic_row(exp, config, shots, count):
    """The family's oracle row (None when the source has no such oracle)."""
    scores = exp.source.class_agnostic_scores(
        "test", shots, config.data.query_shots, config.eval.seed, count)
    if scores is None:
        return None
    mean, ci = mean_ci95(scores)
    logging.info("class-agnostic predictor: mean IoU %.4f +- %.4f", mean, ci)
    return {"name": "class-agnostic (marks every object)",
            "init": "oracle object masks", "variant": "class-agnostic", "steps": 0, "mean_iou": mean,
            "ci95": ci, "per_task": scores}


def procedures(exp, config, omega):
    """(label, eval_fn, steps) of each --compare_procedures entry: the
    update routine on another scope, or the prototype head (0 steps)."""
    out = []
    for label in config.compare.procedures:
        if label == "prototype":
            out.append((label, features.prototype_eval_fn(exp.model), 0))
        else:
            out.append((label, exp.eval_fn(dataclasses.replace(omega, scope=label)),
                        omega.steps))
    return out


def rows_context(config):
    """What a kept comparison row depends on besides its init, omega and
    tasks: the task family (dataset, its folder, fold and split), the
    network and its precision, evaluation augmentation and the loss."""
    data = dataclasses.asdict(config.data)
    for key in ("data_dir", "pascal_dir"):
        if data[key]:
            data[key] = os.path.abspath(data[key])
    return {"data": data, "model": dataclasses.asdict(config.model),
            "precision": config.run.precision,
            "eval_augment": config.eval.augment,
            "weight_decay": config.meta.weight_decay}


def own_omegas(exp, config, names):
    """{row name: (eval_fn, Omega)} from --compare_omega_files."""
    out = {}
    for name, path in config.compare.omega_file_rows:
        if name not in names:
            raise ValueError(f"--compare_omega_files names row {name!r}, which "
                             f"is not compared; rows: {sorted(names)}.")
        omega = config_lib.Omega.from_file(path, config.eval_omega)
        out[name] = (exp.eval_fn(omega), omega)
    return out


def write_curves(tables, reference, workdir):
    """With curve rows: their tables (returned, for the summary) and
    `<workdir>/curve.png`; else ""."""
    first = next(iter(tables.values()))
    key = compare.row_key(next(r for r in first if r["name"] == reference))
    init = key[0] if key else reference
    section = compare.curve_section(tables, init)
    if section:
        plots.curve_plot(tables, os.path.join(workdir, "curve.png"), reference=init)
    return section and "\n" + section


def run(config, record_fn, model=None):
    if not config.compare.runs:
        raise ValueError("--mode=compare needs --compare_runs=<run dir>,...")
    record_fn(config)
    exp = Experiment(config, model)
    inits = initializations(exp, config)
    omegas = own_omegas(exp, config, [name for name, _ in inits])
    ref = config.compare.reference_row
    omega = config.eval_omega
    box = None
    sections, tables = [], {}
    for shots in config.eval.shots_list:
        tasks = exp.eval_tasks("test", shots=shots)
        logging.info("Comparing %d initializations on %d meta-test %d-shot tasks.",
                     len(inits), len(tasks), shots)
        measure = None
        if config.compare.clustering:
            def measure(model, tasks=tasks):
                return features.clustering_summary(model, tasks)
        rows = compare.compare_inits(
            exp.eval_fn(omega), exp.model, inits, tasks, omega,
            seed=config.eval.seed,
            random_factor=config.compare.random_steps_factor,
            parallel=config.eval.parallel,
            procedures=procedures(exp, config, omega), measure_fn=measure,
            own_omegas=omegas,
            # Each init's rows are kept as scored: a rerun resumes.
            cache_dir=os.path.join(config.compare.rows_dir or os.path.join(
                config.run.workdir, "rows"), f"{shots}shot"),
            identities=run_identities(config), context=rows_context(config),
            curve=((exp.learner.stepper(omega), config.compare.curve_steps)
                   if config.compare.curve_steps else None))
        if box is None:  # The box prior comes from meta-train classes.
            box = compare.fit_box_fraction(exp.eval_tasks("train", shots=shots))
        rows += compare.trivial_rows(tasks, box)
        oracle = class_agnostic_row(exp, config, shots, len(tasks))
        if oracle is not None:
            rows.append(oracle)
        compare.add_paired(rows, ref)
        for row in rows:  # One HParams session per row.
            summaries.write_session(
                os.path.join(config.run.workdir, "hparams",
                             summaries.session_name(f"{shots}shot_{row['name']}")),
                {"init": str(row["init"]), "steps": int(row["steps"]),
                 "shots": int(shots), "row": row["name"]},
                {"compare/mean_iou": row["mean_iou"], "compare/ci95": row["ci95"],
                 "compare/diff_vs_ref": row["diff_vs_ref"]})
        path = compare.write_table(rows, ref, config.run.workdir,
                                   stem=f"compare_{shots}shot")
        tables[shots] = rows
        with open(path) as f:
            sections.append(f"### {shots}-shot, {len(tasks)} meta-test tasks\n\n"
                            + f.read())
    text = "\n".join(sections) + write_curves(tables, ref, config.run.workdir)
    storage.write_text(os.path.join(config.run.workdir, "compare.md"), text)
    print(text)
    return tables
