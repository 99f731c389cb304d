"""What the tests share: the `slow` marker, the train.py runner, tiny settings and synthetic data.

The development loop skips the slow tests (`python -m pytest -q -m "not slow" tests`);
CI runs them all. A test is slow when it launches train.py, spawns a worker process,
starts Ray or trains more than a few batches.
"""

import itertools
import json
import os
import pathlib
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import train  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
TRAIN = REPO_ROOT / "train.py"
MNIST_DIR = REPO_ROOT / "data" / "mnist"
# Port 9 (discard) on loopback: nothing listens, so no test waits on the network.
UNREACHABLE = "http://127.0.0.1:9/"
# Upper bound on one train.py run of a test; a tiny search takes well under a minute.
TIMEOUT_S = 300


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: launches train.py, spawns a worker process, starts Ray or trains more than "
        "a few batches (left out of the development loop: -m \"not slow\")")


# ------------------------------------------------------------------ train.py as a user runs it
def cli_env(data_dir=MNIST_DIR, **extra):
    """The environment of a train.py run: local MNIST, no network, the repository importable."""
    env = dict(os.environ)
    env.update(MNIST_DATA_DIR=str(data_dir), MNIST_MIRRORS=UNREACHABLE, PYTHONPATH=str(REPO_ROOT),
               TF_CPP_MIN_LOG_LEVEL="3")
    env.update(extra)
    return env


def run_train(cwd, *args, env=None):
    """Runs `python train.py ARGS` in `cwd`; returns the `CompletedProcess` (text output)."""
    return run_command([sys.executable, str(TRAIN), *args], cwd, env=env)


def run_command(argv, cwd, env=None):
    """Runs `argv` in `cwd` with `cli_env()` (or `env`); returns the `CompletedProcess`."""
    return subprocess.run(argv, cwd=cwd, env=env or cli_env(), capture_output=True, text=True,
                          timeout=TIMEOUT_S)


def assert_ok(result):
    """Returns `result` after checking that it exited 0, showing the end of its output if not."""
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


# The plots that a search and `python -m pnas.report` write.
PLOTS = ("rewards.png", "predicted_vs_actual.png", "pareto.png")


def is_png(path):
    """Whether `path` holds a PNG image (signature, header chunk) of some substance."""
    data = pathlib.Path(path).read_bytes()
    return data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and len(data) > 1000


def read_jsonl(path):
    """The JSON objects of a JSON-lines file, in order."""
    with open(path) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="session")
def mnist_dir():
    """The verified MNIST folder of the repository; skips the test where MNIST is not available."""
    from mnist.download_mnist import MnistUnavailableError, ensure_mnist

    try:
        return ensure_mnist(MNIST_DIR)
    except MnistUnavailableError as exc:
        pytest.skip(f"MNIST is not available: {exc}")


# ------------------------------------------------------------------ in-process searches
# Settings small enough to train a whole B=2 search in seconds.
TINY = {
    "EXPERIMENT_NAME": "tiny",
    "operators": ["3x3 bconv", "3x3 maxpool"],
    "B": 2,
    "K_": 2,
    "MAX_EPOCHS": 1,
    "BATCHSIZE": 32,
    "NUM_CELLS": 1,
    "NUM_CELL_FILTERS": [4],
    "DENSE_LAYERS": [10],
    "RNN_TRAINING_EPOCHS": 2,
    "CONTROLLER_CELLS": 8,
    "VERBOSE": 0,
    "FINAL_TOP": 0,  # the final stage has tests of its own (test_final_stage.py)
}


def tiny_settings(**overrides):
    """train.py's settings with TINY and `overrides` applied, as train.py passes them to Search."""
    settings = {name: getattr(train, name) for name in train.SETTINGS}
    settings.update(TINY)
    settings.update(overrides)
    settings["DROPOUT"] = tuple(settings["DROPOUT"])
    return settings


def tiny_config(**overrides):
    """The `SearchConfig` of `tiny_settings(**overrides)`."""
    from pnas.config import SearchConfig

    return SearchConfig.from_settings(tiny_settings(**overrides))


def flow_config(**overrides):
    """`tiny_config` ranked by the ridge unless `overrides` names SURROGATE.

    The tests of the search's own flows (failures, resumes, progress lines,
    the log's bytes, the op budget) do not depend on what ranks, and each
    LSTM costs seconds of tracing; the ridge traces nothing
    (docs/architecture.md#tests).
    """
    return tiny_config(**{"SURROGATE": "ridge", **overrides})


def synthetic_dataset(n_train=64, n_val=64, n_test=32, seed=0):
    """Learnable synthetic images: the class sets the brightness of one row band.

    Returns:
        `[x_train, y_train, x_val, y_val, x_test, y_test]`, images in [-1, 1], labels ±1.
    """
    rng = np.random.default_rng(seed)

    def split(n):
        labels = rng.integers(0, 10, n)
        x = rng.uniform(-1, -0.5, size=(n, 28, 28, 1)).astype(np.float32)
        for i, label in enumerate(labels):
            x[i, 2 * label + 4 : 2 * label + 6] = 1.0
        y = -np.ones((n, 10), np.float32)
        y[np.arange(n), labels] = 1.0
        return x, y

    return [a for n in (n_train, n_val, n_test) for a in split(n)]


def fake_result(child):
    """A trained child's result dict, with a reward made from the child's numbers (no training)."""
    reward = 0.1 + 0.01 * sum(child)
    return {"reward": reward, "best_epoch": 1, "val_accuracy": [reward], "test_accuracy": reward,
            "mul_ops": 1, "params": 1, "seconds": 0.0,
            "footprint": {"binary_params": 8, "float_params": 1, "packed_kib": 0.005, "float32_kib": 0.035,
                          "binary_macs": 1, "float_macs": 0}}


def search_with(run_child, config, dataset, paths, **kwargs):
    """A `Search` whose children `run_child(search, child, sr_no) -> result` trains, in this process."""
    from pnas.search import Search

    search = None

    def train_fn(job):
        return run_child(search, job.child, job.sr_no)

    search = Search(config, dataset, paths, train_fn=train_fn, **kwargs)
    return search


def keras_run_child(config, dataset, paths):
    """A `run_child` for `search_with` that really trains the child (as RUNNER='inline')."""
    from pnas.runners import ChildJob, KerasTrainer

    trainer = KerasTrainer(dataset, config.child, config.child.manager_kwargs(paths.exp_weights_dir, paths.exp_log_dir))

    def run_child(search, child, sr_no):
        job = search.jobs(len(child) // 4, [child])[0]
        assert job.sr_no == sr_no
        return trainer(ChildJob(sr_no, job.stage, job.child, job.actions, job.seed))

    return run_child


# ------------------------------------------------------------------ cells and batches
def raw_children(space, blocks):
    """Every child of `blocks` blocks of the `StateSpace` `space`, canonical or not, that it allows."""
    per_block = []
    for position in range(blocks):
        operands = list(itertools.product(space.block_inputs(position), range(space.op_size)))
        per_block.append([a + b for a in operands for b in operands])
    return [sum(combo, ()) for combo in itertools.product(*per_block)]


def random_child(space, rng, blocks):
    """A child of `blocks` blocks drawn with the NumPy generator `rng`: each input, then each operator."""
    return tuple(
        int(rng.choice(space.block_inputs(p))) if i % 2 == 0 else int(rng.integers(space.op_size))
        for p in range(blocks)
        for i in range(4)
    )


def synthetic_batch(n, seed=0):
    """`n` random images in [-1, 1] and random ±1 one-hot labels: `(x, y)`."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, size=(n, 28, 28, 1)).astype(np.float32)
    y = -np.ones((n, 10), np.float32)
    y[np.arange(n), rng.integers(0, 10, n)] = 1.0
    return x, y
