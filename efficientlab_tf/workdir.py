"""A run's folder: one process at a time, a record that survives refusals,
and checkpoints that fall back past a corrupt one.

* `lock(workdir)`: an exclusive `fcntl.flock` on `<workdir>/.lock`, held for
  the whole run. The kernel drops it when the process exits or is killed, so
  a lock file left by a dead process never blocks a rerun; the second of two
  live runs on one folder is refused with one line naming the first.
* `check_resumable(workdir, config)`: before a training run resumes from
  checkpoints, the stored `config.json` must agree on everything that shapes
  the checkpointed state (`RESUME_KEYS`); every difference is named. The
  record (`flags.txt`, `config.json`) is written only after this check and
  after the run was built, so a refused rerun leaves it as it was.
* `restore_intact(checkpoint, prefixes)`: restores the newest readable
  checkpoint, warning about each unreadable (truncated, corrupt) one.

POSIX only (`fcntl`), like the rest of the tooling around TF Serving.
"""

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import socket
import stat
import sys
import time

from absl import logging

from efficientlab_tf import config as config_lib
from efficientlab_tf import storage

LOCK_FILE = ".lock"

# Config fields a resumed run must share with the stored record: they fix
# the shapes of the checkpointed variables (or, for the meta optimizer,
# which variables exist at all).
RESUME_KEYS = (
    ("model", "encoder"),
    ("model", "image_size"),
    ("model", "cut_stage"),
    ("model", "skip_stage"),
    ("model", "decoder"),
    ("model", "decoder_filters"),
    ("model", "num_classes"),
    # MTL's scales and shifts, the learned inner learning rates: variables
    # that exist only with the flag (without this check, resuming with one
    # added failed as "no checkpoint could be restored", like corruption).
    ("model", "mtl"),
    ("model", "learned_lr"),
    ("meta", "meta_optimizer"),
)


class WorkdirError(RuntimeError):
    """A run folder cannot be used as asked (locked, or another run's)."""


class CheckpointError(RuntimeError):
    """No checkpoint of a run folder could be restored."""


def prepare(workdir):
    """Creates `workdir`; a clear error if it is a file or not writable."""
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise NotADirectoryError(
            f"`workdir` {workdir!r} exists and is not a directory.")
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as e:
        raise PermissionError(
            f"cannot create `workdir` {workdir!r}: {e.strerror}.") from None
    if not os.access(workdir, os.W_OK | os.X_OK):
        raise PermissionError(f"`workdir` {workdir!r} is not writable.")


@contextlib.contextmanager
def lock(workdir):
    """Holds the exclusive lock of `workdir` (see module docstring).

    Raises:
        WorkdirError: another live process holds it.
    """
    prepare(workdir)
    path = os.path.join(workdir, LOCK_FILE)
    # O_NOFOLLOW: a symlink planted as .lock must not get its target
    # truncated (runs here are often root); a FIFO or folder is refused too.
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW
                     | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
            raise WorkdirError(
                f"the lock file {path!r} is not a regular file (a symbolic "
                "link, folder or device); remove it and rerun.") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise WorkdirError(
            f"the lock file {path!r} is not a regular file; remove it and rerun.")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        holder = os.pread(fd, 4096, 0).decode(errors="replace").strip()
        os.close(fd)
        if e.errno not in (errno.EWOULDBLOCK, errno.EACCES):
            raise
        raise WorkdirError(
            f"`workdir` {workdir!r} is in use by another run "
            f"({holder or 'unknown process'}); wait for it to finish or "
            "choose another --workdir.") from None
    try:
        previous = os.pread(fd, 4096, 0).decode(errors="replace").strip()
        pid = _parse_pid(previous)
        if pid is not None and pid != os.getpid() and not storage.pid_alive(pid):
            logging.warning("Taking over the stale lock of %s in %s (that "
                            "process no longer exists).", previous, workdir)
        program = os.path.basename(sys.argv[0]) if sys.argv else "python"
        record = (f"pid {os.getpid()} on {socket.gethostname()} since "
                  f"{time.strftime('%Y-%m-%d %H:%M:%S')} ({program})")
        os.ftruncate(fd, 0)
        os.pwrite(fd, record.encode(), 0)
        yield path
    finally:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)  # A clean exit leaves no holder behind.
        os.close(fd)  # Releases the flock.


def _parse_pid(text):
    parts = text.split()
    if len(parts) >= 2 and parts[0] == "pid" and parts[1].isdigit():
        return int(parts[1])
    return None


def remove_checkpoint_litter(folder):
    """Removes the `ckpt-N_temp` folders a killed checkpoint save left in
    `folder` (call it holding the workdir's lock: no save of another process
    can be in flight); returns their names."""
    removed = []
    if not os.path.isdir(folder):
        return removed
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if (re.fullmatch(r"ckpt-[0-9]+_temp", name) and os.path.isdir(path)
                and not os.path.islink(path)):
            shutil.rmtree(path, ignore_errors=True)
            logging.info("Removed %s, left by an interrupted checkpoint save.",
                         path)
            removed.append(name)
    return removed


def has_checkpoints(workdir):
    return os.path.isfile(os.path.join(workdir, "checkpoints", "checkpoint"))


def check_resumable(workdir, config_dict, record="config.json"):
    """Refuses to resume a run whose stored config differs in `RESUME_KEYS`.

    Args:
        workdir: The run folder.
        config_dict: `dataclasses.asdict` of the new run's config.
        record: The stored config file name.

    Raises:
        WorkdirError: naming every differing flag with both values.
    """
    path = os.path.join(workdir, record)
    if not (has_checkpoints(workdir) and os.path.isfile(path)):
        return
    try:
        with open(path) as f:
            stored = json.load(f)
    except (OSError, ValueError) as e:
        raise WorkdirError(f"{path} is unreadable ({e}); it records the run "
                           "whose checkpoints are in this workdir.") from None
    diffs = []
    for section, key in RESUME_KEYS:
        old = stored.get(section, {}).get(key)
        new = config_dict[section][key]
        if old is not None and old != new:
            name = config_lib.flag_for(section, key)
            diffs.append(f"--{name}: stored {old!r}, given {new!r}")
    if diffs:
        raise WorkdirError(
            f"{workdir!r} holds checkpoints of a run that differs: "
            f"{'; '.join(diffs)}. Use the stored flags "
            f"(--flagfile={os.path.join(workdir, 'flags.txt')}) to resume, or "
            "another --workdir for a new run.")


def _only_optional_unmatched(error, optional):
    """Whether `error` (from assert_existing_objects_matched) says that
    exactly the variables in `optional` were missing from the checkpoint.

    TensorFlow's message gives the count and shows at most 10 of the
    unmatched objects (`CheckpointLoadStatus.assert_existing_objects_matched`):
    the count must be len(optional) and every shown one optional. Beyond 10
    (MTL's scales and shifts) this cannot rule out a different set of the
    same size whose first 10 happen to be optional; the key check in
    `experiment.load_model_weights` (no "/mtl_scale/" key at all) covers
    that case."""
    found = re.search(r"Found (\d+) Python objects that were not bound",
                      str(error))
    shown = re.findall(r"<Variable path=([^,]+),", str(error))
    paths = {v.path for v in optional}
    return (found is not None and int(found.group(1)) == len(optional)
            and len(shown) == min(10, len(optional))
            and all(p in paths for p in shown))


def restore_intact(checkpoint, prefixes, what="checkpoint", optional=()):
    """Restores the newest of `prefixes` that reads; returns its prefix.

    Args:
        checkpoint: A `tf.train.Checkpoint`.
        prefixes: Checkpoint prefixes, oldest first.
        what: Word for messages.
        optional: Variables a checkpoint may lack (they keep their values;
            e.g. learned inner learning rates when warm-starting from a run
            without them).

    Raises:
        CheckpointError: none could be restored (every reason listed).
    """
    failures = []
    for prefix in reversed(list(prefixes)):
        try:
            try:
                checkpoint.restore(prefix).assert_existing_objects_matched()
            except AssertionError as e:
                if not (optional and _only_optional_unmatched(e, optional)):
                    raise
                names = [v.path for v in optional]
                logging.info("%s has no %s%s; kept their values.", prefix,
                             ", ".join(names[:4]),
                             f" and {len(names) - 4} more" if len(names) > 4 else "")
        except Exception as e:  # noqa: BLE001 (truncation raises IndexError)
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            failures.append(f"{prefix}: {type(e).__name__}: {first[:200]}")
            continue
        if failures:
            logging.warning("%s unreadable; restored %s instead.",
                            "; ".join(failures), prefix)
        return prefix
    raise CheckpointError(f"no {what} could be restored: " + "; ".join(failures))
