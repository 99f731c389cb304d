"""Typed, frozen settings of a search, made once from train.py's settings.

train.py keeps its UPPER_CASE constants, as its users edit them. Each config
field below names the train.py setting it is read from, and what that setting
means for a search (`Setting`); `SETTINGS_READ_BY_TRAIN_PY` holds the few
settings that feed no field. Everything that lists setting names (`from_settings`,
`IDENTITY`, `RETRAIN_SETTINGS`, `TYPES`) is derived from these two places.
`SearchConfig.from_settings` is the one place that reads the settings dict;
the library receives the objects below and never indexes a settings dict.
"""

import dataclasses
import json
import typing
from typing import Optional, Union

# The search space's operators: name -> (kind, kernel size). Here, not in pnas.model, so that the
# settings are checked (and train.py --help runs) without importing Keras; pnas.model builds them.
OPERATORS = {
    "3x3 sep-bconv": ("sep", 3),
    "5x5 sep-bconv": ("sep", 5),
    "7x7 sep-bconv": ("sep", 7),
    "3x3 bconv": ("conv", 3),
    "5x5 bconv": ("conv", 5),
    "7x7 bconv": ("conv", 7),
    "1x7-7x1 bconv": ("factorized", 7),
    "3x3 maxpool": ("maxpool", 3),
    "3x3 avgpool": ("avgpool", 3),
    "linear": ("linear", 1),
}
# BatchNorm after every binary layer (the original's settings); here so that bench/child_quality.py
# lists it in its --help without importing Keras.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-6

# A child's expected training cost, in units of one binary convolution (its conv, BatchNorm and
# sign layers), by operator kind: what a separable or factorized operator adds is two convolutions
# and the layers around them, a pooling or identity operator next to nothing. Both the trace of a
# child's train step and its arithmetic grow with these layers. The search orders the children of
# a stage by it, costliest first, so that workers side by side finish a stage together.
OPERATOR_COST = {"conv": 1.0, "sep": 1.5, "factorized": 2.0, "maxpool": 0.25, "avgpool": 0.25, "linear": 0.25}


def expected_cost(actions):
    """A child's expected training cost (`OPERATOR_COST` units) from its architecture."""
    return sum(OPERATOR_COST[OPERATORS[op][0]] for op in actions[1::2])


RUNNERS = ("processes", "inline", "ray")
SURROGATES = ("lstm", "ridge")
# The LSTM encoder's target recipes (`pnas.encoder.Encoder`), the default first.
ENCODER_TARGETS = ("scaled", "standardize", "raw")
# The LSTM encoder's readouts: the last output (the original's) or the mean over the tokens.
ENCODER_READOUTS = ("last", "mean")
NoneType = type(None)


@dataclasses.dataclass(frozen=True)
class Setting:
    """What one of train.py's settings means for a search.

    Attributes:
        name: The setting's name in train.py, also its name in the saved
            state files (so keep it when renaming a config field).
        identity: It defines the search: a saved search resumed with another
            value is refused (`pnas.records.SearchState`).
        retrain: It shapes the trained child: train.py's `-ta` retrain of a
            found architecture repeats its override (the summary's command).
        types: The types an override may take, where others than its
            default's (e.g. None as well as an int); () for its default's type.
            A config field's are derived from its annotation (`_override_types`).
    """

    name: str
    identity: bool = False
    retrain: bool = False
    types: tuple = ()


def setting(name, default, *, identity=False, retrain=False):
    """A config field read from train.py's setting `name` (see `Setting`); its annotation types the overrides."""
    return dataclasses.field(default=default, metadata={"setting": Setting(name, identity, retrain)})


def _override_types(annotation):
    """The types an override of a field annotated `annotation` may take; () where its default's type decides.

    A float takes an int too (`--LR_START=1`); Optional and Union fields take
    each of their types.
    """
    members = typing.get_args(annotation) if typing.get_origin(annotation) is Union else (annotation,)
    if members == (annotation,) and annotation is not float:
        return ()
    types = []
    for t in members:
        types += [int, float] if t is float else [t]
    return tuple(dict.fromkeys(types))


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

    num_cells: int = setting("NUM_CELLS", 3, identity=True, retrain=True)
    num_cell_filters: tuple = setting("NUM_CELL_FILTERS", (16, 24, 32), identity=True, retrain=True)
    dense_layers: tuple = setting("DENSE_LAYERS", (32, 10), identity=True, retrain=True)
    dropout: tuple = setting("DROPOUT", (False, 0.2, 0.5), identity=True, retrain=True)
    epochs: int = setting("MAX_EPOCHS", 20, identity=True)  # a retrain runs NUM_EPOCHS
    batchsize: int = setting("BATCHSIZE", 128, identity=True, retrain=True)
    initial_lr: float = setting("LR_START", 3e-2, identity=True, retrain=True)
    final_lr: float = setting("LR_END", 1e-4, identity=True, retrain=True)
    loss: str = setting("LOSS", "squared_hinge", identity=True, retrain=True)
    binary_h: Union[str, int, float] = setting("BINARY_H", "Glorot", identity=True, retrain=True)
    kernel_lr_multiplier: Union[str, int, float, None] = setting(
        "KERNEL_LR_MULTIPLIER", "Glorot", identity=True, retrain=True
    )
    evaluate_test: bool = setting("TEST_CHILDREN", False)
    verbose: int = setting("VERBOSE", 2)

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

    def manager_kwargs(self, weights_dir, log_dir=None):
        """`NetworkManager` arguments other than the dataset (a plain dict: it is sent to worker processes).

        Args:
            weights_dir: The folder of the children's weights (`ExperimentPaths.exp_weights_dir`).
            log_dir: The folder of their TensorBoard logs (`ExperimentPaths.exp_log_dir`; None: no logs).
        """
        return dict(
            epochs=self.epochs, batchsize=self.batchsize, weights_dir=weights_dir,
            log_dir=log_dir, verbose=self.verbose, initial_lr=self.initial_lr, final_lr=self.final_lr,
            loss=self.loss, binary_kwargs=self.binary_kwargs, evaluate_test=self.evaluate_test,
        )

    def train_kwargs(self, actions, name="child", log_name=None, label=None):
        """`NetworkManager.train_child` arguments (after `model_fn`) for the architecture `actions`."""
        return dict(
            actions=list(actions), num_cells=self.num_cells, num_cell_filters=list(self.num_cell_filters),
            dense_layers=list(self.dense_layers), dropout=tuple(self.dropout), name=name, log_name=log_name,
            label=label,
        )


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    """The surrogate that ranks the candidates (`pnas.encoder.new_surrogate`) and the beam width.

    `surrogate` is 'ridge' or 'lstm' (the original's `Encoder`, which the
    other fields but `k` and `restore` configure).
    """

    k: int = setting("K_", 128, identity=True)
    surrogate: str = setting("SURROGATE", "lstm", identity=True)
    controller_cells: int = setting("CONTROLLER_CELLS", 100, identity=True)
    regularization: float = setting("REGULARIZATION", 0, identity=True)
    epochs: int = setting("RNN_TRAINING_EPOCHS", 15, identity=True)
    ensemble: int = setting("ENCODER_ENSEMBLE", 1, identity=True)
    learning_rate: float = setting("ENCODER_LR", 1e-3, identity=True)
    batch_size: Optional[int] = setting("ENCODER_BATCHSIZE", 1, identity=True)
    targets: str = setting("ENCODER_TARGETS", "scaled", identity=True)
    augment: bool = setting("ENCODER_AUGMENT", True, identity=True)
    readout: str = setting("ENCODER_READOUT", "last", identity=True)
    restore: bool = setting("RESTORE_CONTROLLER", True)

    def encoder_kwargs(self):
        """`pnas.encoder.new_surrogate` arguments other than the state space and the TensorBoard folder."""
        return dict(
            kind=self.surrogate, controller_cells=self.controller_cells, regularization=self.regularization,
            epochs=self.epochs, ensemble=self.ensemble, learning_rate=self.learning_rate,
            batch_size=self.batch_size, targets=self.targets, augment=self.augment, readout=self.readout,
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

    kind: str = setting("RUNNER", "processes")
    parallel_children: int = setting("PARALLEL_CHILDREN", 1)
    children_per_process: int = setting("CHILDREN_PER_PROCESS", 10)
    ray_address: Optional[str] = setting("RAY_ADDRESS", None)
    ray_cpus_per_child: float = setting("RAY_CPUS_PER_CHILD", 1)
    ray_gpus_per_child: float = setting("RAY_GPUS_PER_CHILD", 0)
    ray_max_retries: int = setting("RAY_MAX_RETRIES", 1)


@dataclasses.dataclass(frozen=True)
class FinalConfig:
    """The final stage (`pnas.search.Search.run_final`): the best cells retrained longer, then the pick.

    Attributes:
        top: The search's best cells (by reward) retrained after its last stage (0: no final stage).
        epochs: Epochs of each of those trainings (None: the search's `MAX_EPOCHS`).
        train_size: Training images of each (the first ones; None: all 55,000).
    """

    top: int = setting("FINAL_TOP", 0)
    epochs: Optional[int] = setting("FINAL_EPOCHS", None)
    train_size: Optional[int] = setting("FINAL_TRAIN_SIZE", None)

    def as_dict(self):
        """The settings as the search state records them (train.py's names)."""
        return {"FINAL_TOP": self.top, "FINAL_EPOCHS": self.epochs, "FINAL_TRAIN_SIZE": self.train_size}


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
        max_mul_ops: Op budget per child in the original's mul_ops (None: off).
        max_ops: Op budget per child in OPs, 32-bit MACs + binary MACs / 64 (None: off).
        child, encoder, runner, final: See `ChildConfig`, `EncoderConfig`, `RunnerConfig`, `FinalConfig`.
        identity: The settings that define the search, as (name, value) pairs
            in train.py's names: the saved state records them.
    """

    experiment_name: str = setting("EXPERIMENT_NAME", "default", retrain=True)
    seed: int = setting("SEED", 0, identity=True, retrain=True)
    overwrite: bool = setting("OVERWRITE", False)
    max_blocks: int = setting("B", 3, identity=True, retrain=True)
    operators: tuple = setting("operators", (), identity=True, retrain=True)
    input_lookback_depth: int = setting("INPUT_LOOKBACK_DEPTH", 0, identity=True, retrain=True)
    input_lookforward_depth: Optional[int] = setting(
        "INPUT_LOOKFORWARD_DEPTH", 0, identity=True, retrain=True
    )
    max_consecutive_failures: int = setting("MAX_CONSECUTIVE_FAILURES", 3)
    max_mul_ops: Optional[float] = setting("MAX_MUL_OPS", None, identity=True)
    max_ops: Optional[float] = setting("MAX_OPS", None, identity=True)
    child: ChildConfig = ChildConfig()
    encoder: EncoderConfig = EncoderConfig()
    runner: RunnerConfig = RunnerConfig()
    final: FinalConfig = FinalConfig()
    identity: tuple = ()

    def identity_dict(self):
        return {name: json.loads(value) for name, value in self.identity}

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    def for_final(self):
        """This config with each child trained for the final stage's epochs (`FinalConfig`)."""
        return self.replace(child=self.child.replace(epochs=self.final_epochs))

    @property
    def final_epochs(self):
        """Epochs of a final-stage training: FINAL_EPOCHS, or the search's MAX_EPOCHS when it is None."""
        return self.child.epochs if self.final.epochs is None else self.final.epochs

    @classmethod
    def from_settings(cls, s):
        """The config of train.py's settings dict `s` (after overrides and validation)."""
        return _from_settings(cls, s, identity=tuple((name, json.dumps(s[name])) for name in IDENTITY))


def _from_settings(cls, s, **values):
    """`cls` with each field read from its setting in `s`, and the nested configs likewise."""
    for field in dataclasses.fields(cls):
        if "setting" in field.metadata:
            value = s[field.metadata["setting"].name]
            values[field.name] = tuple(value) if field.type is tuple else value
        elif dataclasses.is_dataclass(field.default):
            values[field.name] = _from_settings(type(field.default), s)
    return cls(**values)


def _settings_of(cls):
    """The `Setting` of each field of `cls` and of its nested configs, in field order."""
    for field in dataclasses.fields(cls):
        if "setting" in field.metadata:
            yield dataclasses.replace(field.metadata["setting"], types=_override_types(field.type))
        elif dataclasses.is_dataclass(field.default):
            yield from _settings_of(type(field.default))


# train.py's settings that feed no config field: train.py reads them itself.
SETTINGS_READ_BY_TRAIN_PY = (
    Setting("USE_EXPANSION", identity=True, retrain=True),  # the dataset (train.py's load_dataset)
    Setting("TRAIN_SIZE", identity=True, types=(int, NoneType)),
    Setting("DROP_INPUT", retrain=True),  # DROPOUT's rates: train.py builds DROPOUT from them
    Setting("DROP_HIDDEN", retrain=True),
    Setting("NUM_EPOCHS"),  # the -ta training of one architecture
    Setting("REPRESENTATION_STRING"),
    Setting("LOAD_SAVED"),
)
# Every train.py setting, in the configs' field order: a test checks that these are train.py's settings.
SETTINGS = (*_settings_of(SearchConfig), *SETTINGS_READ_BY_TRAIN_PY)
# The settings that define a search (saved with it; a resume with other values is refused).
IDENTITY = tuple(s.name for s in SETTINGS if s.identity)
# The identity settings that configure the LSTM encoder only: a search that ranks with the ridge
# is the same search whatever they hold (`pnas.records.SearchState.load_or_create`).
LSTM_ONLY = tuple(
    s.name for s in _settings_of(EncoderConfig) if s.identity and s.name not in ("K_", "SURROGATE")
)
# The settings whose overrides a -ta retrain of a found architecture repeats.
RETRAIN_SETTINGS = tuple(s.name for s in SETTINGS if s.retrain)
# {name: types} of the settings that take other types than their default's (`pnas.settings.apply_overrides`).
TYPES = {s.name: s.types for s in SETTINGS if s.types}
