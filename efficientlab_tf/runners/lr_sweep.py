"""--mode=lr_sweep: mean IoU from 10x below to 10x above the training lr
(paper Figure 2), early-stopped like UHO; lr_sweep.csv and lr_sweep.png."""

import csv
import os

import numpy as np
from absl import logging

from efficientlab_tf import storage
from efficientlab_tf.evaluation import plots
from efficientlab_tf.runners.common import experiment_with_weights
from efficientlab_tf.runners.common import scoring_tasks
from efficientlab_tf.runners.uho import score_fn


def run(config, record_fn, model=None):
    record_fn(config)
    exp, _ = experiment_with_weights(config, model)
    score = score_fn(exp, scoring_tasks(exp, config.uho.tasks))
    train = config.train_omega
    rows = []
    for lr in np.geomspace(train.lr / 10, train.lr * 10, config.uho.sweep_points):
        iou, steps = score(float(lr), config.uho.steps_range[1], train.batch_size,
                           config.uho.patience)
        rows.append({"lr": float(lr), "mean_iou": iou, "best_steps": steps})
        logging.info("lr %.5f: mean IoU %.4f at %d steps", lr, iou, steps)
    path = os.path.join(config.run.workdir, "lr_sweep.csv")
    with storage.atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["lr", "mean_iou", "best_steps"])
        writer.writeheader()
        writer.writerows(rows)
    plots.lr_sweep_plot(rows, train.lr,
                        os.path.join(config.run.workdir, "lr_sweep.png"))
    print(path)
    return rows
