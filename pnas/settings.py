"""Command-line overrides of the train.py settings: one rule to read them, their validation, the --help text."""

import ast
import difflib
import io
import os
import re
import tokenize

from pnas.config import ENCODER_READOUTS, ENCODER_TARGETS, OPERATORS, RUNNERS, SURROGATES


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


def is_text_setting(name, default, types=None):
    """Whether the setting takes text: its default is a str, or str is one of the types it takes."""
    types = types or {}
    return str in types[name] if name in types else isinstance(default, str)


def format_override(name, value):
    """`--NAME=value` for `value`, written so that a shell passes it to train.py unchanged.

    Text is written as the bare word where it is one (`--RUNNER=ray`); any
    other value as its Python literal, quoted for the shell where it holds
    spaces or brackets (JSON's lists stand for tuples).
    """
    text = value if isinstance(value, str) else repr(value)
    return f"--{name}={text}" if re.fullmatch(r"[\w.+\-:]*", text) else f'--{name}="{text}"'


def parse_value(name, text, default, types=None):
    """The value of `--NAME=text`: one rule for every setting.

    A Python literal of a type the setting takes is that value
    (`--B=2`, `--RAY_ADDRESS=None`, `--RUNNER="'ray'"`). A text setting
    (`is_text_setting`) takes anything else as the text itself
    (`--RUNNER=ray`, `--RAY_ADDRESS=auto`, `--EXPERIMENT_NAME=try1`).

    Raises:
        SettingsError: a value that is no literal, or of the wrong type.
    """
    types = types or {}
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        value, literal = text, False
    else:
        literal = True
    if is_text_setting(name, default, types) and not (literal and _type_ok(value, default, name, types)):
        return text
    example = format_override(name, default)
    if not literal:
        raise SettingsError(f"--{name}={text} is not a Python literal; write e.g. {example}")
    if not _type_ok(value, default, name, types):
        expected = " or ".join(t.__name__ for t in types.get(name, (type(default),)))
        if isinstance(value, float) and value.is_integer() and _type_ok(int(value), default, name, types):
            example = f"{format_override(name, int(value))} (an int)"  # --TRAIN_SIZE=1e3 means 1000
        else:
            example = f"{example} (the default)"
        raise SettingsError(
            f"--{name} must be of type {expected}, received {value!r} ({type(value).__name__}); "
            f"write e.g. {example}"
        )
    if isinstance(default, float) and isinstance(value, int):
        value = float(value)
    return value


def apply_overrides(defaults, args, types=None):
    """Applies `--NAME=value` overrides to a copy of `defaults` (each value read by `parse_value`).

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
    given = {}
    for arg in args:
        if not arg.startswith("--") or "=" not in arg:
            raise SettingsError(f"cannot read argument {arg!r}: overrides take the form --NAME=value; write e.g. --B=2")
        name, text = arg[2:].split("=", 1)
        if name not in defaults:
            raise SettingsError(_unknown_name(name, text, defaults))
        if name in given:
            # Last-wins would run a setting the user may not have meant: say which one, once.
            raise SettingsError(f"{name} is given twice ({given[name]} and {arg}); give it once, e.g. {arg}")
        given[name] = arg
        settings[name] = parse_value(name, text, defaults[name], types)
        overridden.append(name)
    return settings, overridden


def _unknown_name(name, text, defaults):
    """The refusal of `--name=text` for a name that is no setting: the near misses, or else every name."""
    by_upper = {known.upper(): known for known in defaults}
    near = [by_upper[name.upper()]] if name.upper() in by_upper else [
        by_upper[m] for m in difflib.get_close_matches(name.upper(), list(by_upper), n=3, cutoff=0.75)
    ]
    if near:
        fixes = " or ".join(f"--{known}={text}" for known in near)
        return f"unknown setting {name!r}; did you mean {fixes} (python train.py --help lists every setting)"
    return f"unknown setting {name!r}; the settings are: {', '.join(sorted(defaults))} (python train.py --help)"


def _require_one_of(settings, name, choices):
    if settings[name] not in choices:
        raise SettingsError(
            f"{name} must be one of {', '.join(map(repr, choices))}, received {settings[name]!r}; "
            f"write e.g. --{name}={choices[0]}"
        )


def validate(settings):
    """Checks the search settings; raises `SettingsError` with the fix (the first problem found, group by group)."""
    _check_operators(settings)
    _check_counts(settings)
    _check_workers(settings)
    _check_surrogate(settings)
    _check_space(settings)
    _check_child(settings)
    _check_training(settings)


def _check_operators(s):
    """The operators: known, at least one, no duplicates."""
    unknown = [op for op in s["operators"] if op not in OPERATORS]
    if unknown:
        raise SettingsError(
            f"unknown operator(s) {unknown} in operators; valid operators are {list(OPERATORS)}, "
            f"e.g. {format_override('operators', [op for op in s['operators'] if op in OPERATORS] or list(OPERATORS)[:1])}"
        )
    if not s["operators"]:
        raise SettingsError(
            f"operators is empty; give at least one of {list(OPERATORS)}, e.g. "
            f"{format_override('operators', list(OPERATORS)[:2])}"
        )
    if len(set(s["operators"])) != len(s["operators"]):
        raise SettingsError(
            f"operators has duplicates: {s['operators']}; list each operator once, "
            f"e.g. {format_override('operators', list(dict.fromkeys(s['operators'])))}"
        )


def _check_counts(s):
    """The counts that must be positive."""
    for name in ("B", "K_", "NUM_CELLS", "MAX_EPOCHS", "BATCHSIZE", "NUM_EPOCHS", "RNN_TRAINING_EPOCHS",
                 "CONTROLLER_CELLS", "MAX_CONSECUTIVE_FAILURES", "ENCODER_ENSEMBLE"):
        if s[name] < 1:
            raise SettingsError(f"{name} must be >= 1, received {name}={s[name]}; write e.g. --{name}=1")


def _check_workers(s):
    """Where and how many children train side by side: the runner, its processes, Ray."""
    if s["CHILDREN_PER_PROCESS"] < 0:
        raise SettingsError(
            f"CHILDREN_PER_PROCESS must be >= 0, received {s['CHILDREN_PER_PROCESS']}; write e.g. --CHILDREN_PER_PROCESS=10"
        )
    if s["PARALLEL_CHILDREN"] < 1:
        raise SettingsError(f"PARALLEL_CHILDREN must be >= 1, received {s['PARALLEL_CHILDREN']}; write e.g. --PARALLEL_CHILDREN=1")
    if s["PARALLEL_CHILDREN"] > 1 and s["CHILDREN_PER_PROCESS"] == 0 and s["RUNNER"] == "processes":
        raise SettingsError(
            f"PARALLEL_CHILDREN={s['PARALLEL_CHILDREN']} trains children in worker processes; "
            "set --CHILDREN_PER_PROCESS=10 or --PARALLEL_CHILDREN=1"
        )
    _require_one_of(s, "RUNNER", RUNNERS)
    if s["RUNNER"] == "inline" and s["PARALLEL_CHILDREN"] > 1:
        raise SettingsError(
            f"RUNNER='inline' trains one child at a time; set --PARALLEL_CHILDREN=1 (received {s['PARALLEL_CHILDREN']}) "
            "or use --RUNNER=processes"
        )
    address = s["RAY_ADDRESS"]
    # Ray's own forms: 'auto', host:port of a cluster's head, ray://host:port of a Ray Client server.
    if address is not None and address != "auto" and not re.fullmatch(r"(ray://)?[\w.\-\[\]:]+:\d+", address):
        raise SettingsError(
            f"RAY_ADDRESS must be None (a Ray on this machine), 'auto' or 'host:port', received {address!r}; "
            "write e.g. --RAY_ADDRESS=None, --RAY_ADDRESS=auto or --RAY_ADDRESS=127.0.0.1:6379"
        )
    if not s["RAY_CPUS_PER_CHILD"] > 0:
        raise SettingsError(f"RAY_CPUS_PER_CHILD must be > 0, received {s['RAY_CPUS_PER_CHILD']}; write e.g. --RAY_CPUS_PER_CHILD=1")
    if s["RAY_GPUS_PER_CHILD"] < 0:
        raise SettingsError(f"RAY_GPUS_PER_CHILD must be >= 0, received {s['RAY_GPUS_PER_CHILD']}; write e.g. --RAY_GPUS_PER_CHILD=0")
    if s["RAY_MAX_RETRIES"] < 0:
        raise SettingsError(f"RAY_MAX_RETRIES must be >= 0, received {s['RAY_MAX_RETRIES']}; write e.g. --RAY_MAX_RETRIES=1")


def _check_surrogate(s):
    """The surrogate and the LSTM encoder's settings."""
    if s["ENCODER_BATCHSIZE"] is not None and s["ENCODER_BATCHSIZE"] < 1:
        raise SettingsError(
            f"ENCODER_BATCHSIZE must be None or >= 1, received {s['ENCODER_BATCHSIZE']}; write e.g. --ENCODER_BATCHSIZE=1"
        )
    if s["REGULARIZATION"] < 0:
        raise SettingsError(f"REGULARIZATION must be >= 0, received {s['REGULARIZATION']}; write e.g. --REGULARIZATION=0")
    if not s["ENCODER_LR"] > 0:
        raise SettingsError(f"ENCODER_LR must be > 0, received {s['ENCODER_LR']}; write e.g. --ENCODER_LR=0.001")
    _require_one_of(s, "SURROGATE", SURROGATES)
    if s["SURROGATE"] == "ridge" and s["ENCODER_ENSEMBLE"] != 1:
        raise SettingsError(
            f"ENCODER_ENSEMBLE={s['ENCODER_ENSEMBLE']} averages LSTM encoders; with SURROGATE='ridge' set "
            "--ENCODER_ENSEMBLE=1, or use --SURROGATE=lstm"
        )
    _require_one_of(s, "ENCODER_TARGETS", ENCODER_TARGETS)
    _require_one_of(s, "ENCODER_READOUT", ENCODER_READOUTS)


def _check_space(s):
    """The op budget and the blocks' inputs."""
    for name in ("MAX_MUL_OPS", "MAX_OPS"):
        if s[name] is not None and not s[name] > 0:
            raise SettingsError(f"{name} must be None or > 0, received {s[name]}; write e.g. --{name}=None")
    if s["INPUT_LOOKBACK_DEPTH"] not in (0, -1):
        raise SettingsError(
            "INPUT_LOOKBACK_DEPTH must be 0 (blocks read the cell input) or -1 (also the previous cell's "
            f"input), received {s['INPUT_LOOKBACK_DEPTH']}; write --INPUT_LOOKBACK_DEPTH=0 or --INPUT_LOOKBACK_DEPTH=-1"
        )
    if s["INPUT_LOOKFORWARD_DEPTH"] is not None and s["INPUT_LOOKFORWARD_DEPTH"] < 0:
        raise SettingsError(
            f"INPUT_LOOKFORWARD_DEPTH must be None (no limit) or >= 0, received {s['INPUT_LOOKFORWARD_DEPTH']}; "
            "write e.g. --INPUT_LOOKFORWARD_DEPTH=None or --INPUT_LOOKFORWARD_DEPTH=0"
        )


def _check_child(s):
    """A child's network: cells, dense head."""
    if len(s["NUM_CELL_FILTERS"]) != s["NUM_CELLS"]:
        raise SettingsError(
            f"NUM_CELL_FILTERS has {len(s['NUM_CELL_FILTERS'])} entries but NUM_CELLS={s['NUM_CELLS']}; "
            f"give one filter count per cell, e.g. {format_override('NUM_CELL_FILTERS', [16] * s['NUM_CELLS'])}"
        )
    if any(not isinstance(f, int) or f < 1 for f in s["NUM_CELL_FILTERS"]):
        raise SettingsError(
            f"NUM_CELL_FILTERS must hold positive ints, received {s['NUM_CELL_FILTERS']}; "
            f"write e.g. {format_override('NUM_CELL_FILTERS', [16] * s['NUM_CELLS'])}"
        )
    if not s["DENSE_LAYERS"] or any(not isinstance(u, int) or u < 1 for u in s["DENSE_LAYERS"]):
        raise SettingsError(
            f"DENSE_LAYERS must be a list of positive ints, received {s['DENSE_LAYERS']}; "
            f"write e.g. {format_override('DENSE_LAYERS', [32, 10])}"
        )
    if s["DENSE_LAYERS"][-1] != 10:
        raise SettingsError(
            f"the last DENSE_LAYERS entry is the number of MNIST classes and must be 10, received {s['DENSE_LAYERS']}; "
            f"write e.g. {format_override('DENSE_LAYERS', [u for u in s['DENSE_LAYERS'][:-1] if isinstance(u, int) and u > 0] + [10])}"
        )


def _check_training(s):
    """A child's training and the experiment's name."""
    if s["VERBOSE"] not in (0, 1, 2):
        raise SettingsError(
            f"VERBOSE must be 0 (silent), 1 (progress bar) or 2 (one line per epoch), received {s['VERBOSE']}; "
            "write e.g. --VERBOSE=2"
        )
    if not 0 <= s["SEED"] < 2**32:
        raise SettingsError(f"SEED must be an int in [0, 2**32), received {s['SEED']}; write e.g. --SEED=0")
    for name in ("DROP_INPUT", "DROP_HIDDEN"):
        if not 0 <= s[name] < 1:
            raise SettingsError(f"{name} is a dropout rate in [0, 1), received {s[name]}; write e.g. --{name}=0.2")
    dropout = s["DROPOUT"]
    if len(dropout) != 3 or not isinstance(dropout[0], bool) or not all(0 <= r < 1 for r in dropout[1:]):
        raise SettingsError(
            f"DROPOUT must be (bool, input rate, hidden rate) with rates in [0, 1), received {dropout}; "
            f"write e.g. {format_override('DROPOUT', (True, 0.2, 0.5))}"
        )
    for name in ("TRAIN_SIZE", "FINAL_TRAIN_SIZE", "FINAL_EPOCHS"):
        if s[name] is not None and (not isinstance(s[name], int) or s[name] < 1):
            raise SettingsError(
                f"{name} must be None or an int >= 1, received {s[name]}; write e.g. "
                f"--{name}={3 if name == 'FINAL_EPOCHS' else 1000}"
            )
    if s["FINAL_TOP"] < 0:
        raise SettingsError(
            f"FINAL_TOP must be >= 0 (0: no final stage), received FINAL_TOP={s['FINAL_TOP']}; write e.g. --FINAL_TOP=4"
        )
    for name in ("BINARY_H", "KERNEL_LR_MULTIPLIER"):
        value = s[name]
        if value is None and name == "KERNEL_LR_MULTIPLIER":
            continue
        if value != "Glorot" and (isinstance(value, str) or not value > 0):
            raise SettingsError(
                f"{name} must be a positive number or 'Glorot', received {value!r}; write e.g. --{name}=Glorot or --{name}=1"
            )
    if not 0 < s["LR_END"] <= s["LR_START"]:
        raise SettingsError(
            f"need 0 < LR_END <= LR_START, received LR_START={s['LR_START']}, LR_END={s['LR_END']}; "
            + ("write e.g. --LR_START=0.03" if not s["LR_START"] > 0 else f"write e.g. --LR_END={min(1e-4, s['LR_START'])!r}")
        )
    if s["LOSS"] not in ("squared_hinge", "crossentropy"):
        raise SettingsError(
            f"LOSS must be 'squared_hinge' or 'crossentropy', received {s['LOSS']!r}; write e.g. --LOSS=squared_hinge"
        )
    if not str(s["EXPERIMENT_NAME"]).strip() or os.sep in s["EXPERIMENT_NAME"]:
        raise SettingsError(
            f"EXPERIMENT_NAME must be a plain file name, received {s['EXPERIMENT_NAME']!r}; write e.g. --EXPERIMENT_NAME=try1"
        )


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


_SECTION = re.compile(r"#\s*-+\s*(.*?)\s*-*\s*$")


def settings_help(source, values):
    """train.py's settings as its `--help` shows them, read from its source.

    Grouped under train.py's section lines (`# ------- Experiment Settings -------`),
    each setting with its default (from `values`) and its comment, including
    the indented comment lines that continue it.

    Args:
        source: The text of train.py.
        values: {name: default} of the settings to show, in train.py's order.

    Returns:
        The text, one block per section.
    """
    comments = {}  # line number -> (column, text)
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = (token.start[1], token.string.lstrip("#").strip())
    source_lines = source.splitlines()
    alone = {n for n in comments if source_lines[n - 1].lstrip().startswith("#")}  # comment-only lines
    sections = {}  # line number -> section title ("" closes a section)
    for line, (column, text) in comments.items():
        match = _SECTION.fullmatch("# " + text) if line in alone and column == 0 and text.startswith("-") else None
        if match:
            sections[line] = match.group(1)
    lines, section = [], None
    for statement in ast.parse(source).body:
        if not isinstance(statement, ast.Assign) or len(statement.targets) != 1:
            continue
        target = statement.targets[0]
        if not isinstance(target, ast.Name) or target.id not in values:
            continue
        title = next((sections[n] for n in sorted(sections, reverse=True) if n < statement.lineno), "")
        if title != section:
            section = title
            lines.append(f"\n{title or 'Other settings'}:")
        text = [comments[n][1] for n in range(statement.lineno, statement.end_lineno + 1) if n in comments]
        n = statement.end_lineno + 1
        while n in alone and comments[n][0] > 0:  # indented comment lines continue the setting's comment
            text.append(comments[n][1])
            n += 1
        lines.append(f"  {format_override(target.id, values[target.id])}")
        lines.extend(f"      {t}" for t in text)
    return "\n".join(lines).lstrip("\n") + "\n"
