"""The PASCAL-5i report of the few-shot segmentation literature (HSNet, HMNet).

Beside the paper's per-task mean IoU, PASCAL-5i numbers are usually reported
over 1,000 episodes as

* class-wise foreground IoU (mIoU): per test class, intersections and unions
  of the foreground summed over all its query images, divided; then the
  mean over the fold's 5 classes;
* FB-IoU: foreground and background intersections and unions summed over all
  query images of all classes, one IoU each, then their mean.

Pixels labelled 255 (VOC object boundaries) count in neither. Predictions
are thresholded at 0.5, as everywhere in the package.
"""

import math

import numpy as np
import tensorflow as tf

from efficientlab_tf.model.losses import IGNORE_LABEL


def intersections_unions(masks, probs):
    """(intersection [2], union [2]) of background and foreground, summed
    over a batch; masks [Q, H, W, 1] in {0, 1, 255}, probs [Q, H, W]."""
    masks = np.asarray(masks)[..., 0]
    pred = np.asarray(probs) >= 0.5
    valid = masks != IGNORE_LABEL
    truth = masks == 1
    inter, union = np.zeros(2), np.zeros(2)
    for c, (t, p) in enumerate(((~truth, ~pred), (truth, pred))):
        inter[c] = np.sum(t & p & valid)
        union[c] = np.sum((t | p) & valid)
    return inter, union


class Report:
    """Accumulates intersections and unions per class over episodes."""

    def __init__(self):
        self.inter, self.union, self.episodes = {}, {}, 0

    def add(self, class_name, masks, probs):
        inter, union = intersections_unions(masks, probs)
        self.inter[class_name] = self.inter.get(class_name, 0) + inter
        self.union[class_name] = self.union.get(class_name, 0) + union
        self.episodes += 1

    def result(self):
        """{"per_class_iou", "miou", "fb_iou", "episodes"}."""
        per_class = {n: float(self.inter[n][1] / max(self.union[n][1], 1))
                     for n in sorted(self.inter)}
        inter = sum(self.inter.values())
        union = sum(self.union.values())
        fb = np.asarray(inter) / np.maximum(np.asarray(union), 1)
        return {"per_class_iou": per_class,
                "miou": float(np.mean(list(per_class.values()))),
                "fb_iou": float(np.mean(fb)), "episodes": self.episodes}


def run_episodes(exp, eval_fn, omega, shots, episodes):
    """The report over `episodes` meta-test episodes, split evenly over the
    test classes (the same seeded draws for every initialization)."""
    cfg = exp.config
    names = exp.source.class_names("test", shots + cfg.data.query_shots)
    draws = int(math.ceil(episodes / len(names)))
    report = Report()
    lr = tf.constant(omega.lr, tf.float32)
    steps = tf.constant(omega.steps, tf.int32)
    tasks = exp.source.class_tasks("test", shots, cfg.data.query_shots,
                                   cfg.eval.seed + 7, draws)
    for i, (c, task) in enumerate(tasks.take(episodes)):
        _, probs = eval_fn(*task, lr, steps, tf.constant([cfg.eval.seed, i]))
        report.add(names[int(c)], task.query_masks, probs)
    return report.result()
