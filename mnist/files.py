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
import os
import shutil


@contextlib.contextmanager
def atomic_path(path, suffix=""):
    """Yields a temporary path next to `path`, moved onto `path` once the block succeeds.

    Args:
        path: The file to write.
        suffix: The temporary file's ending (e.g. ".weights.h5" or ".keras",
            which Keras requires of the names it saves to).

    On an exception the temporary file is removed and `path` is untouched.
    """
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}{suffix}"
    try:
        yield tmp
        os.replace(tmp, path)
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
