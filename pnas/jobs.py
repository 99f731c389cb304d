"""A child to train and what training it gave: `ChildJob`, `Outcome`, `run_job`.

The one floor that every runner stands on: `pnas.runners` (the inline and Ray
runners) and `pnas.worker` (the worker processes) both import it, and it
imports neither, so that the layers run one way.
"""

import dataclasses
import logging
import traceback
from typing import Optional

from mnist.files import WriteFailed

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ChildJob:
    """One child to train.

    Attributes:
        sr_no: The child's number in the search (1, 2, ...), given in beam order.
        stage: Its block count b.
        child: Its encoding (tuple of ints).
        actions: Its architecture, `[input1, 'op1', input2, 'op2', ...]`.
        seed: The seed its training starts from.
    """

    sr_no: int
    stage: int
    child: tuple
    actions: tuple
    seed: int

    @property
    def log_name(self):
        """The child's TensorBoard run name."""
        return f"child_{self.sr_no:04d}"


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What running a job gave: a result dict, or an error and its traceback."""

    job: ChildJob
    result: Optional[dict] = None
    error: Optional[str] = None
    trace: Optional[str] = None

    @property
    def ok(self):
        return self.error is None


def run_job(job, train):
    """The one way to run a child: seeds its job, trains it, and turns an exception into a failed outcome.

    The inline runner calls it in the search's process, a worker process
    (`pnas.worker`) and a Ray task in theirs, so that every backend trains the
    same child with the same numbers and records a failing child alike.

    Args:
        job: The `ChildJob`.
        train: `train(job) -> result dict`, e.g. `pnas.runners.KerasTrainer` or
            `NetworkManager.train_child` bound to its arguments.

    Returns:
        The job's `Outcome`: its result, or the error (`'Type: message'`) and its traceback.

    Raises:
        WriteFailed: a write of the child's files failed for lack of space or an I/O error.
    """
    import keras

    try:
        keras.utils.set_random_seed(job.seed)
        return Outcome(job, train(job))
    except WriteFailed:
        raise  # a full disk is not the child's fault: the search stops, to resume later
    except Exception as exc:  # a failing child fails alone: the search records it
        logger.debug("Child %s failed", job.child, exc_info=exc)
        return Outcome(job, error=f"{type(exc).__name__}: {exc}", trace="".join(traceback.format_exception(exc)))


def manager_train(manager, train_kwargs):
    """`train(job)` for `run_job`: `manager.train_child` of `model_fn` with `train_kwargs`."""
    from pnas.model import model_fn

    return lambda job: manager.train_child(model_fn, **train_kwargs)


def limit_threads(threads):
    """Runs TensorFlow's ops on `threads` threads (other backends: no effect)."""
    import keras

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)


# How a worker process or a Ray task hands a `WriteFailed` back: a plain tuple, so that the
# search, not the child, meets the full disk (`write_failed_reply`, `raise_write_failed`).
WRITE_FAILED = "write_failed"


def write_failed_reply(exc):
    """The picklable reply that stands for the `WriteFailed` `exc`."""
    return (WRITE_FAILED, exc.errno, exc.strerror, exc.filename)


def raise_write_failed(reply):
    """Raises the `WriteFailed` that `reply` stands for, if it stands for one; else returns `reply`."""
    if isinstance(reply, tuple) and reply and reply[0] == WRITE_FAILED:
        raise WriteFailed(*reply[1:])
    return reply
