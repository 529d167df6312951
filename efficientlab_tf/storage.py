"""Atomic file writes: the one "temporary file, then rename" of the package.

Also the package's rules for temporary names and failed writes:

* `temp_prefix(stem)`: temporary outputs that are too big for `atomic_path`
  (a SavedModel version, TFRecord shards) are named `<stem><host>.<pid>-`
  plus mkstemp's random letters: unpredictable (a planted symlink cannot
  be aimed at the name), and `remove_stale(folder, stem)` can tell litter
  of a process killed on this host (pid gone) from an export in progress.
* `writing(what, path)`: a failed write (disk full, file size limit,
  read-only folder) becomes one `WriteError` line naming the path and what
  was being written, instead of a TensorFlow or OS traceback.

Every result, record, table, figure and cache goes through `atomic_path`, so
a crash or Ctrl-C never leaves a half-written file under the final name
(readers see the old file or the new one). The temporary file sits beside
the target (same filesystem, so the rename is atomic) and keeps the target's
extension, so writers that pick a format by suffix (matplotlib, PIL) work.
"""

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile


class WriteError(RuntimeError):
    """A file or folder could not be written (the path and what is named)."""


def _reason(e):
    text = getattr(e, "strerror", None) or getattr(e, "message", None) or str(e)
    return str(text).strip().splitlines()[0] if str(text).strip() else type(e).__name__


def _is_write_failure(e):
    if isinstance(e, OSError):
        return True
    import tensorflow as tf  # Lazy: io is imported by light modules.

    return isinstance(e, tf.errors.OpError)


@contextlib.contextmanager
def writing(what, path):
    """Turns a failed write inside the block into `WriteError` naming `path`."""
    try:
        yield
    except WriteError:
        raise
    except Exception as e:  # noqa: BLE001 (OSError and TF's OpErrors)
        if not _is_write_failure(e):
            raise
        raise WriteError(f"cannot write {what} to {path!r}: {_reason(e)}.") from None


def check_writable(folder, what):
    """Creates `folder` if needed and proves it writable by creating (and
    removing) a file in it: `os.access` says yes to root on a read-only
    mount. Raises WriteError naming the folder and what will be written."""
    try:
        os.makedirs(folder, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-check-", dir=folder)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise WriteError(f"cannot write {what} to {folder!r}: {_reason(e)} "
                         "(checked before starting).") from None


def _host_tag():
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def temp_prefix(stem):
    """`<stem><host>.<pid>-`: the prefix of this process's temporary outputs."""
    return f"{stem}{_host_tag()}.{os.getpid()}-"


def pid_alive(pid):
    """Whether process `pid` of this host is running."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale(folder, stem):
    """Removes `<stem><host>.<pid>-*` entries of `folder` that a process of
    this host left when it died (pid no longer running); returns their
    names. Entries of live processes and of other hosts are left alone."""
    pattern = re.compile(re.escape(stem) + r"([0-9a-f]{8})\.([0-9]+)-")
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    host = _host_tag()
    for name in sorted(names):
        m = pattern.match(name)
        if not m or m.group(1) != host or pid_alive(int(m.group(2))):
            continue
        path = os.path.join(folder, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.remove(path)
        removed.append(name)
    return removed


def usual_mode(bits=0o666):
    """`bits` less the umask: the mode open() would have given a new file
    (0o777 for a folder). mkstemp/mkdtemp create 0600/0700 files, which a
    job of another user (TF Serving, a shared shard folder) cannot read."""
    umask = os.umask(0)
    os.umask(umask)
    return bits & ~umask


@contextlib.contextmanager
def atomic_path(path):
    """Yields a temporary path; renames it to `path` if the block succeeds.

    On any exception (KeyboardInterrupt included) the temporary file is
    removed and `path` is left as it was.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    base = os.path.basename(path)
    stem, ext = os.path.splitext(base)
    fd, tmp = tempfile.mkstemp(prefix=f".{stem}.", suffix=f".tmp{ext}",
                               dir=folder)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, usual_mode())  # mkstemp creates 0600 files.
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def write_text(path, text):
    """Writes `text` (str) or bytes to `path` atomically."""
    mode = "wb" if isinstance(text, bytes) else "w"
    with atomic_path(path) as tmp:
        with open(tmp, mode) as f:
            f.write(text)
    return path


def write_json(path, obj):
    """Writes `obj` as indented, key-sorted JSON atomically."""
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def cache_dir():
    """Where converted weights are cached: $EFFICIENTLAB_CACHE_DIR, else
    $XDG_CACHE_HOME/efficientlab_tf, else ~/.cache/efficientlab_tf."""
    if os.environ.get("EFFICIENTLAB_CACHE_DIR"):
        return os.environ["EFFICIENTLAB_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(
        os.path.expanduser("~"), ".cache"
    )
    return os.path.join(base, "efficientlab_tf")
