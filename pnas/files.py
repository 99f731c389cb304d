"""The atomic file writes, under their older name; they live in `mnist.files`."""

from mnist.files import (  # noqa: F401
    DISK_ERRORS, WRITE_DELAY_ENV, WriteFailed, atomic_path, copy_atomic, write_atomic,
)
