"""Trains children in a separate process, replaced every few children.

TensorFlow keeps about 30 MB of every traced training function alive after the
model is gone, whatever `keras.backend.clear_session()` and `gc.collect()` do
(measured here: 10 fits of a 1-block child grew RSS by 240 MB; the same fits
run eagerly grew it by 2 MB; upstream: tensorflow/tensorflow#61791,
keras-team/keras#17458). A search trains hundreds of children, so each child
trains in a worker process that is replaced after `max_children` children and
takes its leak with it. A worker that dies (a crash, the kernel's OOM killer)
fails its child, not the search.
"""

import multiprocessing
import os

from binarized.quiet import import_keras_quietly
from mnist.files import WriteFailed
from pnas.jobs import Outcome, limit_threads, manager_train, raise_write_failed, run_job, write_failed_reply

__all__ = ["ChildWorker", "import_keras_quietly", "limit_threads"]


def _serve(conn, dataset, manager_kwargs, threads=None):
    """The worker's loop: (`ChildJob`, train_child kwargs) in, its `Outcome` (`pnas.jobs.run_job`) out."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import_keras_quietly()
    if threads:
        limit_threads(threads)

    from pnas.manager import NetworkManager

    manager = NetworkManager(dataset, **manager_kwargs)
    while True:
        message = conn.recv()
        if message is None:
            return
        job, train_kwargs = message
        try:
            conn.send(run_job(job, manager_train(manager, train_kwargs)))
        except WriteFailed as exc:  # the disk, not the child: the search must stop, not go on
            conn.send(write_failed_reply(exc))


class ChildWorker:
    """A worker process that trains children with a `NetworkManager`.

    Args:
        dataset: `[x_train, y_train, x_val, y_val, x_test, y_test]`, sent to each worker once.
        manager_kwargs: `NetworkManager` arguments other than the dataset.
        max_children: Children a worker trains before it is replaced.
        threads: CPU threads of the worker's ops (None: the backend's default,
            all cores). Workers that train children side by side share the cores.
    """

    def __init__(self, dataset, manager_kwargs, max_children=10, threads=None):
        self.dataset = dataset
        self.manager_kwargs = manager_kwargs
        self.max_children = max_children
        self.threads = threads
        self.process = None
        self.conn = None
        self.trained = 0
        self.job = None  # the job submitted and not yet answered
        self.spare = None  # (process, conn) of the next worker, started while this one trains its last child

    @property
    def pid(self):
        return None if self.process is None else self.process.pid

    def _spawn(self):
        context = multiprocessing.get_context("spawn")
        conn, theirs = context.Pipe()
        process = context.Process(
            target=_serve, args=(theirs, self.dataset, self.manager_kwargs, self.threads), daemon=True
        )
        process.start()
        theirs.close()
        return process, conn

    def _start(self):
        """Makes the spare, or a new process, the worker."""
        spare, self.spare = self.spare, None
        if spare is not None and not spare[0].is_alive():
            _kill(*spare)
            spare = None
        self.process, self.conn = spare or self._spawn()
        self.trained = 0

    def train(self, job, train_kwargs):
        """Trains the child of `job` (`NetworkManager.train_child` with `train_kwargs`); returns its `Outcome`.

        A child that raises, or whose worker dies, is an outcome with an `error`.
        """
        self.submit(job, train_kwargs)
        return self.result()

    def submit(self, job, train_kwargs):
        """Starts training one child; `result()` waits for it."""
        if self.process is None or self.trained >= self.max_children or not self.process.is_alive():
            self._close_worker()
            self._start()
        self.trained += 1
        self.job = job
        try:
            self.conn.send((job, train_kwargs))
        except (ConnectionError, BrokenPipeError):
            pass  # result() reports the dead worker
        if self.trained >= self.max_children and self.spare is None:
            # Its replacement imports TensorFlow (seconds) while this child trains.
            self.spare = self._spawn()

    def result(self):
        """The `Outcome` of the job of the last `submit` (see `train`)."""
        job, self.job = self.job, None
        try:
            reply = self.conn.recv()
        except (EOFError, ConnectionError, BrokenPipeError, OSError):
            self.process.join(timeout=5)
            code = self.process.exitcode
            self._close_worker()
            return Outcome(job, error=f"WorkerDied: the child's training process ended with exit code {code}",
                           trace="")
        return raise_write_failed(reply)

    def close(self):
        """Stops the worker (politely, then by force), and its spare."""
        self._close_worker()
        if self.spare is not None:
            _kill(*self.spare)  # it holds nothing yet
            self.spare = None

    def _close_worker(self):
        if self.process is None:
            return
        try:
            if self.process.is_alive() and self.job is None:  # a busy worker is abandoned
                self.conn.send(None)
                self.process.join(timeout=10)
        except (BrokenPipeError, ConnectionError, OSError):
            pass
        _kill(self.process, self.conn)
        self.process = self.conn = self.job = None


def _kill(process, conn):
    """Ends `process` by force if it still runs, and closes its pipe."""
    if process.is_alive():
        process.kill()
    process.join()
    conn.close()
