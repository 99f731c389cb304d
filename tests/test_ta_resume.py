"""`train.py -ta True` resumes: a run killed with SIGKILL continues from its last finished epoch.

A resumed run takes the same steps as one run straight through: epoch e visits
the images in `epoch_order(SEED, e)`, and the optimizer's variables (its step
count, which the learning-rate schedule reads, and Adam's moments) come back
from the resume file with the model's.
"""

import os
import re
import signal
import subprocess
import sys

import h5py
import numpy as np
import pytest

from tests.conftest import TIMEOUT_S, TRAIN, assert_ok, cli_env, run_train

# A one-cell network on 2,000 images: three epochs in seconds.
TA = [
    "-ta", "True", "--B=1", "--NUM_EPOCHS=3", "--TRAIN_SIZE=2000", "--BATCHSIZE=64", "--NUM_CELLS=1",
    "--NUM_CELL_FILTERS=[8]", "--DENSE_LAYERS=[10]", "--operators=['3x3 bconv', '3x3 maxpool']",
    "--REPRESENTATION_STRING=[[1.]] [[1. 0.]] [[1.]] [[0. 1.]]",
]
EPOCH_LINE = re.compile(r"^  epoch (\d+)/3 - \d+s - (.*)$", re.M)


def weights_of(path):
    """Every dataset of a Keras `.weights.h5` file, by its path in the file."""
    found = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, item: found.__setitem__(name, item[()]) if isinstance(item, h5py.Dataset) else None)
    return found


def epoch_metrics(output):
    """{epoch: the epoch line's metrics text}."""
    return {int(m.group(1)): m.group(2) for m in EPOCH_LINE.finditer(output)}


def kill_after_first_epoch(cwd, name):
    """Starts the -ta run, SIGKILLs its process group once epoch 1's line is printed; returns the output."""
    proc = subprocess.Popen(
        [sys.executable, str(TRAIN), *TA, f"--EXPERIMENT_NAME={name}"], cwd=cwd, env=cli_env(),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("  epoch 1/3"):
                os.killpg(proc.pid, signal.SIGKILL)
                break
    finally:
        proc.wait(timeout=TIMEOUT_S)
    assert proc.returncode == -signal.SIGKILL, "".join(lines)[-3000:]
    return "".join(lines)


@pytest.mark.slow
def test_killed_ta_run_resumes_to_the_weights_of_a_straight_run(tmp_path, mnist_dir):
    straight = assert_ok(run_train(tmp_path, *TA, "--EXPERIMENT_NAME=straight")).stdout

    first = kill_after_first_epoch(tmp_path, "killed")
    resume_file = tmp_path / "weights" / "killed" / "resume.npz"
    assert resume_file.exists() and "epoch 1/3" in first
    rerun = assert_ok(run_train(tmp_path, *TA, "--EXPERIMENT_NAME=killed")).stdout

    done = re.search(r"Resuming from \S+resume\.npz: (\d) of 3 epochs done, continuing at epoch (\d)", rerun)
    assert done, rerun[-2000:]
    epochs_done = int(done.group(1))
    assert 1 <= epochs_done <= 3 and int(done.group(2)) == epochs_done + 1
    # The rerun trains only the epochs after the saved ones, and they match the straight run's.
    resumed_epochs = epoch_metrics(rerun)
    assert sorted(resumed_epochs) == list(range(epochs_done + 1, 4))
    straight_epochs = epoch_metrics(straight)
    for epoch, metrics in resumed_epochs.items():
        assert metrics == straight_epochs[epoch]
    best = re.compile(r"Best validation accuracy .*")
    assert best.search(rerun).group(0) == best.search(straight).group(0)
    a = weights_of(tmp_path / "weights" / "straight" / "best.weights.h5")
    b = weights_of(tmp_path / "weights" / "killed" / "best.weights.h5")
    assert a.keys() == b.keys() and len(a) > 10
    for name in a:
        np.testing.assert_allclose(b[name], a[name], rtol=1e-5, atol=1e-6, err_msg=name)
    # A finished training leaves no resume file: a rerun trains afresh.
    assert not resume_file.exists()


@pytest.mark.slow
def test_resume_file_of_other_settings_is_refused(tmp_path, mnist_dir):
    kill_after_first_epoch(tmp_path, "other")
    resume_file = tmp_path / "weights" / "other" / "resume.npz"
    before = resume_file.read_bytes()
    result = run_train(tmp_path, *TA, "--EXPERIMENT_NAME=other", "--SEED=1")
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert "resume.npz resumes a training of other settings: SEED=0 (now 1)" in line
    assert "--OVERWRITE=True" in line
    assert resume_file.read_bytes() == before  # nothing lost

    fresh = assert_ok(run_train(tmp_path, *TA, "--EXPERIMENT_NAME=other", "--SEED=1", "--OVERWRITE=True")).stdout
    assert "OVERWRITE: removed" in fresh and "Resuming" not in fresh
    assert sorted(epoch_metrics(fresh)) == [1, 2, 3]


def test_a_checkpoint_compares_the_settings_both_keys_name_and_restores_every_variable(tmp_path):
    import keras

    from pnas.checkpoint import CheckpointMismatch, TrainingCheckpoint

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2), keras.layers.BatchNormalization()])
    model.compile(optimizer=keras.optimizers.Adam(amsgrad=True), loss="mse")
    model.optimizer.build(model.trainable_variables)
    model.optimizer.iterations.assign(7)
    path = tmp_path / "resume.npz"
    # Saved by a train.py with a setting that this one no longer has (OLD) and without one it has (NEW).
    TrainingCheckpoint(path, {"SEED": 0, "NUM_EPOCHS": 3, "OLD": 1}).save(
        2, model, 0.5, 1, model.get_weights(), {"loss": [0.3, 0.2]})
    saved = TrainingCheckpoint(path, {"SEED": 0, "NUM_EPOCHS": 3, "NEW": "x"}).load()
    assert saved["epochs_done"] == 2 and saved["best"] == 0.5 and saved["best_epoch"] == 1
    assert saved["history"] == {"loss": [0.3, 0.2]}
    assert len(saved["model"]) == len(model.variables) and len(saved["optimizer"]) == len(model.optimizer.variables)
    assert int(saved["optimizer"][0]) == 7  # the step count, which the learning-rate schedule reads
    for value, variable in zip(saved["model"], model.variables):
        np.testing.assert_array_equal(value, variable.numpy())
    with pytest.raises(CheckpointMismatch, match=r"NUM_EPOCHS=3 \(now 5\)"):
        TrainingCheckpoint(path, {"SEED": 0, "NUM_EPOCHS": 5}).load()
