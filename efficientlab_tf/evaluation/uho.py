"""Update hyperparameter optimization (UHO; paper appendix C, Algorithms 1-2).

Random search over omega's inner learning rate, number of steps and inner
batch size (the paper's omega), numbered as the paper numbers it:

* **Algorithm 1** (`search`): sample `samples` configurations in the current
  ranges (learning rate log-uniform, step cap uniform, batch size uniform
  over the candidates: `--uho_batch_sizes`, else `candidate_batch_sizes` of
  the shot count); score each on tasks
  from T_tr u T_val with early stopping (`early_stop`: adapt step by step,
  stop once `patience` steps in a row bring no improvement of the mean query
  IoU, return the best IoU and the step count that reached it; the scoring
  function stops *computing* there too); refine the ranges with Algorithm 2;
  repeat until a round no longer improves the expected score (the best mean
  IoU seen so far), at most `rounds` rounds; return the best configuration
  seen.
* **Algorithm 2** (`refine_search_space`): the new ranges span the best
  `keep_fraction` of *all trials so far* (not only the last round's); the
  batch-size candidates shrink to those between the smallest and largest
  batch size of those trials.

Every trial is appended to `<workdir>/uho_trials.csv` (and TensorBoard); the
sampling is seeded, so an interrupted search resumes by replaying the same
samples and skipping trials already in the CSV. The result is written to
`<workdir>/omega.json` ({"lr", "steps", "batch_size", "optimizer", "scope"}), which
evaluation and export take with `--omega_file`.
"""

import csv
import dataclasses
import math
import os

import numpy as np
from absl import logging

from efficientlab_tf import storage
from efficientlab_tf.config import Omega

FIELDS = ("round", "trial", "lr", "max_steps", "batch_size", "best_steps",
          "mean_iou")


def early_stop(curve, patience):
    """Early stopping on a mean-IoU curve (curve[t] = IoU after t steps).

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


def early_stopped_score(step_fn, max_steps, patience):
    """Early stopping that computes only the steps it looks at.

    Args:
        step_fn: `step_fn(t) -> mean IoU after t steps`, called for
            t = 0, 1, 2, ... in order (it may advance adapted states).
        max_steps: Step cap of the trial.
        patience: Steps without improvement before stopping.

    Returns:
        (best IoU, its step count, steps computed).
    """
    curve = [step_fn(0)]
    waited = 0
    for t in range(1, max_steps + 1):
        curve.append(step_fn(t))
        if curve[t] > max(curve[:t]):
            waited = 0
        else:
            waited += 1
            if waited >= patience:
                break
    best, best_t = early_stop(curve, patience)
    return best, best_t, len(curve) - 1


def sample_configs(rng, n, lr_range, steps_range, batch_sizes):
    """n (lr, step cap, batch size) triples: lr log-uniform, caps uniform."""
    lo, hi = math.log(lr_range[0]), math.log(lr_range[1])
    return [(float(math.exp(rng.uniform(lo, hi))),
             int(rng.randint(steps_range[0], steps_range[1] + 1)),
             int(batch_sizes[rng.randint(len(batch_sizes))]))
            for _ in range(n)]


def candidate_batch_sizes(shots):
    """Inner batch sizes worth trying on `shots` support examples: the
    powers of two below it, and all of it (a larger batch is the whole
    support set too). 5 shots: (1, 2, 4, 5); 1 shot: (1,)."""
    return tuple(sorted({min(2 ** i, shots)
                         for i in range(int(math.log2(shots)) + 2)}))


def refine_search_space(trials, keep_fraction, steps_range, batch_sizes=None):
    """Algorithm 2: ranges spanned by the best `keep_fraction` of `trials`
    (all trials so far): (lr range, steps range, batch-size candidates among
    `batch_sizes` between the top trials' smallest and largest)."""
    ranked = sorted(trials, key=lambda t: -t["mean_iou"])
    top = ranked[:max(1, int(math.ceil(keep_fraction * len(ranked))))]
    lrs = [t["lr"] for t in top]
    steps = [max(t["best_steps"], 1) for t in top]
    batches = [t["batch_size"] for t in top]
    kept = tuple(b for b in batch_sizes or ()
                 if min(batches) <= b <= max(batches))
    return ((min(lrs), max(lrs)),
            (max(steps_range[0], min(steps)), max(max(steps), steps_range[0])),
            kept)


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


def search(score_fn, config, workdir, start=None, summary_fn=None, seed=0,
           shots=None):
    """Algorithm 1: the best omega found, also written to omega.json.

    Args:
        score_fn: `score_fn(lr, max_steps, batch_size, patience) -> (best
            mean IoU, its step count)` over the scoring tasks, with early
            stopping (e.g. `early_stopped_score` over adapted tasks).
        config: UHOConfig.
        workdir: Folder for uho_trials.csv and omega.json.
        start: The Omega searched from (default `Omega()`): its optimizer
            and scope are kept.
        summary_fn: Optional `summary_fn(trial_dict)` (TensorBoard).
        seed: Sampling seed when `config.seed` is None.
        shots: Support examples per task: the batch sizes searched are
            `config.batch_sizes`, else `candidate_batch_sizes(shots)`, else
            (without `shots`) `start.batch_size` alone.

    Returns:
        The best `Omega`; omega.json also holds its mean IoU and the number
        of trials.
    """
    start = start or Omega()
    os.makedirs(workdir, exist_ok=True)
    csv_path = os.path.join(workdir, "uho_trials.csv")
    done = _read_trials(csv_path)
    if done:
        logging.info("UHO: resuming with %d trials from %s.", len(done), csv_path)
    rng = np.random.RandomState(seed if config.seed is None else config.seed)
    batch_sizes = (tuple(config.batch_sizes)
                   or (candidate_batch_sizes(shots) if shots else (start.batch_size,)))
    logging.info("UHO: batch sizes %s.", ", ".join(map(str, batch_sizes)))
    lr_range, steps_range = config.lr_range, config.steps_range
    trials, expected = [], -math.inf
    new_file = not os.path.exists(csv_path)
    with open(csv_path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        if new_file:
            writer.writeheader()
        for r in range(config.rounds):
            configs = sample_configs(rng, config.samples, lr_range, steps_range,
                                     batch_sizes)
            for i, (lr, cap, batch) in enumerate(configs):
                trial = done.get((r, i))
                if trial is None:
                    iou, best_steps = score_fn(lr, cap, batch, config.patience)
                    trial = {"round": r, "trial": i, "lr": lr, "max_steps": cap,
                             "batch_size": batch, "best_steps": int(best_steps),
                             "mean_iou": float(iou)}
                    writer.writerow(trial)
                    f.flush()
                    if summary_fn:
                        summary_fn(trial)
                logging.info("UHO round %d trial %d: lr %.5f, cap %d, batch %d -> "
                             "IoU %.4f at %d steps", r, i, trial["lr"],
                             trial["max_steps"], trial["batch_size"],
                             trial["mean_iou"], trial["best_steps"])
                trials.append(trial)
            best_so_far = max(t["mean_iou"] for t in trials)
            if best_so_far <= expected:
                logging.info("UHO: round %d did not improve the best mean IoU "
                             "%.4f; stopping.", r, expected)
                break
            expected = best_so_far
            lr_range, steps_range, batch_sizes = refine_search_space(
                trials, config.keep_fraction, config.steps_range, batch_sizes)
    best = max(trials, key=lambda t: t["mean_iou"])
    omega = dataclasses.replace(start, lr=best["lr"], steps=best["best_steps"],
                                batch_size=best["batch_size"])
    path = storage.write_json(os.path.join(workdir, "omega.json"), {
        **omega.to_dict(), "mean_iou": best["mean_iou"], "trials": len(trials)})
    logging.info("UHO best: lr %.6f, %d steps, batch %d, mean IoU %.4f -> %s",
                 omega.lr, omega.steps, omega.batch_size, best["mean_iou"], path)
    return omega
