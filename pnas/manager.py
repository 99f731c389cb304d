"""Trains one child network and returns its numbers."""

import gc
import logging
import math
import os
import time

import keras
import numpy as np
from keras import ops

from binarized.binary_layers import DropoutNoScale
from binarized.optimizers import FusedAdam
from mnist.files import atomic_path
from pnas import footprint
from pnas.checkpoint import CheckpointMismatch, TrainingCheckpoint
from pnas.pipeline import evaluate_arguments, fit_arguments

# Images of the fixed training subset that BatchNorm statistics are estimated on.
CALIBRATION_SIZE = 2000

logger = logging.getLogger(__name__)


class ChildTrainingError(RuntimeError):
    """A child whose training diverged (NaN loss)."""


class _KeepBest(keras.callbacks.Callback):
    """Keeps the weights of the epoch with the best validation accuracy."""

    def __init__(self, path=None):
        super().__init__()
        self.path = path
        self.best = -math.inf
        self.best_epoch = None
        self.weights = None

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        loss = logs.get("loss")
        if loss is not None and not np.isfinite(loss):
            return
        accuracy = logs.get("val_accuracy", -math.inf)
        if accuracy > self.best:
            self.best, self.best_epoch = accuracy, epoch
            self.weights = self.model.get_weights()
            if self.path:
                _save_weights_atomic(self.model, self.path)


def calibrate_batchnorm(model, x):
    """Sets every BatchNorm's moving statistics to those of `x`, in one pass.

    A forward pass in training mode on one batch normalises each BatchNorm
    with the statistics of its own input, computed from upstream layers that
    are normalised the same way; with momentum 0 those statistics become the
    moving ones. At inference every BatchNorm then sees exactly the input
    distribution its statistics describe. The running averages that training
    leaves do not: in a binary network a small shift of one layer's
    statistics flips signs and shifts every layer below it, which made
    validation accuracy swing by 5-50 points from epoch to epoch while
    training accuracy rose steadily. Dropout is off during the pass.

    Args:
        model: A Keras model.
        x: The calibration images (one batch).
    """
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    drops = [layer for layer in model.layers if isinstance(layer, (DropoutNoScale, keras.layers.Dropout))]
    momenta, rates = [n.momentum for n in norms], [d.rate for d in drops]
    try:
        for n in norms:
            n.momentum = 0.0
        for d in drops:
            d.rate = 0.0
        model(x, training=True)
    finally:
        for n, momentum in zip(norms, momenta):
            n.momentum = momentum
        for d, rate in zip(drops, rates):
            d.rate = rate


class _CalibratedValidation(keras.callbacks.Callback):
    """After each epoch: calibrates BatchNorm (see `calibrate_batchnorm`), then validates.

    It writes val_loss and val_accuracy into the epoch's logs, which the
    callbacks after it (best weights, TensorBoard, history) read.
    """

    def __init__(self, x_calibration, x_val, y_val, batch_size):
        super().__init__()
        self.x_calibration = x_calibration
        self.x_val, self.y_val = x_val, y_val
        self.batch_size = batch_size

    def on_epoch_end(self, epoch, logs=None):
        calibrate_batchnorm(self.model, self.x_calibration)
        loss, accuracy = self.model.evaluate(**evaluate_arguments(self.x_val, self.y_val, self.batch_size), verbose=0)
        if logs is not None:
            logs["val_loss"], logs["val_accuracy"] = float(loss), float(accuracy)


class _SaveCheckpoint(keras.callbacks.Callback):
    """Saves the `TrainingCheckpoint` after each epoch (after `_KeepBest` has seen it)."""

    def __init__(self, checkpoint, keep_best, history):
        super().__init__()
        self.checkpoint, self.keep_best, self.history = checkpoint, keep_best, history
        self.diverged = None

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not np.isfinite(loss):
            self.diverged = loss  # not saved: a rerun resumes from the last finite epoch
            return
        for name, value in (logs or {}).items():
            if isinstance(value, (int, float)):
                self.history.setdefault(name, []).append(float(value))
        self.checkpoint.save(
            epoch + 1, self.model, self.keep_best.best, self.keep_best.best_epoch, self.keep_best.weights,
            self.history,
        )


class _Record:
    """What `summarise` reads of a Keras `History`: `.history`, a list per metric."""

    def __init__(self, history):
        self.history = history


def epoch_order(seed, epoch, n):
    """The order of the `n` training images in `epoch` of a resumable training: a function of (seed, epoch) alone."""
    return np.random.default_rng([int(seed), int(epoch)]).permutation(n)


class _EpochLine(keras.callbacks.Callback):
    """One line per epoch that names the child, in place of Keras' `verbose=2` line.

    Children trained side by side print into one terminal; Keras' lines do not
    say whose they are.
    """

    def __init__(self, label, epochs):
        super().__init__()
        self.label = label
        self.epochs = epochs
        self.start = None

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.time()

    def on_epoch_end(self, epoch, logs=None):
        shown = " - ".join(f"{k}: {v:.4f}" for k, v in (logs or {}).items() if isinstance(v, (int, float)))
        named = f"{self.label} " if self.label else ""
        print(f"  {named}epoch {epoch + 1}/{self.epochs} - {time.time() - self.start:.0f}s - {shown}", flush=True)


def _save_weights_atomic(model, path):
    with atomic_path(path, suffix=".weights.h5") as tmp:
        model.save_weights(tmp)


def lr_schedule(epochs, steps_per_epoch, initial_lr=1e-3, final_lr=1e-4):
    """Exponential decay from `initial_lr` at the first step to `final_lr` at the last."""
    total = max(1, epochs * steps_per_epoch - 1)
    return keras.optimizers.schedules.ExponentialDecay(
        initial_lr, decay_steps=total, decay_rate=final_lr / initial_lr
    )


def pm1_crossentropy(y_true, y_pred):
    """Softmax cross-entropy for ±1 one-hot labels and logits."""
    return keras.losses.categorical_crossentropy((y_true + 1.0) / 2.0, y_pred, from_logits=True)


LOSSES = {"squared_hinge": "squared_hinge", "crossentropy": pm1_crossentropy}


def compile_child(model, epochs, n_train, batchsize, initial_lr=1e-3, final_lr=1e-4, loss="squared_hinge"):
    """Compiles a child: Adam (amsgrad) with the decaying learning rate.

    The Adam is `binarized.optimizers.FusedAdam`: one fused TensorFlow op per
    variable in place of Keras' 45, which shortens the trace of the train step
    (docs/benchmarks.md). It is registered with the binary layers, so a saved
    child loads wherever they do, without pnas.

    Args:
        loss: 'squared_hinge' (the original's, labels ±1) or 'crossentropy'.
    """
    if loss not in LOSSES:
        raise ValueError(f"`loss` must be one of {list(LOSSES)}, received loss={loss!r}")
    steps = math.ceil(n_train / batchsize)
    optimizer = FusedAdam(lr_schedule(epochs, steps, initial_lr, final_lr), amsgrad=True)
    model.compile(optimizer=optimizer, loss=LOSSES[loss], metrics=["accuracy"])
    # Adam's slots (three per weight with amsgrad) created eagerly here take
    # milliseconds; created by `fit` inside the traced train step, each one is
    # a traced initializer, which cost 3-4 s of a 3-block child's 10 s trace.
    optimizer.build(model.trainable_variables)
    # The same for the metrics: built inside the first trace, their variables
    # make TensorFlow trace the whole train step a second time (about half of
    # a child's first step). One image through them here builds them eagerly.
    image = np.zeros((1, *model.input_shape[1:]), "float32")
    model.compute_metrics(image, np.zeros((1, *model.output_shape[1:]), "float32"), model(image), None)
    model.reset_metrics()


class NetworkManager:
    """Trains child networks on a dataset and returns their rewards.

    Each child trains with the squared hinge loss (or cross-entropy) and Adam
    (amsgrad) whose learning rate decays exponentially from `initial_lr` to
    `final_lr` over its epochs. After each epoch the BatchNorm statistics are
    re-estimated on a fixed training subset (`calibrate_batchnorm`) and the
    child is validated. The reward is the best validation accuracy over the
    epochs, whose weights are kept and saved in `weights_dir`.

    Args:
        dataset: `[x_train, y_train, x_val, y_val, x_test, y_test]`, labels ±1.
        epochs: Epochs per child.
        batchsize: Batch size.
        weights_dir: The folder of the weights (an experiment's `ExperimentPaths.exp_weights_dir`).
        log_dir: The folder of the TensorBoard logs, a run per child (None: no logs).
        verbose: Keras `fit` verbosity (0, 1 or 2).
        initial_lr: Learning rate at the first step.
        final_lr: Learning rate at the last step.
        loss: 'squared_hinge' or 'crossentropy' (see `compile_child`).
        binary_kwargs: Arguments of every binary layer (e.g. `{'H': 'Glorot'}`).
        evaluate_test: Also evaluate each child on the test set (False: its
            test_accuracy is None). It is a full pass over 10,000 images.
    """

    def __init__(
        self,
        dataset,
        weights_dir,
        epochs=5,
        batchsize=128,
        log_dir=None,
        verbose=2,
        initial_lr=1e-3,
        final_lr=1e-4,
        loss="squared_hinge",
        binary_kwargs=None,
        evaluate_test=True,
    ):
        self.x_train, self.y_train, self.x_val, self.y_val, self.x_test, self.y_test = dataset
        self.epochs = epochs
        self.batchsize = batchsize
        self.weights_dir = weights_dir
        self.log_dir = log_dir
        self.verbose = verbose
        self.initial_lr = initial_lr
        self.final_lr = final_lr
        self.loss = loss
        self.binary_kwargs = binary_kwargs
        self.evaluate_test = evaluate_test

    def train_child(
        self,
        model_fn,
        actions,
        num_cells,
        num_cell_filters,
        dense_layers,
        load_saved=False,
        dropout=(False, 0.2, 0.5),
        name="child",
        model_path=None,
        log_name=None,
        label=None,
        checkpoint=None,
        seed=0,
    ):
        """Trains one child and returns a dict of its numbers: build, compile, fit, summarise.

        Args:
            model_fn: `pnas.model.model_fn` (or one with the same signature).
            actions: The architecture, `[input1, 'op1', input2, 'op2', ...]`.
            num_cells, num_cell_filters, dense_layers, dropout: see `model_fn`.
            load_saved: Continue from `weights_dir/{name}.weights.h5`.
            name: Weights file name of this child.
            log_name: TensorBoard run name (default: `name`).
            model_path: Also save the best model as a `.keras` file here.
            label: With `verbose=2`, begin each epoch line with it (e.g. '#12',
                when children train side by side).
            checkpoint: A `TrainingCheckpoint`: save the training's state after
                every epoch and, if the file exists, continue from it. Each
                epoch then visits the images in `epoch_order(seed, epoch)`, so a
                resumed training takes the same steps as an uninterrupted one.
            seed: See `checkpoint`.

        Returns:
            dict with reward (best validation accuracy), best_epoch,
            val_accuracy and train_accuracy (per epoch), test_accuracy (None
            without `evaluate_test`), mul_ops,
            params, footprint (totals, see `pnas.footprint`), footprint_layers
            (per layer) and seconds.

        Raises:
            ChildTrainingError: the loss became NaN or infinite.
        """
        start = time.time()
        weights_path = os.path.join(self.weights_dir, f"{name}.weights.h5")
        model, mul_ops = self.build(
            model_fn, actions, num_cells, num_cell_filters, dense_layers, dropout,
            weights_path if load_saved else None,
        )
        self.compile(model)
        if checkpoint is None:
            history, keep_best = self.fit(model, weights_path, log_name or name, label)
        else:
            history, keep_best = self.fit_resumable(model, weights_path, log_name or name, checkpoint, seed, label)
        result = self.summarise(model, history, keep_best, mul_ops, model_path)
        result["seconds"] = round(time.time() - start, 2)
        # The model's memory goes at the next child's `build`: one full
        # garbage collection per child, not two.
        del model, history, keep_best
        return result

    def build(self, model_fn, actions, num_cells, num_cell_filters, dense_layers, dropout, load_from=None):
        """A fresh child model (in a cleared Keras session) and its mul_ops; weights from `load_from`."""
        keras.backend.clear_session(free_memory=True)
        # What survives that full collection stays for the process's life: the
        # modules, the data, and what TensorFlow and Keras keep of earlier
        # children (about 33,000 Python objects per B=3 child, measured with
        # Keras 3.15 / TensorFlow 2.21: their leak, which clearing the session
        # does not free). Frozen, it is not scanned again: this collection stays
        # at 0.2-0.7 s per B=3 child, where unfrozen it scanned 33,000 more
        # objects at each child and took 0.8-3.2 s (7 children, a loaded machine).
        gc.freeze()
        model, mul_ops = model_fn(
            actions,
            num_cells=num_cells,
            num_cell_filters=num_cell_filters,
            dense_layers=dense_layers,
            dropout=dropout,
            binary_kwargs=self.binary_kwargs,
        )
        if load_from is not None:
            if not os.path.exists(load_from):
                raise FileNotFoundError(
                    f"LOAD_SAVED=True but {load_from} does not exist; train without LOAD_SAVED first"
                )
            model.load_weights(load_from)
        return model, mul_ops

    def compile(self, model):
        """Compiles `model` for the manager's epochs, loss and learning-rate schedule."""
        compile_child(model, self.epochs, len(self.x_train), self.batchsize, self.initial_lr, self.final_lr, self.loss)

    def fit(self, model, weights_path, log_name, label=None):
        """Trains `model`, validating after each epoch; returns `(history, keep_best)`.

        Raises:
            ChildTrainingError: the loss became NaN or infinite.
        """
        keep_best = _KeepBest(weights_path)
        callbacks = self._callbacks(keep_best, log_name)
        history = model.fit(
            **fit_arguments(self.x_train, self.y_train, self.batchsize),
            epochs=self.epochs,
            callbacks=callbacks + ([_EpochLine(label, self.epochs)] if label and self.verbose == 2 else []),
            verbose=0 if label and self.verbose == 2 else self.verbose,
        )
        losses = history.history.get("loss", [])
        if not losses or not np.all(np.isfinite(losses)):
            raise ChildTrainingError(f"loss became {losses[-1] if losses else 'undefined'} (diverged)")
        return history, keep_best

    def _callbacks(self, keep_best, log_name, *after_best):
        """An epoch's callbacks: calibrate and validate, stop on NaN, keep the best, `after_best`, TensorBoard."""
        callbacks = [
            _CalibratedValidation(self.x_train[:CALIBRATION_SIZE], self.x_val, self.y_val, self._eval_batch),
            keras.callbacks.TerminateOnNaN(),
            keep_best,
            *after_best,
        ]
        if self.log_dir:
            callbacks.append(
                keras.callbacks.TensorBoard(os.path.join(self.log_dir, log_name), write_graph=False, profile_batch=0)
            )
        return callbacks

    def fit_resumable(self, model, weights_path, log_name, checkpoint, seed, label=None):
        """`fit`, one epoch at a time, saving a `TrainingCheckpoint` after each and continuing from one.

        Epoch e trains on the images in `epoch_order(seed, e)`; the optimizer's
        step count, and with it the learning-rate schedule, comes back with its
        variables. Returns `(history, keep_best)` as `fit` does.

        Raises:
            ChildTrainingError: the loss became NaN or infinite.
            CheckpointMismatch: the checkpoint belongs to a training of other settings.
        """
        keep_best = _KeepBest(weights_path)
        history = {}
        first = 0
        saved = checkpoint.load()
        if saved is not None:
            for kind, variables in (("model", model.variables), ("optimizer", model.optimizer.variables)):
                if len(saved[kind]) != len(variables) or any(
                        a.shape != tuple(v.shape) for a, v in zip(saved[kind], variables)):
                    raise CheckpointMismatch(checkpoint.path, {"variables": "another network"}, {"variables": None})
                for variable, value in zip(variables, saved[kind]):
                    variable.assign(value)
            keep_best.best, keep_best.best_epoch = saved["best"], saved["best_epoch"]
            keep_best.weights = saved["best_weights"] or None
            history, first = saved["history"], saved["epochs_done"]
        saver = _SaveCheckpoint(checkpoint, keep_best, history)
        callbacks = self._callbacks(keep_best, log_name, saver)
        if self.verbose == 2:
            callbacks.append(_EpochLine(label, self.epochs))
        for epoch in range(first, self.epochs):
            order = epoch_order(seed, epoch, len(self.x_train))
            model.fit(
                **fit_arguments(self.x_train[order], self.y_train[order], self.batchsize, shuffle=False),
                initial_epoch=epoch, epochs=epoch + 1, callbacks=callbacks, verbose=1 if self.verbose == 1 else 0,
            )
            if saver.diverged is not None or len(history.get("loss", [])) != epoch + 1:
                raise ChildTrainingError(f"loss became {saver.diverged} at epoch {epoch + 1} (diverged)")
        return _Record(history), keep_best

    def summarise(self, model, history, keep_best, mul_ops, model_path=None):
        """Restores the best epoch's weights; returns the child's numbers (see `train_child`)."""
        model.set_weights(keep_best.weights)
        test_accuracy = None
        if self.evaluate_test:
            _, test_accuracy = model.evaluate(**evaluate_arguments(self.x_test, self.y_test, self._eval_batch), verbose=0)
        if model_path:
            with atomic_path(model_path, suffix=".keras") as tmp:
                model.save(tmp)
        layers = footprint.layer_footprint(model)
        return {
            "reward": float(keep_best.best),
            "best_epoch": int(keep_best.best_epoch) + 1,
            "val_accuracy": [float(v) for v in history.history["val_accuracy"]],
            "train_accuracy": [float(v) for v in history.history["accuracy"]],
            "test_accuracy": None if test_accuracy is None else float(test_accuracy),
            "mul_ops": int(mul_ops),
            "params": int(model.count_params()),
            "footprint": footprint.totals(layers),
            "footprint_layers": layers,
        }

    @property
    def _eval_batch(self):
        return max(self.batchsize, 2500)
