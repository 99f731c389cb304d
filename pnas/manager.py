"""Trains one child network and returns its numbers."""

import gc
import logging
import math
import os
import time

import keras
import numpy as np

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


def _save_weights_atomic(model, path):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path[: -len(".weights.h5")] + ".tmp.weights.h5"
    model.save_weights(tmp)
    os.replace(tmp, path)


def lr_schedule(epochs, steps_per_epoch, initial_lr=1e-3, final_lr=1e-4):
    """Exponential decay from `initial_lr` at the first step to `final_lr` at the last."""
    total = max(1, epochs * steps_per_epoch - 1)
    return keras.optimizers.schedules.ExponentialDecay(
        initial_lr, decay_steps=total, decay_rate=final_lr / initial_lr
    )


class NetworkManager:
    """Trains child networks on a dataset and returns their rewards.

    Each child trains with the squared hinge loss and Adam (amsgrad) whose
    learning rate decays exponentially from 1e-3 to 1e-4 over its epochs.
    The reward is the best validation accuracy over the epochs, whose weights
    are kept and saved under `weights_dir/exp_name/`.

    Args:
        dataset: `[x_train, y_train, x_val, y_val, x_test, y_test]`, labels ±1.
        exp_name: Experiment name, for the output paths.
        epochs: Epochs per child.
        batchsize: Batch size.
        weights_dir: Root folder of the weights.
        log_dir: Root folder of the TensorBoard logs (None: no logs).
        verbose: Keras `fit` verbosity (0, 1 or 2).
        initial_lr: Learning rate at the first step.
        final_lr: Learning rate at the last step.
    """

    def __init__(
        self,
        dataset,
        exp_name="default",
        epochs=5,
        batchsize=128,
        weights_dir="weights",
        log_dir="logs",
        verbose=2,
        initial_lr=1e-3,
        final_lr=1e-4,
    ):
        self.x_train, self.y_train, self.x_val, self.y_val, self.x_test, self.y_test = dataset
        self.exp_name = exp_name
        self.epochs = epochs
        self.batchsize = batchsize
        self.weights_dir = os.path.join(weights_dir, exp_name)
        self.log_dir = os.path.join(log_dir, exp_name) if log_dir else None
        self.verbose = verbose
        self.initial_lr = initial_lr
        self.final_lr = final_lr

    def get_rewards(
        self,
        model_fn,
        actions,
        num_cells,
        num_cell_filters,
        dense_layers,
        load_saved=False,
        dropout=(False, 0.2, 0.5),
    ):
        """Trains the child of `actions`; returns `(reward, mul_ops)`."""
        result = self.train_child(
            model_fn, actions, num_cells, num_cell_filters, dense_layers, load_saved=load_saved, dropout=dropout
        )
        return result["reward"], result["mul_ops"]

    def train_child(
        self,
        model_fn,
        actions,
        num_cells,
        num_cell_filters,
        dense_layers,
        load_saved=False,
        dropout=(False, 0.2, 0.5),
        epochs=None,
        name="child",
        model_path=None,
        binary_kwargs=None,
    ):
        """Trains one child and returns a dict of its numbers.

        Args:
            model_fn: `pnas.model.model_fn`.
            actions: The architecture, `[input1, 'op1', input2, 'op2', ...]`.
            num_cells, num_cell_filters, dense_layers, dropout: see `model_fn`.
            load_saved: Continue from `weights_dir/exp_name/{name}.weights.h5`.
            epochs: Overrides the manager's epochs.
            name: File and log name of this child.
            model_path: Also save the best model as a `.keras` file here.
            binary_kwargs: Passed to `model_fn`.

        Returns:
            dict with reward (best validation accuracy), best_epoch,
            val_accuracy (per epoch), test_accuracy, mul_ops, params and seconds.

        Raises:
            ChildTrainingError: the loss became NaN or infinite.
        """
        start = time.time()
        epochs = self.epochs if epochs is None else epochs
        keras.backend.clear_session(free_memory=True)
        model, mul_ops = model_fn(
            actions,
            epochs,
            num_cells=num_cells,
            num_cell_filters=num_cell_filters,
            dense_layers=dense_layers,
            dropout=dropout,
            binary_kwargs=binary_kwargs,
        )
        weights_path = os.path.join(self.weights_dir, f"{name}.weights.h5")
        if load_saved:
            if not os.path.exists(weights_path):
                raise FileNotFoundError(
                    f"LOAD_SAVED=True but {weights_path} does not exist; train without LOAD_SAVED first"
                )
            model.load_weights(weights_path)
        steps = math.ceil(len(self.x_train) / self.batchsize)
        optimizer = keras.optimizers.Adam(
            lr_schedule(epochs, steps, self.initial_lr, self.final_lr), amsgrad=True
        )
        model.compile(optimizer=optimizer, loss="squared_hinge", metrics=["accuracy"])
        keep_best = _KeepBest(weights_path)
        callbacks = [keras.callbacks.TerminateOnNaN(), keep_best]
        if self.log_dir:
            callbacks.append(
                keras.callbacks.TensorBoard(os.path.join(self.log_dir, name), write_graph=False, profile_batch=0)
            )
        history = model.fit(
            self.x_train,
            self.y_train,
            batch_size=self.batchsize,
            epochs=epochs,
            validation_data=(self.x_val, self.y_val),
            callbacks=callbacks,
            verbose=self.verbose,
        )
        losses = history.history.get("loss", [])
        if not losses or not np.all(np.isfinite(losses)):
            raise ChildTrainingError(f"loss became {losses[-1] if losses else 'undefined'} (diverged)")
        model.set_weights(keep_best.weights)
        test_loss, test_accuracy = model.evaluate(
            self.x_test, self.y_test, batch_size=max(self.batchsize, 500), verbose=0
        )
        if model_path:
            os.makedirs(os.path.dirname(model_path) or ".", exist_ok=True)
            tmp = model_path[: -len(".keras")] + ".tmp.keras"
            model.save(tmp)
            os.replace(tmp, model_path)
        result = {
            "reward": float(keep_best.best),
            "best_epoch": int(keep_best.best_epoch) + 1,
            "val_accuracy": [float(v) for v in history.history["val_accuracy"]],
            "test_accuracy": float(test_accuracy),
            "mul_ops": int(mul_ops),
            "params": int(model.count_params()),
            "seconds": round(time.time() - start, 2),
        }
        del model, history, keep_best, optimizer
        gc.collect()
        return result
