"""Hard-task meta-batches (HT; Sun et al., "Meta-Transfer Learning for
Few-Shot Learning", CVPR 2019, section 4.2).

MTL re-samples *new* tasks of the classes a meta-learner failed on (its
"hard classes"). Here a task is named by its index in the seeded training
stream (`data/source.py`), which fixes its class; the pool of indices is
small enough to live in the checkpoint. After every meta-iteration each
task of the meta-batch is scored by its post-adaptation query IoU (the
support IoU when training tasks have no queries); the pool keeps the
`size` lowest-scoring tasks among those scored in the last
`RECENT_ITERATIONS` meta-iterations (a task scored again keeps its newest
score). A fraction of every meta-batch is then drawn from the pool, and each
pick becomes a new task of its class with fresh examples
(`source.resampled_tasks`, seeded by the index and the meta-iteration, so a
resumed run draws the same ones).
"""

import numpy as np
import tensorflow as tf

# Pool entries older than this many meta-iterations are dropped: "hard" is
# judged against the current meta-parameters, not those of long ago.
RECENT_ITERATIONS = 10


class HardTaskPool:
    """The hardest recent tasks by stream index, held in tf.Variables.

    Args:
        size: Most tasks kept.
        recent: Meta-iterations an entry stays eligible.
    """

    def __init__(self, size, recent=RECENT_ITERATIONS):
        if size < 1:
            raise ValueError(f"`hard_task_pool` must be >= 1; got {size}.")
        self.size = int(size)
        self.recent = int(recent)
        self.ids = tf.Variable(tf.fill([size], tf.constant(-1, tf.int64)),
                               trainable=False, name="hard_task_ids")
        self.scores = tf.Variable(tf.zeros([size], tf.float32), trainable=False,
                                  name="hard_task_scores")
        self.steps = tf.Variable(tf.fill([size], tf.constant(-1, tf.int64)),
                                 trainable=False, name="hard_task_steps")

    def trackables(self):
        """Checkpoint dependencies (the pool resumes with the run)."""
        return {"hard_task_ids": self.ids, "hard_task_scores": self.scores,
                "hard_task_steps": self.steps}

    def entries(self):
        """[(task index, score, meta-iteration)] in the pool, hardest first."""
        ids, scores, steps = (self.ids.numpy(), self.scores.numpy(),
                              self.steps.numpy())
        return [(int(i), float(s), int(t))
                for i, s, t in zip(ids, scores, steps) if i >= 0]

    def update(self, ids, scores, step):
        """Adds the tasks of meta-iteration `step` with their scores, drops
        entries older than `recent` iterations, keeps the `size` lowest
        scores (ties: lower index first)."""
        merged = {i: (s, t) for i, s, t in self.entries()
                  if step - t < self.recent}
        for i, s in zip(ids, scores):
            merged[int(i)] = (float(s), int(step))
        kept = sorted(merged.items(), key=lambda e: (e[1][0], e[0]))[:self.size]
        pad = self.size - len(kept)
        self.ids.assign(np.array([i for i, _ in kept] + [-1] * pad, np.int64))
        self.scores.assign(np.array([s for _, (s, _) in kept] + [0.0] * pad,
                                    np.float32))
        self.steps.assign(np.array([t for _, (_, t) in kept] + [-1] * pad,
                                   np.int64))

    def sample(self, count, seed):
        """`count` distinct task indices drawn uniformly from the pool with
        numpy's generator seeded by `seed` (a pair of ints); [] while the
        pool holds fewer than `count` tasks."""
        entries = self.entries()
        if len(entries) < count:
            return []
        rng = np.random.default_rng(list(seed))
        picks = rng.choice(len(entries), size=count, replace=False)
        return [entries[i][0] for i in sorted(picks)]


def hard_count(fraction, meta_batch):
    """Tasks of a meta-batch re-drawn from the pool: round(fraction * M),
    at least 1 when fraction > 0."""
    if fraction <= 0:
        return 0
    return max(1, int(round(fraction * meta_batch)))
