"""The atomic file writes, under their older name; they live in `mnist.files`."""

from mnist.files import atomic_path, copy_atomic, write_atomic  # noqa: F401
