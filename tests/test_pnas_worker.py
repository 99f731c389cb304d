"""The worker process that trains children (pnas/worker.py)."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from pnas.runners import ChildJob  # noqa: E402
from pnas.worker import ChildWorker  # noqa: E402

# Every test here spawns worker processes.
pytestmark = pytest.mark.slow

CHILD = dict(actions=[0, "3x3 bconv", 0, "3x3 maxpool"], num_cells=1, num_cell_filters=[4], dense_layers=[10])


def _dataset(n=64, poison=False):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, size=n)
    x = rng.uniform(-1, 1, size=(n, 28, 28, 1)).astype("float32")
    if poison:
        x[:] = np.nan
    y = -np.ones((n, 10), "float32")
    y[np.arange(n), labels] = 1
    return [x, y, x[:32], y[:32], x[:16], y[:16]]


def _train(worker, seed, **child):
    """The `Outcome` of `worker` training CHILD (with `child` in place of its arguments) from `seed`."""
    kwargs = dict(CHILD, **child)
    return worker.train(ChildJob(seed + 1, 1, (), tuple(kwargs["actions"]), seed), kwargs)


def _kwargs(tmp_path):
    return dict(epochs=1, batchsize=32, weights_dir=str(tmp_path), log_dir=None, verbose=0)


def test_worker_trains_children_and_is_replaced_after_max_children(tmp_path):
    worker = ChildWorker(_dataset(), _kwargs(tmp_path), max_children=2)
    try:
        pids, results, spares = [], [], []
        for seed in range(3):
            outcome = _train(worker, seed)
            assert outcome.ok and outcome.job.seed == seed, outcome.error
            results.append(outcome.result)
            pids.append(worker.pid)
            spares.append(worker.spare and worker.spare[0])
        assert pids[0] == pids[1] != pids[2]
        # The replacement started with the worker's last child, and took over at the next.
        assert spares[0] is None and spares[1].pid == pids[2]
        assert spares[2] is None  # the new worker's first child of 2
        for result in results:
            assert 0.0 <= result["reward"] <= 1.0
            assert result["mul_ops"] > 0 and len(result["val_accuracy"]) == 1
        # Same seed, fresh process: the same numbers.
        again = ChildWorker(_dataset(), _kwargs(tmp_path), max_children=2)
        try:
            assert _train(again, 0).result["val_accuracy"] == results[0]["val_accuracy"]
        finally:
            again.close()
        _train(worker, 3)  # the new worker's last child: its spare starts, and close stops it
        spare = worker.spare[0]
        assert spare.is_alive()
    finally:
        worker.close()
    assert worker.process is None and worker.spare is None and not spare.is_alive()


def test_a_failing_child_is_reported_with_its_error_and_the_worker_goes_on(tmp_path):
    worker = ChildWorker(_dataset(poison=True), _kwargs(tmp_path), max_children=5)
    try:
        outcome = _train(worker, 0)
        assert not outcome.ok and outcome.result is None
        assert outcome.error.startswith("ChildTrainingError")
        assert "Traceback" in outcome.trace
        pid = worker.pid
        outcome = _train(worker, 0, actions=[0, "9x9 nonsense", 0, "3x3 bconv"])
        assert outcome.error.startswith("ValueError") and "valid operators" in outcome.error
        assert worker.pid == pid
    finally:
        worker.close()


def test_a_dead_worker_is_replaced(tmp_path):
    worker = ChildWorker(_dataset(), _kwargs(tmp_path), max_children=5)
    try:
        assert _train(worker, 0).ok
        dead = worker.pid
        worker.process.kill()
        worker.process.join()
        outcome = _train(worker, 1)
        assert worker.pid is not None and worker.pid != dead
        assert worker.process.is_alive()
        assert outcome.ok and 0.0 <= outcome.result["reward"] <= 1.0
    finally:
        worker.close()
