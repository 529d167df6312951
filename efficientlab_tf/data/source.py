"""One interface over every task family: meta-train streams and fixed eval sets.

`TaskSource` writes the interface down; `SyntheticSource` (the embedded
family) and `table.TableSource` (every on-disk dataset) implement it, and
`build_task_source` picks one from the config. Callers use only these
methods, never attributes of a particular source.
"""

from typing import Optional
from typing import Protocol

import tensorflow as tf

from efficientlab_tf.data import synthetic
from efficientlab_tf.data.augment import augment_task
from efficientlab_tf.data.tasks import draw_class
from efficientlab_tf.data.tasks import task_seed


class TaskSource(Protocol):
    """Where tasks come from. Task i of a stream depends only on (seed, i);
    every TaskBatch has a fixed shape ([shots | query, S, S, 3/1])."""

    def classes(self, split: str) -> list:
        """Class ids/names of "train", "val" (may be empty) or "test"."""

    def tasks(self, split: str, shots: int, query_shots: int, seed: int,
              start: int = 0, count: Optional[int] = None) -> tf.data.Dataset:
        """Stream of unbatched TaskBatch (endless when count is None)."""

    def class_tasks(self, split: str, shots: int, query_shots: int, seed: int,
                    draws: int) -> tf.data.Dataset:
        """(class position, TaskBatch) for every class of `split`, `draws` each."""

    def class_names(self, split: str, needed: int = 0) -> list:
        """Names of the class positions `class_tasks` yields."""

    def task_of_class(self, split: str, position: int, shots: int,
                      query_shots: int, seed, min_pairs: int = 0):
        """One TaskBatch of the class at `position` (FP-k, hard tasks)."""

    def task_class(self, split: str, shots: int, query_shots: int, seed: int,
                   index: int) -> int:
        """Position (as `task_of_class` takes it) of the class of task
        `index` of `tasks(split, shots, query_shots, seed)`."""

    def class_sizes(self, split: str) -> Optional[dict]:
        """{class: examples}, or None when classes have unlimited examples."""

    def class_agnostic_scores(self, split: str, shots: int, query_shots: int,
                              seed: int, count: int) -> Optional[list]:
        """Per-task IoU of marking every object on the tasks `tasks` yields,
        or None when the family has no such oracle."""


class SyntheticSource:
    """Tasks of the embedded synthetic family (`--dataset=synthetic`)."""

    def __init__(self, data_config, image_size):
        self.family = synthetic.SyntheticFamily(
            data_config.synthetic_classes, image_size, data_config.split_seed)
        self.splits = dict(zip(
            ("train", "val", "test"),
            synthetic.class_splits(
                data_config.synthetic_classes, data_config.val_classes,
                data_config.test_classes, data_config.split_seed),
        ))

    def classes(self, split):
        if split not in self.splits:
            raise ValueError(
                f"split must be one of {sorted(self.splits)}; got {split!r}.")
        return self.splits[split]

    def tasks(self, split, shots, query_shots, seed, start=0, count=None):
        """tf.data stream of unbatched TaskBatch; task i depends on (seed, i)."""
        return synthetic.task_dataset(
            self.family, self.classes(split), shots, query_shots, seed,
            start=start, count=count)

    def class_agnostic_scores(self, split, shots, query_shots, seed, count):
        """Per-task IoU of marking every object, on the tasks `tasks` yields."""
        return synthetic.class_agnostic_scores(
            self.family, self.classes(split), shots, query_shots, seed, count)

    def class_sizes(self, split):
        """None: synthetic classes have unlimited examples."""
        del split
        return None

    def task_class(self, split, shots, query_shots, seed, index):
        """Position of the class of task `index` of `tasks(split, ...)`."""
        del shots, query_shots  # Every class serves every task size.
        return int(draw_class(seed, index, len(self.classes(split)))[0])

    def task_of_class(self, split, position, shots, query_shots, seed,
                      min_pairs=0):
        """One TaskBatch of the class at `position` of `split` (FP-k)."""
        del min_pairs  # Unlimited examples.
        classes = self.classes(split)
        return self.family.task_of_class(classes[position], classes, shots,
                                         query_shots, seed)

    def class_names(self, split, needed=0):
        """Names of the class positions `class_tasks` yields."""
        del needed  # Synthetic classes have unlimited images.
        return [f"class_{c}" for c in self.classes(split)]

    def class_tasks(self, split, shots, query_shots, seed, draws):
        """(class position, TaskBatch) for every class of `split`, `draws` each."""
        return synthetic.class_task_dataset(
            self.family, self.classes(split), shots, query_shots, seed, draws)


def build_task_source(config):
    """TaskSource for `config.data.dataset`."""
    if config.data.dataset == "synthetic":
        return SyntheticSource(config.data, config.model.image_size)
    size, skip = config.model.image_size, config.data.skip_bad_examples
    if config.data.dataset == "fss1000":
        from efficientlab_tf.data import fss1000
        from efficientlab_tf.data import tfrecords

        # A folder tree or a shard folder (tfrecords.write_shards): the same
        # splits and task sampling either way.
        if tfrecords.is_shard_dir(config.data.data_dir):
            return tfrecords.shard_source(config.data, size, skip)
        return fss1000.folder_source(config.data, size, skip)
    if config.data.dataset in ("pascal5i", "fpk"):
        from efficientlab_tf.data import pascal

        build = (pascal.pascal_source if config.data.dataset == "pascal5i"
                 else pascal.fpk_source)
        return build(config.data, size, skip)
    raise ValueError(f"unknown dataset {config.data.dataset!r}.")


def _augmented(config, task, seed):
    """`task` with its support and query augmented as meta-training tasks
    are (`data.augment`), seeded by `seed`."""
    return augment_task(task, tf.random.experimental.stateless_fold_in(seed, 1),
                        config.data.augment)


def training_tasks(source, config, first, count=None):
    """Meta-training tasks first, first + 1, ... of the seeded stream.

    Task i is a pure function of (run seed, i): its class, its examples and
    its augmentation (seeded by (run seed, i) like the task itself), so a
    resumed run, or a hard task re-drawn by index, sees exactly the same
    examples.
    """
    meta = config.meta
    ds = source.tasks("train", meta.train_shots, config.data.train_query_shots,
                      config.run.seed, start=first, count=count)
    aug = config.data.augment
    if aug.enabled:
        def augment(index, task):
            return _augmented(config, task, task_seed(config.run.seed, index))

        ds = tf.data.Dataset.zip(
            (tf.data.Dataset.range(first, 2**62), ds)).map(
                augment, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds


# Tag of the seeds of re-sampled hard tasks (any constant works; it keeps
# them apart from the stream's own task seeds).
HARD_TASK_SEED_TAG = 104729


def resampled_tasks(source, config, indices, step):
    """New tasks of the classes of training tasks `indices` (MTL's hard-task
    meta-batch re-samples the classes a meta-learner failed on): for each
    index i, a task of the class of stream task i with examples (and
    augmentation) seeded by (run seed, i, meta-iteration `step`), so a class
    re-drawn twice gets other examples each time, and a resumed run the
    same ones. Stacked into one TaskBatch with a leading axis."""
    meta, query = config.meta, config.data.train_query_shots
    tasks = []
    for i in indices:
        position = source.task_class("train", meta.train_shots, query,
                                     config.run.seed, int(i))
        seed = tf.random.experimental.stateless_fold_in(
            tf.random.experimental.stateless_fold_in(
                task_seed(config.run.seed, int(i)), HARD_TASK_SEED_TAG), step)
        task = source.task_of_class("train", position, meta.train_shots,
                                    query, seed)
        if config.data.augment.enabled:
            task = _augmented(config, task, seed)
        tasks.append(task)
    return tf.nest.map_structure(lambda *xs: tf.stack(xs), *tasks)


def meta_batches(source, config, start_step):
    """Endless, prefetched meta-batches for meta-iterations >= start_step:
    meta-batch s holds tasks s*M .. s*M + M - 1 (`training_tasks`)."""
    meta = config.meta
    ds = training_tasks(source, config, start_step * meta.meta_batch)
    # One meta-batch ahead is enough: a meta-step takes far longer than the
    # pipeline needs for the next batch. An AUTOTUNE buffer filled up while
    # the slow steps ran, and when training ended, freeing the iterator waited
    # for all that queued work: 30-41 s of silence before exit in each of
    # three 224 px rehearsal runs, against 2 s with one batch ahead
    # (BENCHMARKS.md, paper-scale rehearsal).
    return ds.batch(meta.meta_batch, drop_remainder=True).prefetch(1)
