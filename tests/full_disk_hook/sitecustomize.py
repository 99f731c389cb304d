"""A full disk for child weights, in every process that starts with this folder on PYTHONPATH.

Used by tests/test_disk_errors.py to reach the writes of worker processes and Ray
tasks, which a monkeypatch in the test's own process does not. With
PNAS_TEST_FULL_DISK_COUNTER set (a file), the PNAS_TEST_FULL_DISK_AT-th move of a
child's weights into place (1-based, counted over all processes) and every later
one fail with ENOSPC, as a disk that filled up would.
"""

import errno
import os

_COUNTER = os.environ.get("PNAS_TEST_FULL_DISK_COUNTER")

if _COUNTER:
    _real_replace = os.replace

    def _replace(src, dst, *args, **kwargs):
        name = os.path.basename(os.fspath(dst))
        if name.startswith("child") and name.endswith(".weights.h5"):
            with open(_COUNTER, "a") as f:  # one byte per write, appended: counts across processes
                f.write("x")
            if os.path.getsize(_COUNTER) >= int(os.environ["PNAS_TEST_FULL_DISK_AT"]):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return _real_replace(src, dst, *args, **kwargs)

    os.replace = _replace
