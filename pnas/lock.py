"""One search (or `-ta` training) per output folder: an exclusive `fcntl.flock`.

Two processes writing the same search state from their own memory lose each
other's records (the last writer wins), so a search locks its
`logs/{EXPERIMENT_NAME}/` folder before it writes anything, and holds the
lock until it ends. The kernel releases a `flock` when its process dies,
however it dies, so a killed search never leaves a stale lock behind.

The lock file holds the holder's process id and host, for the error line of
the process that is refused.
"""

import fcntl
import os
import socket

LOCK_NAME = ".lock"


class ExperimentInUse(RuntimeError):
    """Another process holds the lock; the message names its process id and host."""


def _holder(path):
    try:
        with open(path) as f:
            text = f.read().split()
    except OSError:
        text = []
    pid = text[0] if len(text) > 0 else "?"
    host = text[1] if len(text) > 1 else "?"
    return pid, host


class FolderLock:
    """An exclusive lock on a folder, held from `acquire()` until `release()` or the process ends.

    Args:
        folder: The folder to lock (created if missing; the lock file is
            `folder/.lock`).
        what: How the error line names the folder's owner (e.g. "the experiment 'default'").
    """

    def __init__(self, folder, what=None):
        self.folder = os.fspath(folder)
        self.path = os.path.join(self.folder, LOCK_NAME)
        self.what = what or self.folder
        self._fd = None

    def held_by_other(self):
        """(pid, host) of another process holding the lock, or None; creates and changes nothing.

        Lets a refused process stop before it creates a folder or a file.
        """
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return None  # no lock file: nobody has ever locked this folder, or it was removed
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _holder(self.path)
        finally:
            os.close(fd)  # closing drops the probe's shared lock
        return None

    def describe(self, pid, host):
        """The refusal's message: who holds the lock, and what to do."""
        return (
            f"{self.what} is in use by process {pid} on host {host} ({self.path}); wait for it to end, "
            "stop it, or choose another --EXPERIMENT_NAME"
        )

    def _refused(self, pid, host):
        return ExperimentInUse(self.describe(pid, host))

    def acquire(self):
        """Takes the lock.

        Raises:
            ExperimentInUse: another process holds it. Nothing was created
                or written then, unless the folder did not exist yet.
        """
        other = self.held_by_other()
        if other is not None:
            raise self._refused(*other)
        os.makedirs(self.folder, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            # Another process took it between the probe and here.
            os.close(fd)
            raise self._refused(*_holder(self.path)) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self):
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
