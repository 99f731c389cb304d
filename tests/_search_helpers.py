"""Shared pieces of the in-process search tests: tiny settings and synthetic data."""

import numpy as np

import train

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

    trainer = KerasTrainer(dataset, config.child, config.child.manager_kwargs(
        config.experiment_name, paths.weights_dir, paths.log_dir))

    def run_child(search, child, sr_no):
        job = search.jobs(len(child) // 4, [child])[0]
        assert job.sr_no == sr_no
        return trainer(ChildJob(sr_no, job.stage, job.child, job.actions, job.seed))

    return run_child
