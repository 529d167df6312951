"""One interface over every task family: meta-train streams and fixed eval sets."""

import tensorflow as tf

from efficientlab_tf.data import synthetic
from efficientlab_tf.data.augment import augment_task


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

    def task_of_class(self, split, position, shots, query_shots, seed):
        """One TaskBatch of the class at `position` of `split` (FP-k)."""
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
    if config.data.dataset == "fss1000":
        from efficientlab_tf.data import tfrecords
        from efficientlab_tf.data.fss1000 import FolderSource

        # A folder tree or a shard folder (tfrecords.write_shards): the same
        # splits and task sampling either way.
        cls = (tfrecords.ShardSource if tfrecords.is_shard_dir(config.data.data_dir)
               else FolderSource)
        return cls(config.data, config.model.image_size,
                   skip_bad=config.data.skip_bad_examples)
    if config.data.dataset in ("pascal5i", "fpk"):
        from efficientlab_tf.data import pascal

        cls = pascal.PascalSource if config.data.dataset == "pascal5i" else pascal.FpkSource
        return cls(config.data, config.model.image_size,
                   skip_bad=config.data.skip_bad_examples)
    raise ValueError(f"unknown dataset {config.data.dataset!r}.")


def meta_batches(source, config, start_step):
    """Endless, prefetched meta-batches for meta-iterations >= start_step.

    Augmentation (if enabled) is seeded by (run seed, task index), like the
    tasks themselves, so a resumed run sees exactly the same examples.
    """
    meta = config.meta
    first = start_step * meta.meta_batch
    ds = source.tasks("train", meta.train_shots, config.data.train_query_shots,
                      config.run.seed, start=first)
    aug = config.data.augment
    if aug.enabled:
        def augment(index, task):
            seed = tf.random.experimental.stateless_fold_in(
                synthetic.task_seed(config.run.seed, index), 1)
            return augment_task(task, seed, aug)

        ds = tf.data.Dataset.zip(
            (tf.data.Dataset.range(first, 2**62), ds)).map(
                augment, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(meta.meta_batch, drop_remainder=True).prefetch(
        tf.data.AUTOTUNE)
