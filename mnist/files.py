"""Atomic file writes: a reader sees the old file or the new one, never a part.

Every output that a killed run could leave half written (the search state, the
logs, weights, the MNIST cache, exports) goes through `atomic_path`.

Why here: mnist/ is the lowest layer (standard library and NumPy only; it imports
nothing of the project's), so every package may use this module without an import
running against the layers: binarized/ and pnas/ import it as `mnist.files`, and
download_mnist.py, run as a script before the requirements are installed, finds it
next to itself.
"""

import contextlib
import errno
import os
import shutil
import time

# A full disk, a quota, an I/O error or a read-only file system: the run cannot
# go on, and the user must act (free space, fix the disk) before resuming it.
DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EFBIG}

# For bench/chaos.py only: seconds each write waits between its temporary file and the
# `os.replace`, so that the bench's kills can land inside writes. Unset (0) everywhere else.
WRITE_DELAY_ENV = "PNAS_CHAOS_WRITE_DELAY_S"


class WriteFailed(OSError):
    """A file could not be written for lack of space or an I/O error; the file named is untouched."""

    def __str__(self):
        return f"cannot write {self.filename}: {self.strerror} ({errno.errorcode.get(self.errno, self.errno)})"


@contextlib.contextmanager
def atomic_path(path, suffix=""):
    """Yields a temporary path next to `path`, moved onto `path` once the block succeeds.

    Args:
        path: The file to write.
        suffix: The temporary file's ending (e.g. ".weights.h5" or ".keras",
            which Keras requires of the names it saves to).

    On an exception the temporary file is removed and `path` is untouched.

    Raises:
        WriteFailed: the write failed with a disk error (`DISK_ERRORS`, e.g.
            ENOSPC or EIO), naming `path` and the cause.
    """
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}{suffix}"
    try:
        yield tmp
        if os.environ.get(WRITE_DELAY_ENV):
            time.sleep(float(os.environ[WRITE_DELAY_ENV]))
        os.replace(tmp, path)
    except WriteFailed:
        raise
    except OSError as exc:
        if exc.errno not in DISK_ERRORS:
            raise
        raise WriteFailed(exc.errno, exc.strerror or os.strerror(exc.errno), path) from exc
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_atomic(path, data):
    """Writes `data` (str or bytes) to `path` through a temporary file, fsync and `os.replace`."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb" if isinstance(data, bytes) else "w") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def copy_atomic(source, path):
    """Copies the file `source` to `path` through a temporary file and `os.replace`."""
    with atomic_path(path) as tmp:
        shutil.copyfile(source, tmp)
