"""Flags -> ExperimentConfig, once; and the flagfile that repeats a run."""


from efficientlab_tf import config as config_lib
from efficientlab_tf import io


def _ints(f, name):
    try:
        return tuple(int(x) for x in f[name].value)
    except ValueError:
        raise ValueError(f"--{name} must be comma-separated integers; got "
                         f"{','.join(f[name].value)}.") from None


def config_from_flags(f):
    """ExperimentConfig from parsed flags (ValueError/FileNotFoundError on
    bad values; --omega_file is read here and recorded in eval.omega_file)."""
    c = config_lib
    config = c.ExperimentConfig(
        model=c.ModelConfig(
            encoder=f.encoder, encoder_weights=f.encoder_weights,
            image_size=f.image_size, cut_stage=f.cut_stage,
            skip_stage=f.skip_stage, decoder=f.decoder,
            decoder_filters=f.decoder_filters, dropout=f.dropout,
            drop_connect_rate=f.drop_connect_rate, bn_mode=f.bn_mode,
            learned_lr=f.learned_lr),
        data=c.DataConfig(
            dataset=f.dataset, data_dir=f.data_dir, query_shots=f.query_shots,
            train_query_shots=f.train_query_shots,
            synthetic_classes=f.synthetic_classes, split_seed=f.split_seed,
            val_classes=f.val_classes, test_classes=f.test_classes,
            fold=f.fold, num_folds=f.num_folds, pascal_dir=f.pascal_dir,
            pascal_aug=f.pascal_aug, skip_bad_examples=f.skip_bad_examples,
            augment=c.AugmentConfig(
                translate=f.augment_translate, flip=f.augment_flip,
                noise_stddev=f.augment_noise, brightness=f.augment_brightness,
                erase_prob=f.augment_erase)),
        meta=c.MetaConfig(
            algo=f.algo, train_shots=f.train_shots,
            foml_tail=f.foml_tail if f.algo in c.TAIL_ALGORITHMS else None,
            inner_iters=f.inner_iters, inner_batch=f.inner_batch,
            inner_lr=f.inner_lr, inner_optimizer=f.inner_optimizer,
            meta_batch=f.meta_batch, meta_step=f.meta_step,
            meta_step_final=f.meta_step_final, meta_iters=f.meta_iters,
            meta_optimizer=f.meta_optimizer, weight_decay=f.weight_decay,
            adapt_scope=f.adapt_scope, clustering_weight=f.clustering_weight,
            consensus=f.consensus_weight,
            hard_task_fraction=f.hard_task_fraction,
            hard_task_pool=f.hard_task_pool,
            learned_lr_step=f.learned_lr_step),
        eval=c.EvalConfig(
            shots=f.eval_shots, tasks=f.eval_tasks,
            inner_iters=f.eval_inner_iters, inner_lr=f.eval_inner_lr,
            inner_batch=f.eval_inner_batch, every=f.eval_every,
            seed=f.eval_seed, shots_list=_ints(f, "eval_shots_list"),
            draws=f.eval_draws, parallel=f.eval_parallel, pictures=f.eval_pictures,
            augment=f.eval_augment, episodes=f.pascal_episodes,
            adapt_scope=f.eval_adapt_scope),
        run=c.RunConfig(
            mode=f.mode, workdir=f.workdir, seed=f.seed,
            checkpoint_every=f.checkpoint_every,
            keep_checkpoints=f.keep_checkpoints, log_every=f.log_every,
            image_every=f.image_every, init_from=f.init_from,
            jit_compile=f.jit_compile, adapt_in_place=f.adapt_in_place,
            precision=f.precision, strategy=f.strategy,
            cpu_devices=f.cpu_devices,
            run_eagerly=f.run_eagerly,
            export=f.export),
        uho=c.UHOConfig(
            lr_range=(f.uho_lr_min, f.uho_lr_max),
            steps_range=(f.uho_steps_min, f.uho_steps_max),
            batch_sizes=_ints(f, "uho_batch_sizes"), samples=f.uho_samples,
            rounds=f.uho_rounds, keep_fraction=f.uho_keep_fraction,
            patience=f.uho_patience, tasks=f.uho_tasks,
            sweep_points=f.sweep_points, seed=f.seed),
        compare=c.CompareConfig(
            runs=tuple(f.compare_runs), imagenet=f.compare_imagenet,
            reference=f.compare_reference,
            random_steps_factor=f.random_steps_factor,
            procedures=tuple(f.compare_procedures),
            clustering=f.compare_clustering,
            omega_files=tuple(tuple(e.split("=", 1)) if "=" in e else (e,)
                              for e in f.compare_omega_files),
            rows_dir=f.compare_rows_dir),
        fpk=c.FPKConfig(
            shots=_ints(f, "fpk_shots"), iters=_ints(f, "fpk_iters"),
            tasks=f.fpk_tasks, repeats=f.fpk_repeats, query=f.fpk_query),
        convert=c.ConvertConfig(shard_dir=f.shard_dir, num_shards=f.num_shards),
        export=c.ExportConfig(export_dir=f.export_dir, adapt_data=f.adapt_data,
                              max_request_lr=f.max_request_lr,
                              max_request_steps=f.max_request_steps,
                              max_request_images=f.max_request_images,
                              max_request_pixels=f.max_request_pixels,
                              max_image_pixels=f.max_image_pixels,
                              serve_batch_size=f.serve_batch_size,
                              serve_batch_timeout_micros=f.serve_batch_timeout_micros,
                              serve_batch_threads=f.serve_batch_threads),
    )
    if f.omega_file:
        omega = c.Omega.from_file(f.omega_file, config.eval_omega)
        config = config.with_eval_omega(omega, source=f.omega_file)
    return config


def package_flag_names(f):
    """Names of the flags `cli/flags.py` defines, in definition order."""
    return [flag.name for flag in f.get_flags_for_module("efficientlab_tf.cli.flags")]


def write_flagfile(path, f):
    """Writes the package's flags in flagfile format (atomically)."""
    lines = [f"# Resolved flags of this run; repeat with --flagfile={path}"]
    for name in package_flag_names(f):
        text = f[name].serialize()
        if text:
            lines.append(text)
    io.write_text(path, "\n".join(lines) + "\n")


