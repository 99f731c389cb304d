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
    settings["RETRAIN_ARGS"] = []
    return settings


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
