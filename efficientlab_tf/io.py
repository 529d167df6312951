"""Atomic file writes: the one "temporary file, then rename" of the package.

Every result, record, table, figure and cache goes through `atomic_path`, so
a crash or Ctrl-C never leaves a half-written file under the final name
(readers see the old file or the new one). The temporary file sits beside
the target (same filesystem, so the rename is atomic) and keeps the target's
extension, so writers that pick a format by suffix (matplotlib, PIL) work.
"""

import contextlib
import json
import os
import tempfile


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
        # mkstemp creates 0600 files; give the file the umask's usual mode.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
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
