"""Typed, frozen settings of a search, made once from train.py's settings.

train.py keeps its UPPER_CASE constants, as its users edit them.
`SearchConfig.from_settings` is the one place that reads those names; the
library receives the objects below and never indexes a settings dict.
"""

import dataclasses
import json
from typing import Optional

RUNNERS = ("processes", "inline", "ray")

# The settings that define a search: a saved search resumed with other values
# of these is refused (SearchState). train.py's names, so that the state files
# of earlier searches still match.
IDENTITY = (
    "B", "K_", "operators", "NUM_CELLS", "NUM_CELL_FILTERS", "DENSE_LAYERS", "DROPOUT",
    "MAX_EPOCHS", "BATCHSIZE", "USE_EXPANSION", "TRAIN_SIZE", "SEED", "CONTROLLER_CELLS",
    "REGULARIZATION", "RNN_TRAINING_EPOCHS", "INPUT_LOOKBACK_DEPTH", "INPUT_LOOKFORWARD_DEPTH",
    "BINARY_H", "KERNEL_LR_MULTIPLIER", "LR_START", "LR_END", "LOSS",
    "MAX_MUL_OPS", "ENCODER_ENSEMBLE", "ENCODER_BATCHSIZE", "ENCODER_LR", "ENCODER_TARGETS",
)


@dataclasses.dataclass(frozen=True)
class ChildConfig:
    """How every child is built and trained (`pnas.model.model_fn`, `pnas.manager.NetworkManager`).

    Attributes:
        num_cells: Cells stacked in each child.
        num_cell_filters: Filters of each cell's operators, one entry per cell.
        dense_layers: Units of the binary dense head; the last is the class count.
        dropout: `(enabled, input rate, hidden rate)` of the dense head.
        epochs: Epochs per child.
        batchsize: Batch size.
        initial_lr: Adam's learning rate at a child's first step.
        final_lr: ... decaying exponentially to this at its last step.
        loss: 'squared_hinge' or 'crossentropy'.
        binary_h: H of every binary layer (a number or 'Glorot').
        kernel_lr_multiplier: The binary layers' kernel gradient scale.
        evaluate_test: Also evaluate each child on the test images.
        verbose: Keras `fit` verbosity.
    """

    num_cells: int = 3
    num_cell_filters: tuple = (16, 24, 32)
    dense_layers: tuple = (32, 10)
    dropout: tuple = (False, 0.2, 0.5)
    epochs: int = 20
    batchsize: int = 128
    initial_lr: float = 3e-2
    final_lr: float = 1e-4
    loss: str = "squared_hinge"
    binary_h: object = "Glorot"
    kernel_lr_multiplier: object = "Glorot"
    evaluate_test: bool = True
    verbose: int = 2

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    @property
    def binary_kwargs(self):
        return {"H": self.binary_h, "kernel_lr_multiplier": self.kernel_lr_multiplier}

    def model_kwargs(self):
        """`model_fn` arguments other than the architecture."""
        return dict(
            num_cells=self.num_cells, num_cell_filters=list(self.num_cell_filters),
            dense_layers=list(self.dense_layers), dropout=tuple(self.dropout), binary_kwargs=self.binary_kwargs,
        )

    def manager_kwargs(self, exp_name, weights_dir, log_dir):
        """`NetworkManager` arguments other than the dataset (a plain dict: it is sent to worker processes)."""
        return dict(
            exp_name=exp_name, epochs=self.epochs, batchsize=self.batchsize, weights_dir=weights_dir,
            log_dir=log_dir, verbose=self.verbose, initial_lr=self.initial_lr, final_lr=self.final_lr,
            loss=self.loss, binary_kwargs=self.binary_kwargs, evaluate_test=self.evaluate_test,
        )

    def train_kwargs(self, actions, name="child", log_name=None):
        """`NetworkManager.train_child` arguments (after `model_fn`) for the architecture `actions`."""
        return dict(
            actions=list(actions), num_cells=self.num_cells, num_cell_filters=list(self.num_cell_filters),
            dense_layers=list(self.dense_layers), dropout=tuple(self.dropout), name=name, log_name=log_name,
        )


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    """The surrogate that ranks the candidates (`pnas.encoder.Encoder`) and the beam width."""

    k: int = 128
    controller_cells: int = 100
    regularization: float = 0
    epochs: int = 15
    ensemble: int = 1
    learning_rate: float = 1e-3
    batch_size: Optional[int] = 1
    targets: str = "raw"
    restore: bool = True

    def encoder_kwargs(self):
        """`pnas.encoder.Encoder` arguments other than the state space and the output paths."""
        return dict(
            K=self.k, controller_cells=self.controller_cells, regularization=self.regularization,
            epochs=self.epochs, ensemble=self.ensemble, learning_rate=self.learning_rate,
            batch_size=self.batch_size, targets=self.targets,
        )


@dataclasses.dataclass(frozen=True)
class RunnerConfig:
    """Where children train (`pnas.runners`).

    Attributes:
        kind: 'processes' (worker processes on this machine; in this
            process when `children_per_process` is 0), 'inline' (in this
            process) or 'ray' (Ray tasks, on a local Ray or a cluster).
        parallel_children: 'processes': children trained side by side.
        children_per_process: Children a worker process trains before it
            is replaced (TensorFlow leaks memory per trained model).
        ray_address: None: start a local Ray; 'auto' or 'host:port': join a cluster.
        ray_cpus_per_child, ray_gpus_per_child: Resources of each child's Ray task.
        ray_max_retries: Times Ray reruns a child whose worker or node died.
    """

    kind: str = "processes"
    parallel_children: int = 1
    children_per_process: int = 10
    ray_address: Optional[str] = None
    ray_cpus_per_child: float = 1
    ray_gpus_per_child: float = 0
    ray_max_retries: int = 1


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """Everything a search needs besides its data and paths.

    Attributes:
        experiment_name: Names the output files.
        seed: Seeds every child and the encoder.
        overwrite: Discard a saved search of the same name instead of resuming it.
        max_blocks: B, the blocks of the last stage's cells.
        operators: The search space's operators.
        input_lookback_depth, input_lookforward_depth: The inputs a block may read (`StateSpace`).
        max_consecutive_failures: Stop after this many failed children in a row.
        max_mul_ops: Op budget per child (None: off).
        child, encoder, runner: See `ChildConfig`, `EncoderConfig`, `RunnerConfig`.
        identity: The settings that define the search, as (name, value) pairs
            in train.py's names: the saved state records them.
    """

    experiment_name: str = "default"
    seed: int = 0
    overwrite: bool = False
    max_blocks: int = 3
    operators: tuple = ()
    input_lookback_depth: int = 0
    input_lookforward_depth: Optional[int] = 0
    max_consecutive_failures: int = 3
    max_mul_ops: Optional[float] = None
    child: ChildConfig = ChildConfig()
    encoder: EncoderConfig = EncoderConfig()
    runner: RunnerConfig = RunnerConfig()
    identity: tuple = ()

    def identity_dict(self):
        return {name: json.loads(value) for name, value in self.identity}

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_settings(cls, s):
        """The config of train.py's settings dict `s` (after overrides and validation)."""
        child = ChildConfig(
            num_cells=s["NUM_CELLS"], num_cell_filters=tuple(s["NUM_CELL_FILTERS"]),
            dense_layers=tuple(s["DENSE_LAYERS"]), dropout=tuple(s["DROPOUT"]), epochs=s["MAX_EPOCHS"],
            batchsize=s["BATCHSIZE"], initial_lr=s["LR_START"], final_lr=s["LR_END"], loss=s["LOSS"],
            binary_h=s["BINARY_H"], kernel_lr_multiplier=s["KERNEL_LR_MULTIPLIER"],
            evaluate_test=s["TEST_CHILDREN"], verbose=s["VERBOSE"],
        )
        encoder = EncoderConfig(
            k=s["K_"], controller_cells=s["CONTROLLER_CELLS"], regularization=s["REGULARIZATION"],
            epochs=s["RNN_TRAINING_EPOCHS"], ensemble=s["ENCODER_ENSEMBLE"], learning_rate=s["ENCODER_LR"],
            batch_size=s["ENCODER_BATCHSIZE"], targets=s["ENCODER_TARGETS"], restore=s["RESTORE_CONTROLLER"],
        )
        runner = RunnerConfig(
            kind=s.get("RUNNER", "processes"), parallel_children=s["PARALLEL_CHILDREN"],
            children_per_process=s["CHILDREN_PER_PROCESS"], ray_address=s.get("RAY_ADDRESS"),
            ray_cpus_per_child=s.get("RAY_CPUS_PER_CHILD", 1), ray_gpus_per_child=s.get("RAY_GPUS_PER_CHILD", 0),
            ray_max_retries=s.get("RAY_MAX_RETRIES", 1),
        )
        return cls(
            experiment_name=s["EXPERIMENT_NAME"], seed=s["SEED"], overwrite=s["OVERWRITE"], max_blocks=s["B"],
            operators=tuple(s["operators"]), input_lookback_depth=s["INPUT_LOOKBACK_DEPTH"],
            input_lookforward_depth=s["INPUT_LOOKFORWARD_DEPTH"],
            max_consecutive_failures=s["MAX_CONSECUTIVE_FAILURES"], max_mul_ops=s["MAX_MUL_OPS"],
            child=child, encoder=encoder, runner=runner,
            identity=tuple((name, json.dumps(s[name])) for name in IDENTITY),
        )
