"""--mode=convert: a dataset to TFRecord shards (lossless, checked)."""

from efficientlab_tf.data import pascal
from efficientlab_tf.data import tfrecords


def run(config, record_fn, model=None):
    del model  # Converts data only.
    shard_dir = config.convert.shard_dir
    if not config.data.data_dir or not shard_dir:
        raise ValueError("--mode=convert needs --data_dir (FSS-1000 layout, or a "
                         "VOC root with --dataset=pascal5i, or FSS-1000 with "
                         "--dataset=fpk --pascal_dir) and --shard_dir.")
    record_fn(config)
    if config.data.dataset in ("pascal5i", "fpk"):
        index = pascal.write_shards(config.data, shard_dir,
                                    config.convert.num_shards)
    else:
        index = tfrecords.write_shards(config.data.data_dir, shard_dir,
                                       config.convert.num_shards,
                                       skip_bad=config.data.skip_bad_examples)
    print(f"{index['examples']} examples, {len(index['classes'])} classes -> "
          f"{shard_dir}")
    return index
