"""Update hyperparameter optimization (UHO; paper appendix C, Algorithms 1-2).

Random search over the inner learning rate and the number of steps (and,
by flag, the inner batch size) of the update routine:

* Algorithm 1 (early stopping): adapt step by step; after each step score
  the query IoU, averaged over the validation tasks; stop once `patience`
  steps in a row bring no improvement; return the best mean IoU and the
  step count that reached it.
* Algorithm 2: sample `samples` configurations in the current ranges
  (learning rate log-uniform, step cap uniform), score each with Algorithm
  1, shrink the ranges to the span of the best `keep_fraction` of them,
  repeat `rounds` times; return the best configuration seen.

Every trial is appended to `<workdir>/uho_trials.csv` (and TensorBoard);
the sampling is seeded, so an interrupted search resumes by replaying the
same samples and skipping trials already in the CSV. The result is written
to `<workdir>/omega.json` ({"lr": .., "steps": .., "batch_size": ..}),
which evaluation and export take with `--omega_file`.
"""

import csv
import dataclasses
import math
import os

import numpy as np
from absl import logging
from efficientlab_tf import io

FIELDS = ("round", "trial", "lr", "max_steps", "batch_size", "best_steps",
          "mean_iou")


@dataclasses.dataclass(frozen=True)
class UHOConfig:
    """Search space and budget.

    Attributes:
        lr_range: (low, high) of the inner learning rate (log-uniform).
        steps_range: (low, high) of the step cap per trial.
        batch_sizes: Inner batch sizes to try (one entry: fixed).
        samples: Configurations per round (n).
        rounds: Rounds of range shrinking (b).
        keep_fraction: Fraction of a round's best trials that set the next
            round's ranges (x%).
        patience: Early-stopping patience in steps (3).
        seed: Sampling seed.
    """

    lr_range: tuple = (0.005, 0.5)
    steps_range: tuple = (1, 20)
    batch_sizes: tuple = (8,)
    samples: int = 8
    rounds: int = 3
    keep_fraction: float = 0.25
    patience: int = 3
    seed: int = 0

    def __post_init__(self):
        lo, hi = self.lr_range
        if not 0 < lo <= hi:
            raise ValueError(f"`uho_lr_range` must satisfy 0 < low <= high; got {self.lr_range}.")
        s_lo, s_hi = self.steps_range
        if not 1 <= s_lo <= s_hi:
            raise ValueError(f"`uho_steps_range` must satisfy 1 <= low <= high; got {self.steps_range}.")
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ValueError(f"`uho_batch_sizes` must be positive; got {self.batch_sizes}.")
        if self.samples < 1 or self.rounds < 1 or self.patience < 1:
            raise ValueError("`uho_samples`, `uho_rounds` and `uho_patience` must be >= 1.")
        if not 0 < self.keep_fraction <= 1:
            raise ValueError(f"`uho_keep_fraction` must be in (0, 1]; got {self.keep_fraction}.")


def early_stop(curve, patience):
    """Algorithm 1 on a mean-IoU curve (curve[t] = IoU after t steps).

    Returns (best IoU, its step count); steps after `patience` steps
    without improvement are never looked at.
    """
    best, best_t, waited = curve[0], 0, 0
    for t in range(1, len(curve)):
        if curve[t] > best:
            best, best_t, waited = curve[t], t, 0
        else:
            waited += 1
            if waited >= patience:
                break
    return float(best), int(best_t)


def sample_configs(rng, n, lr_range, steps_range, batch_sizes):
    """n (lr, step cap, batch size) triples: lr log-uniform, caps uniform."""
    lo, hi = math.log(lr_range[0]), math.log(lr_range[1])
    return [(float(math.exp(rng.uniform(lo, hi))),
             int(rng.randint(steps_range[0], steps_range[1] + 1)),
             int(batch_sizes[rng.randint(len(batch_sizes))]))
            for _ in range(n)]


def shrink(trials, keep_fraction, steps_range):
    """Ranges spanned by the best `keep_fraction` of `trials`."""
    ranked = sorted(trials, key=lambda t: -t["mean_iou"])
    top = ranked[:max(1, int(math.ceil(keep_fraction * len(ranked))))]
    lrs = [t["lr"] for t in top]
    steps = [max(t["best_steps"], 1) for t in top]
    # Keep room for early stopping to look `patience` steps further.
    return ((min(lrs), max(lrs)),
            (max(steps_range[0], min(steps)), max(max(steps), steps_range[0])))


def _read_trials(path):
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        rows = list(csv.DictReader(f))
    done = {}
    for r in rows:
        done[(int(r["round"]), int(r["trial"]))] = {
            "round": int(r["round"]), "trial": int(r["trial"]),
            "lr": float(r["lr"]), "max_steps": int(r["max_steps"]),
            "batch_size": int(r["batch_size"]),
            "best_steps": int(r["best_steps"]), "mean_iou": float(r["mean_iou"])}
    return done


def search(curve_fn, config, workdir, summary_fn=None):
    """Runs Algorithm 2; returns the best trial (a dict) and writes omega.json.

    Args:
        curve_fn: `curve_fn(lr, max_steps, batch_size) -> mean IoU after
            0..max_steps steps` over the validation tasks (list of floats).
        config: UHOConfig.
        workdir: Folder for uho_trials.csv and omega.json.
        summary_fn: Optional `summary_fn(trial_dict)` (TensorBoard).
    """
    os.makedirs(workdir, exist_ok=True)
    csv_path = os.path.join(workdir, "uho_trials.csv")
    done = _read_trials(csv_path)
    if done:
        logging.info("UHO: resuming with %d trials from %s.", len(done), csv_path)
    rng = np.random.RandomState(config.seed)
    lr_range, steps_range = config.lr_range, config.steps_range
    all_trials = []
    new_file = not os.path.exists(csv_path)
    with open(csv_path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        if new_file:
            writer.writeheader()
        for r in range(config.rounds):
            configs = sample_configs(rng, config.samples, lr_range, steps_range,
                                     config.batch_sizes)
            trials = []
            for i, (lr, cap, batch) in enumerate(configs):
                trial = done.get((r, i))
                if trial is None:
                    curve = curve_fn(lr, cap, batch)
                    iou, best_steps = early_stop(curve, config.patience)
                    trial = {"round": r, "trial": i, "lr": lr, "max_steps": cap,
                             "batch_size": batch, "best_steps": best_steps,
                             "mean_iou": iou}
                    writer.writerow(trial)
                    f.flush()
                    if summary_fn:
                        summary_fn(trial)
                logging.info("UHO round %d trial %d: lr %.5f, cap %d, batch %d -> "
                             "IoU %.4f at %d steps", r, i, trial["lr"],
                             trial["max_steps"], trial["batch_size"],
                             trial["mean_iou"], trial["best_steps"])
                trials.append(trial)
            all_trials.extend(trials)
            lr_range, steps_range = shrink(trials, config.keep_fraction,
                                           config.steps_range)
    best = max(all_trials, key=lambda t: t["mean_iou"])
    omega = {"lr": best["lr"], "steps": best["best_steps"],
             "batch_size": best["batch_size"], "mean_iou": best["mean_iou"]}
    path = io.write_json(os.path.join(workdir, "omega.json"), omega)
    logging.info("UHO best: lr %.6f, %d steps, batch %d, mean IoU %.4f -> %s",
                 omega["lr"], omega["steps"], omega["batch_size"],
                 omega["mean_iou"], path)
    return best
