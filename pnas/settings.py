"""Command-line overrides and validation of the train.py settings."""

import ast
import os

from pnas.config import ENCODER_READOUTS, ENCODER_TARGETS, RUNNERS, SURROGATES
from pnas.model import OPERATORS


class SettingsError(ValueError):
    """A setting or override that cannot be used; the message says how to fix it."""


def _type_ok(value, default, name, types):
    if isinstance(value, bool) and not isinstance(default, bool):
        return False
    if name in types:
        return isinstance(value, types[name])
    if value is None:
        return default is None
    if default is None:
        # Settings whose default is None (off) take an int or a float.
        return isinstance(value, (int, float))
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, (list, tuple)):
        return isinstance(value, (list, tuple))
    return isinstance(value, type(default))


def apply_overrides(defaults, args, types=None):
    """Applies `--NAME=value` overrides to a copy of `defaults`.

    Each value is a Python literal. For text settings a value that is no
    literal is taken as the text itself, so that
    `--REPRESENTATION_STRING="[[1. 0. 0.]] ..."` works after the shell
    removed its quotes.

    Args:
        defaults: dict of the settings' default values.
        args: list of `--NAME=value` strings.
        types: {name: tuple of types} for settings that take other types
            than their default's (e.g. None, or a float for a text default).

    Returns:
        (settings, names overridden).

    Raises:
        SettingsError: an unknown name, a value that is no literal, or a
            value of the wrong type.
    """
    settings = dict(defaults)
    types = types or {}
    overridden = []
    for arg in args:
        if not arg.startswith("--") or "=" not in arg:
            raise SettingsError(f"cannot read argument {arg!r}: overrides take the form --NAME=value, e.g. --B=2")
        name, text = arg[2:].split("=", 1)
        if name not in defaults:
            raise SettingsError(
                f"unknown setting {name!r}; the settings are: {', '.join(sorted(defaults))}"
            )
        default = defaults[name]
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            if isinstance(default, str):
                value = text
            else:
                raise SettingsError(
                    f"--{name}={text} is not a Python literal; write e.g. --{name}={default!r}"
                ) from None
        if isinstance(default, str) and not isinstance(value, str) and name not in types:
            value = text
        if not _type_ok(value, default, name, types):
            expected = " or ".join(t.__name__ for t in types.get(name, (type(default),)))
            raise SettingsError(
                f"--{name} must be of type {expected} (default {default!r}), "
                f"received {value!r} ({type(value).__name__})"
            )
        if isinstance(default, float) and isinstance(value, int):
            value = float(value)
        settings[name] = value
        overridden.append(name)
    return settings, overridden


def _require_one_of(settings, name, choices):
    if settings[name] not in choices:
        raise SettingsError(f"{name} must be one of {', '.join(map(repr, choices))}, received {settings[name]!r}")


def validate(settings):
    """Checks the search settings; raises `SettingsError` with the fix."""
    s = settings
    unknown = [op for op in s["operators"] if op not in OPERATORS]
    if unknown:
        raise SettingsError(f"unknown operator(s) {unknown} in operators; valid operators are {list(OPERATORS)}")
    if not s["operators"]:
        raise SettingsError("operators is empty; give at least one of " + str(list(OPERATORS)))
    if len(set(s["operators"])) != len(s["operators"]):
        raise SettingsError(f"operators has duplicates: {s['operators']}; list each operator once")
    for name in ("B", "K_", "NUM_CELLS", "MAX_EPOCHS", "BATCHSIZE", "NUM_EPOCHS", "RNN_TRAINING_EPOCHS",
                 "CONTROLLER_CELLS", "MAX_CONSECUTIVE_FAILURES", "ENCODER_ENSEMBLE"):
        if s[name] < 1:
            raise SettingsError(f"{name} must be >= 1, received {name}={s[name]}")
    if s["CHILDREN_PER_PROCESS"] < 0:
        raise SettingsError(f"CHILDREN_PER_PROCESS must be >= 0, received {s['CHILDREN_PER_PROCESS']}")
    if s["PARALLEL_CHILDREN"] < 1:
        raise SettingsError(f"PARALLEL_CHILDREN must be >= 1, received {s['PARALLEL_CHILDREN']}")
    if s["PARALLEL_CHILDREN"] > 1 and s["CHILDREN_PER_PROCESS"] == 0 and s["RUNNER"] == "processes":
        raise SettingsError(
            f"PARALLEL_CHILDREN={s['PARALLEL_CHILDREN']} trains children in worker processes; "
            "set CHILDREN_PER_PROCESS >= 1 or PARALLEL_CHILDREN=1"
        )
    _require_one_of(s, "RUNNER", RUNNERS)
    if s["RUNNER"] == "inline" and s["PARALLEL_CHILDREN"] > 1:
        raise SettingsError(
            f"RUNNER='inline' trains one child at a time; set PARALLEL_CHILDREN=1 (received {s['PARALLEL_CHILDREN']}) "
            "or use RUNNER='processes'"
        )
    if s["RAY_ADDRESS"] is not None and not s["RAY_ADDRESS"].strip():
        raise SettingsError("RAY_ADDRESS must be None (a Ray on this machine), 'auto' or 'host:port', received ''")
    if not s["RAY_CPUS_PER_CHILD"] > 0:
        raise SettingsError(f"RAY_CPUS_PER_CHILD must be > 0, received {s['RAY_CPUS_PER_CHILD']}")
    if s["RAY_GPUS_PER_CHILD"] < 0:
        raise SettingsError(f"RAY_GPUS_PER_CHILD must be >= 0, received {s['RAY_GPUS_PER_CHILD']}")
    if s["RAY_MAX_RETRIES"] < 0:
        raise SettingsError(f"RAY_MAX_RETRIES must be >= 0, received {s['RAY_MAX_RETRIES']}")
    if s["ENCODER_BATCHSIZE"] is not None and s["ENCODER_BATCHSIZE"] < 1:
        raise SettingsError(f"ENCODER_BATCHSIZE must be None or >= 1, received {s['ENCODER_BATCHSIZE']}")
    if not s["ENCODER_LR"] > 0:
        raise SettingsError(f"ENCODER_LR must be > 0, received {s['ENCODER_LR']}")
    _require_one_of(s, "SURROGATE", SURROGATES)
    if s["SURROGATE"] == "ridge" and s["ENCODER_ENSEMBLE"] != 1:
        raise SettingsError(
            f"ENCODER_ENSEMBLE={s['ENCODER_ENSEMBLE']} averages LSTM encoders; with SURROGATE='ridge' set it to 1, "
            "or use SURROGATE='lstm'"
        )
    _require_one_of(s, "ENCODER_TARGETS", ENCODER_TARGETS)
    _require_one_of(s, "ENCODER_READOUT", ENCODER_READOUTS)
    if s["MAX_MUL_OPS"] is not None and not s["MAX_MUL_OPS"] > 0:
        raise SettingsError(f"MAX_MUL_OPS must be None or > 0, received {s['MAX_MUL_OPS']}")
    if s["INPUT_LOOKBACK_DEPTH"] not in (0, -1):
        raise SettingsError(
            "INPUT_LOOKBACK_DEPTH must be 0 (blocks read the cell input) or -1 (also the previous cell's "
            f"input), received {s['INPUT_LOOKBACK_DEPTH']}"
        )
    if s["INPUT_LOOKFORWARD_DEPTH"] is not None and s["INPUT_LOOKFORWARD_DEPTH"] < 0:
        raise SettingsError(
            f"INPUT_LOOKFORWARD_DEPTH must be None (no limit) or >= 0, received {s['INPUT_LOOKFORWARD_DEPTH']}"
        )
    if len(s["NUM_CELL_FILTERS"]) != s["NUM_CELLS"]:
        raise SettingsError(
            f"NUM_CELL_FILTERS has {len(s['NUM_CELL_FILTERS'])} entries but NUM_CELLS={s['NUM_CELLS']}; "
            "give one filter count per cell"
        )
    if any(not isinstance(f, int) or f < 1 for f in s["NUM_CELL_FILTERS"]):
        raise SettingsError(f"NUM_CELL_FILTERS must hold positive ints, received {s['NUM_CELL_FILTERS']}")
    if not s["DENSE_LAYERS"] or any(not isinstance(u, int) or u < 1 for u in s["DENSE_LAYERS"]):
        raise SettingsError(f"DENSE_LAYERS must be a list of positive ints, received {s['DENSE_LAYERS']}")
    if s["DENSE_LAYERS"][-1] != 10:
        raise SettingsError(
            f"the last DENSE_LAYERS entry is the number of MNIST classes and must be 10, received {s['DENSE_LAYERS']}"
        )
    dropout = s["DROPOUT"]
    if len(dropout) != 3 or not isinstance(dropout[0], bool) or not all(0 <= r < 1 for r in dropout[1:]):
        raise SettingsError(f"DROPOUT must be (bool, input rate, hidden rate) with rates in [0, 1), received {dropout}")
    if s["TRAIN_SIZE"] is not None and (not isinstance(s["TRAIN_SIZE"], int) or s["TRAIN_SIZE"] < 1):
        raise SettingsError(f"TRAIN_SIZE must be None or an int >= 1, received {s['TRAIN_SIZE']}")
    for name in ("BINARY_H", "KERNEL_LR_MULTIPLIER"):
        value = s[name]
        if value is None and name == "KERNEL_LR_MULTIPLIER":
            continue
        if value != "Glorot" and (isinstance(value, str) or not value > 0):
            raise SettingsError(f"{name} must be a positive number or 'Glorot', received {value!r}")
    if not 0 < s["LR_END"] <= s["LR_START"]:
        raise SettingsError(f"need 0 < LR_END <= LR_START, received LR_START={s['LR_START']}, LR_END={s['LR_END']}")
    if s["LOSS"] not in ("squared_hinge", "crossentropy"):
        raise SettingsError(f"LOSS must be 'squared_hinge' or 'crossentropy', received {s['LOSS']!r}")
    if not str(s["EXPERIMENT_NAME"]).strip() or os.sep in s["EXPERIMENT_NAME"]:
        raise SettingsError(f"EXPERIMENT_NAME must be a plain file name, received {s['EXPERIMENT_NAME']!r}")


def check_writable(paths):
    """Raises `SettingsError` for an output path that cannot be created or written.

    Creates nothing: it looks at the nearest existing ancestor of each path.
    """
    for path in paths:
        path = os.path.abspath(path)
        probe = path
        while not os.path.exists(probe) and os.path.dirname(probe) != probe:
            probe = os.path.dirname(probe)
        if probe != path and not os.path.isdir(probe):
            raise SettingsError(
                f"cannot write {path}: {probe} is a file, not a folder; move it away or run from another folder"
            )
        folder = probe if os.path.isdir(probe) else os.path.dirname(probe)
        if not os.access(folder, os.W_OK | os.X_OK) or (probe == path and not os.access(path, os.W_OK)):
            raise SettingsError(
                f"cannot write {path}: {probe} is not writable; fix its permissions or run from a writable folder"
            )
