"""The resume file of a training: its state after the last finished epoch (NumPy only, no Keras).

`train.py -ta True` saves one after every epoch (`pnas.manager.NetworkManager.fit_resumable`)
and continues from it when rerun with the same settings. Kept free of Keras so that a rerun
with other settings is refused before Keras is imported.
"""

import json
import os

import numpy as np

from mnist.files import atomic_path

__all__ = ["CheckpointMismatch", "TrainingCheckpoint"]


class TrainingCheckpoint:
    """The state of a training after its last finished epoch, in one file: what a resume needs.

    It holds every variable of the model (BatchNorm statistics and dropout's
    seed state included), every variable of the optimizer (the step count,
    which the learning-rate schedule reads, and Adam's moments), the weights of
    the best epoch so far with its validation accuracy, and the per-epoch
    history. Written atomically after each epoch, so a kill at any moment
    leaves the last finished epoch's state.

    Args:
        path: The `.npz` file.
        key: The settings of the run, {name: JSON-serialisable value}. A
            checkpoint whose key gives another value to one of these names is
            refused (`CheckpointMismatch`): it belongs to another training.
            Names that only one of the two keys has are not compared, so a
            file saved with more settings (or fewer) resumes.
    """

    def __init__(self, path, key):
        self.path = path
        self.key = json.loads(json.dumps(key, default=list))

    def exists(self):
        return os.path.exists(self.path)

    def load(self):
        """The saved state as a dict (see `save`), or None when there is no file.

        Raises:
            CheckpointMismatch: the file was saved under another key.
        """
        if not self.exists():
            return None
        with np.load(self.path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            shared = set(meta["key"]) & set(self.key)
            if any(meta["key"][name] != self.key[name] for name in shared):
                raise CheckpointMismatch(self.path, {k: meta["key"][k] for k in shared}, {k: self.key[k] for k in shared})
            arrays = {kind: [data[f"{kind}_{i}"] for i in range(meta["counts"][kind])] for kind in meta["counts"]}
        return dict(meta, **arrays)

    def save(self, epochs_done, model, best, best_epoch, best_weights, history):
        """Writes the state after `epochs_done` epochs (atomically).

        Args:
            epochs_done: Epochs finished.
            model: The compiled Keras model: its variables and its optimizer's.
            best, best_epoch, best_weights: The best validation accuracy so
                far, its epoch (0-based) and its `get_weights()`.
            history: {metric: a value per finished epoch}.
        """
        arrays = {
            "model": [np.asarray(v.numpy()) for v in model.variables],
            "optimizer": [np.asarray(v.numpy()) for v in model.optimizer.variables],
            "best_weights": list(best_weights or []),
        }
        meta = dict(
            key=self.key, epochs_done=int(epochs_done), best=float(best), best_epoch=best_epoch,
            history={k: [float(x) for x in v] for k, v in history.items()},
            counts={kind: len(values) for kind, values in arrays.items()},
        )
        payload = {f"{kind}_{i}": value for kind, values in arrays.items() for i, value in enumerate(values)}
        with atomic_path(self.path, suffix=".npz") as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, meta=np.array(json.dumps(meta)), **payload)

    def remove(self):
        if self.exists():
            os.remove(self.path)


class CheckpointMismatch(ValueError):
    """A resume file that belongs to a training of other settings."""

    def __init__(self, path, saved, wanted):
        differ = sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k))
        shown = ", ".join(f"{k}={saved.get(k)!r} (now {wanted.get(k)!r})" for k in differ[:4])
        super().__init__(f"{path} resumes a training of other settings: {shown}")
        self.differ = differ
