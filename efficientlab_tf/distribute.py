"""tf.distribute for meta-training: which strategy, which devices, which role.

`--strategy` picks how the tasks of a meta-batch are spread:

* `default`: one device, tasks one after another (TensorFlow's default
  strategy; nothing is distributed).
* `mirrored`: one process, one replica per local GPU; on a machine without
  GPUs, one replica per logical CPU device (`--cpu_devices`, which splits
  this machine's CPU; useful to run tasks side by side on cores the
  single-stream step leaves idle, and for tests).
* `multi_worker`: one replica per process (and per GPU in each), processes
  named by the `TF_CONFIG` environment variable (cluster + this task), the
  meta-direction all-reduced across them. Worker 0 is the chief: it alone
  writes the run's record, checkpoints, TensorBoard events, evaluations and
  the export; the other workers only compute, and every worker resumes from
  the chief's newest checkpoint, so the workdir must be readable by all of
  them (one machine, or a shared filesystem).

In every strategy the replicas adapt their tasks on carried tensors (the
Adapter's tensor form), the directions are summed across replicas and the
outer update is applied once; variables are mirrored, so checkpoints,
evaluation and export are the same as on one device.

The strategy is created once per process, before any other TensorFlow work
(`multi_worker` requires it; the CPU split must precede device set-up).
"""

import json
import os

import tensorflow as tf

_STRATEGY = {}


class DistributeError(ValueError):
    """A strategy that this process or machine cannot provide."""


def task_role(environ=None):
    """(task type, index) of this process from TF_CONFIG; ("chief"-less
    clusters count worker 0 as the chief). Without TF_CONFIG: ("worker", 0).

    Raises:
        DistributeError: TF_CONFIG is not JSON or lacks the task entry.
    """
    environ = os.environ if environ is None else environ
    raw = environ.get("TF_CONFIG")
    if not raw:
        return "worker", 0
    try:
        spec = json.loads(raw)
        task = spec["task"]
        return str(task["type"]), int(task["index"])
    except (ValueError, KeyError, TypeError) as e:
        raise DistributeError(
            f"TF_CONFIG must be JSON with 'cluster' and 'task': {{'type', "
            f"'index'}}; got {raw!r} ({e}).") from None


def is_chief(run_config, environ=None):
    """Whether this process writes the run's files (always, unless it is a
    non-chief worker of a `multi_worker` run)."""
    if run_config.strategy != "multi_worker":
        return True
    kind, index = task_role(environ)
    return kind == "chief" or (kind == "worker" and index == 0)


def split_cpu(count):
    """Splits the first CPU into `count` logical devices (before any device
    is initialised)."""
    cpus = tf.config.list_physical_devices("CPU")
    current = tf.config.get_logical_device_configuration(cpus[0])
    if current is not None and len(current) == count:
        return
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration()] * count)
    except RuntimeError:
        raise DistributeError(
            f"--cpu_devices={count}: TensorFlow's devices were already "
            "initialised in this process; split the CPU before any other "
            "TensorFlow work (run_meta.py does).") from None


def _check_cluster():
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        raise DistributeError(
            "--strategy=multi_worker needs TF_CONFIG, e.g. "
            "TF_CONFIG='{\"cluster\": {\"worker\": [\"host1:12345\", "
            "\"host2:12345\"]}, \"task\": {\"type\": \"worker\", \"index\": 0}}' "
            "on each machine (README: \"Several GPUs, several machines\").")
    task_role()
    spec = json.loads(raw)
    if not isinstance(spec.get("cluster"), dict) or not spec["cluster"]:
        raise DistributeError(f"TF_CONFIG has no 'cluster': {raw!r}.")


def get_strategy(run_config):
    """The process's tf.distribute.Strategy for `run_config` (created once).

    Raises:
        DistributeError: TF_CONFIG missing or malformed for `multi_worker`,
            or the CPU split requested after devices were set up.
    """
    if run_config.strategy == "multi_worker":
        _check_cluster()
    key = (run_config.strategy, run_config.cpu_devices)
    if key in _STRATEGY:
        return _STRATEGY[key]
    if _STRATEGY:
        raise DistributeError(
            f"this process already runs strategy {next(iter(_STRATEGY))}; "
            f"one strategy per process (asked for {key}).")
    if run_config.cpu_devices > 1:
        split_cpu(run_config.cpu_devices)
    if run_config.strategy == "default":
        strategy = tf.distribute.get_strategy()
    elif run_config.strategy == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in gpus] or [
            d.name for d in tf.config.list_logical_devices("CPU")]
        # NCCL only between GPUs; CPU replicas reduce through one device.
        ops = (None if gpus else tf.distribute.ReductionToOneDevice())
        strategy = tf.distribute.MirroredStrategy(devices, cross_device_ops=ops)
    else:
        gpus = tf.config.list_physical_devices("GPU")
        options = tf.distribute.experimental.CommunicationOptions(
            implementation=(tf.distribute.experimental.CommunicationImplementation.NCCL
                            if gpus else
                            tf.distribute.experimental.CommunicationImplementation.RING))
        strategy = tf.distribute.MultiWorkerMirroredStrategy(
            communication_options=options)
    _STRATEGY[key] = strategy
    return strategy
