"""The worker process that trains children (pnas/worker.py)."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from pnas.worker import ChildFailed, ChildWorker  # noqa: E402

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


def _kwargs(tmp_path):
    return dict(exp_name="w", epochs=1, batchsize=32, weights_dir=str(tmp_path), log_dir=None, verbose=0)


def test_worker_trains_children_and_is_replaced_after_max_children(tmp_path):
    worker = ChildWorker(_dataset(), _kwargs(tmp_path), max_children=2)
    try:
        pids, results = [], []
        for seed in range(3):
            results.append(worker.train(seed, **CHILD))
            pids.append(worker.pid)
        assert pids[0] == pids[1] != pids[2]
        for result in results:
            assert 0.0 <= result["reward"] <= 1.0
            assert result["mul_ops"] > 0 and len(result["val_accuracy"]) == 1
        # Same seed, fresh process: the same numbers.
        again = ChildWorker(_dataset(), _kwargs(tmp_path), max_children=2)
        try:
            assert again.train(0, **CHILD)["val_accuracy"] == results[0]["val_accuracy"]
        finally:
            again.close()
    finally:
        worker.close()
    assert worker.process is None


def test_a_failing_child_is_reported_with_its_error_and_the_worker_goes_on(tmp_path):
    worker = ChildWorker(_dataset(poison=True), _kwargs(tmp_path), max_children=5)
    try:
        with pytest.raises(ChildFailed) as info:
            worker.train(0, **CHILD)
        assert info.value.error.startswith("ChildTrainingError")
        assert "Traceback" in info.value.trace
        pid = worker.pid
        with pytest.raises(ChildFailed) as info:
            worker.train(0, **dict(CHILD, actions=[0, "9x9 nonsense", 0, "3x3 bconv"]))
        assert info.value.error.startswith("ValueError") and "valid operators" in info.value.error
        assert worker.pid == pid
    finally:
        worker.close()


def test_a_dead_worker_is_replaced(tmp_path):
    worker = ChildWorker(_dataset(), _kwargs(tmp_path), max_children=5)
    try:
        worker.train(0, **CHILD)
        dead = worker.pid
        worker.process.kill()
        worker.process.join()
        result = worker.train(1, **CHILD)
        assert worker.pid is not None and worker.pid != dead
        assert worker.process.is_alive()
        assert 0.0 <= result["reward"] <= 1.0
    finally:
        worker.close()
