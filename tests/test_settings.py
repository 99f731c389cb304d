"""train.py's settings and pnas/settings.py, in this process: names, overrides, validation, configs.

End-to-end cases (a real `python train.py` per bad input) are in tests/test_train_cli.py.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import dataclasses  # noqa: E402
import re  # noqa: E402

import pytest  # noqa: E402

import train  # noqa: E402
from pnas import config as config_module  # noqa: E402
from pnas.config import IDENTITY, RETRAIN_SETTINGS, SETTINGS_READ_BY_TRAIN_PY, TYPES, SearchConfig  # noqa: E402
from pnas.settings import SettingsError, apply_overrides, validate  # noqa: E402


def _defaults():
    return {name: getattr(train, name) for name in train.SETTINGS}


def test_the_setting_names_are_train_pys_upper_case_constants_and_operators():
    names = train.SETTINGS
    assert names[:4] == ["EXPERIMENT_NAME", "SEED", "OVERWRITE", "VERBOSE"]  # in the file's order
    assert {"RUNNER", "RAY_ADDRESS", "RAY_CPUS_PER_CHILD", "RAY_GPUS_PER_CHILD", "operators"} <= set(names)
    assert "SETTINGS" not in names and "TYPES" not in names and "RETRAIN_SETTINGS" not in names
    assert all(name.isupper() or name == "operators" for name in names)
    assert set(IDENTITY) <= set(names)


def test_every_setting_is_read_once_by_a_config_field_or_by_train_py():
    specs = [s.name for s in config_module.SETTINGS]
    assert sorted(specs) == sorted(train.SETTINGS)  # none missing, none stale, none twice
    # Each config field holds its own setting's value: give every setting a value of its own.
    marked = SearchConfig.from_settings({name: [name] for name in train.SETTINGS})
    read = set()

    def collect(fields):
        for key, value in fields.items():
            if isinstance(value, dict):
                collect(value)
            elif key != "identity":
                assert len(value) == 1, (key, value)
                read.add(value[0])

    collect(dataclasses.asdict(marked))
    by_train_py = {s.name for s in SETTINGS_READ_BY_TRAIN_PY}
    assert read == set(specs) - by_train_py
    # What train.py does with each of the others is checked in the next test.
    assert by_train_py == {
        "DROP_INPUT", "DROP_HIDDEN", "USE_EXPANSION", "TRAIN_SIZE", "NUM_EPOCHS", "REPRESENTATION_STRING", "LOAD_SAVED",
    }


class _Stop(Exception):
    """Ends train.py's -ta training where the test has seen what it was handed."""


def test_train_py_acts_on_each_setting_that_feeds_no_config_field(monkeypatch, tmp_path):
    from conftest import synthetic_dataset
    from mnist import mnist_data
    from pnas import manager
    from pnas.encoder import StateSpace

    # DROP_INPUT and DROP_HIDDEN: the rates of DROPOUT.
    _, s, _ = train.parse_args(["--DROP_INPUT=0.3", "--DROP_HIDDEN=0.4"])
    assert s["DROPOUT"][1:] == (0.3, 0.4)

    # USE_EXPANSION and TRAIN_SIZE: the dataset.
    loads = []
    monkeypatch.setattr(mnist_data, "get_dataset", lambda *args, **kwargs: loads.append((args, kwargs)))
    train.load_dataset(dict(_defaults(), USE_EXPANSION=True, TRAIN_SIZE=123, SEED=5))
    assert loads == [((True,), {"train_size": 123, "seed": 5, "verbose": True})]  # train.py asks for the shapes

    # REPRESENTATION_STRING, NUM_EPOCHS and LOAD_SAVED: the -ta training, stopped where it starts.
    handed = {}

    class Manager:
        def __init__(self, dataset, **kwargs):
            handed["epochs"] = kwargs["epochs"]

        def train_child(self, model_fn, **kwargs):
            handed.update(kwargs)
            raise _Stop

    monkeypatch.setattr(manager, "NetworkManager", Manager)
    monkeypatch.setattr(train, "load_dataset", lambda settings: synthetic_dataset(8, 8, 8))
    monkeypatch.chdir(tmp_path)
    space = StateSpace(1, train.operators, train.INPUT_LOOKBACK_DEPTH, train.INPUT_LOOKFORWARD_DEPTH)
    child = space.initial_children()[-1]
    string = space.representation_string(child)
    _, s, _ = train.parse_args(["-ta", "True", f"--REPRESENTATION_STRING={string}", "--NUM_EPOCHS=3", "--B=1"])
    with pytest.raises(_Stop):
        train.train_architecture(s)
    assert handed["actions"] == space.parse(child)
    assert handed["epochs"] == 3 and handed["load_saved"] is False
    with pytest.raises(SystemExit) as exit_info:
        train.train_architecture(dict(s, LOAD_SAVED=True))  # no saved weights to load
    assert exit_info.value.code == 2



def test_the_derived_setting_lists_are_those_kept_by_hand_before():
    # The saved state files store these names: earlier searches must keep matching.
    assert set(IDENTITY) == {
        "B", "K_", "operators", "NUM_CELLS", "NUM_CELL_FILTERS", "DENSE_LAYERS", "DROPOUT",
        "MAX_EPOCHS", "BATCHSIZE", "USE_EXPANSION", "TRAIN_SIZE", "SEED", "CONTROLLER_CELLS",
        "REGULARIZATION", "RNN_TRAINING_EPOCHS", "INPUT_LOOKBACK_DEPTH", "INPUT_LOOKFORWARD_DEPTH",
        "BINARY_H", "KERNEL_LR_MULTIPLIER", "LR_START", "LR_END", "LOSS",
        "MAX_MUL_OPS", "ENCODER_ENSEMBLE", "ENCODER_BATCHSIZE", "ENCODER_LR", "ENCODER_TARGETS",
        "SURROGATE",  # added since; earlier saved searches ran with 'lstm' (pnas.records.CONFIG_ADDED)
        "ENCODER_AUGMENT", "ENCODER_READOUT",  # added since; earlier: False, 'last'
        "MAX_OPS",  # added since; earlier: None
    }
    assert len(IDENTITY) == len(set(IDENTITY)) == 31
    assert set(RETRAIN_SETTINGS) == {
        "EXPERIMENT_NAME", "B", "operators", "INPUT_LOOKBACK_DEPTH", "INPUT_LOOKFORWARD_DEPTH", "NUM_CELLS",
        "NUM_CELL_FILTERS", "DENSE_LAYERS", "DROP_INPUT", "DROP_HIDDEN", "DROPOUT", "BATCHSIZE", "USE_EXPANSION",
        "SEED", "BINARY_H", "KERNEL_LR_MULTIPLIER", "LR_START", "LR_END", "LOSS",
    }
    none = type(None)
    assert TYPES == {
        "TRAIN_SIZE": (int, none), "INPUT_LOOKFORWARD_DEPTH": (int, none), "MAX_MUL_OPS": (int, float, none),
        "MAX_OPS": (int, float, none),
        "BINARY_H": (str, int, float), "KERNEL_LR_MULTIPLIER": (str, int, float, none),
        "ENCODER_BATCHSIZE": (int, none), "RAY_ADDRESS": (str, none), "RAY_CPUS_PER_CHILD": (int, float),
        "RAY_GPUS_PER_CHILD": (int, float), "FINAL_TRAIN_SIZE": (int, none), "FINAL_EPOCHS": (int, none),
        # Derived from the config fields' annotations: every float setting takes an int too.
        "LR_START": (int, float), "LR_END": (int, float), "REGULARIZATION": (int, float), "ENCODER_LR": (int, float),
    }


def test_a_float_setting_with_an_int_default_takes_a_float():
    # REGULARIZATION defaults to 0 (an int): its override was refused as "must be of type int".
    _, s, _ = train.parse_args(["--REGULARIZATION=1e-4", "--RAY_CPUS_PER_CHILD=0.5"])
    assert s["REGULARIZATION"] == 1e-4 and s["RAY_CPUS_PER_CHILD"] == 0.5


def test_retrain_args_repeat_only_the_overrides_that_shape_the_child_in_file_order():
    _, s, overridden = train.parse_args(["--SEED=3", "--VERBOSE=0", "--B=2", "--MAX_EPOCHS=1", "--DROP_INPUT=0.3",
                                         "--NUM_CELL_FILTERS=[8, 8, 8]", "--EXPERIMENT_NAME=x"])
    assert "RETRAIN_ARGS" not in s  # settings.json holds the settings only
    assert train.retrain_args(s, overridden) == [
        "--EXPERIMENT_NAME=x", "--SEED=3", "--B=2", "--DROP_INPUT=0.3", '--NUM_CELL_FILTERS="[8, 8, 8]"'
    ]


BAD = {
    "B=0": ("--B=0", "B must be >= 1, received B=0"),
    "K_=0": ("--K_=0", "K_ must be >= 1"),
    "filters per cell": ("--NUM_CELL_FILTERS=[4, 8]", "NUM_CELL_FILTERS has 2 entries but NUM_CELLS=3"),
    "classes": ("--DENSE_LAYERS=[10, 12]", "the last DENSE_LAYERS entry"),
    "float for int": ("--B=2.5", "--B must be of type int"),
    "int for list": ("--operators=3", "--operators must be of type list"),
    "bool for int": ("--B=True", "--B must be of type int"),
    "unknown setting": ("--NOT_A_SETTING=1", "unknown setting 'NOT_A_SETTING'"),
    "not a literal": ("--B=two", "not a Python literal"),
    "no form": ("B=2", "overrides take the form --NAME=value"),
    "side by side in-process": ("--PARALLEL_CHILDREN=2|--CHILDREN_PER_PROCESS=0", "PARALLEL_CHILDREN=2"),
    "unknown surrogate": ("--SURROGATE='mlp'", "SURROGATE must be one of 'lstm', 'ridge'"),
    "unknown readout": ("--ENCODER_READOUT='max'", "ENCODER_READOUT must be one of 'last', 'mean'"),
    "unknown targets": ("--ENCODER_TARGETS=zscore", "ENCODER_TARGETS must be one of 'scaled', 'standardize', 'raw'"),
    "ridge ensemble": ("--ENCODER_ENSEMBLE=5|--SURROGATE='ridge'", "ENCODER_ENSEMBLE=5 averages LSTM encoders; with SURROGATE='ridge'"),
    "unknown runner": ("--RUNNER='spark'", "RUNNER must be one of 'processes', 'inline', 'ray'"),
    "inline side by side": ("--RUNNER='inline'|--PARALLEL_CHILDREN=2", "RUNNER='inline' trains one child"),
    "ray address": ("--RAY_ADDRESS=6379", "RAY_ADDRESS must be None (a Ray on this machine), 'auto' or 'host:port'"),
    "no cpus": ("--RAY_CPUS_PER_CHILD=0", "RAY_CPUS_PER_CHILD must be > 0"),
    "negative gpus": ("--RAY_GPUS_PER_CHILD=-1", "RAY_GPUS_PER_CHILD must be >= 0"),
    "dropout": ("--DROPOUT=(True, 0.2, 1.5)", "DROPOUT must be (bool, input rate, hidden rate)"),
    "learning rates": ("--LR_END=0.1", "need 0 < LR_END <= LR_START"),
    "experiment name": ("--EXPERIMENT_NAME=a/b", "EXPERIMENT_NAME must be a plain file name"),
    "given twice": ("--B=1|--B=2", "B is given twice (--B=1 and --B=2); give it once, e.g. --B=2"),
    "verbose out of range": ("--VERBOSE=3", "VERBOSE must be 0 (silent), 1 (progress bar) or 2"),
    "dropout rate": ("--DROP_INPUT=1.5", "DROP_INPUT is a dropout rate in [0, 1)"),
    "negative regularization": ("--REGULARIZATION=-1", "REGULARIZATION must be >= 0"),
    "near miss": ("--MAX_EPOCH=1", "unknown setting 'MAX_EPOCH'; did you mean --MAX_EPOCHS=1 "),
    "other case": ("--b=2", "did you mean --B=2 "),
    "float for an int": ("--TRAIN_SIZE=1e3", "write e.g. --TRAIN_SIZE=1000 (an int)"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_setting_is_one_error_line_and_exit_2(case, capsys):
    args, expected = BAD[case]
    with pytest.raises(SystemExit) as info:
        train.parse_args(args.split("|"))  # "|" separates arguments
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    assert expected in err[0]


def test_a_near_miss_names_the_setting_meant_in_a_short_line(capsys):
    with pytest.raises(SystemExit):
        train.parse_args(["--MAX_EPOCH=1"])
    line = capsys.readouterr().err.strip()
    assert len(line) < 400 and "MAX_EPOCHS" in line and "TRAIN_SIZE" not in line  # not every name
    with pytest.raises(SystemExit):
        train.parse_args(["--NOT_A_SETTING=1"])  # no near miss: every name
    assert "TRAIN_SIZE" in capsys.readouterr().err


def test_a_refused_run_prints_its_error_line_only_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for args in (["--B=1", "--B=2"], ["--VERBOSE=3"], ["--MAX_EPOCH=1"], ["--TRAIN_SIZE=1e3"]):
        with pytest.raises(SystemExit) as info:
            train.main(args)
        assert info.value.code == 2
        out, err = capsys.readouterr()
        assert out == "" and len(err.strip().splitlines()) == 1
        assert os.listdir(tmp_path) == []


def test_the_settings_printed_are_those_that_differ_from_train_pys():
    _, s, _ = train.parse_args(["--B=2", "--VERBOSE=0", "--operators=['3x3 bconv']"])
    assert train.settings_lines(s) == [
        "Settings that differ from train.py's (python train.py --help lists the defaults):",
        "  VERBOSE = 0", "  B = 2", "  operators = ['3x3 bconv']",
    ]
    _, s, _ = train.parse_args([f"--B={train.B}"])  # given, but train.py's value
    assert train.settings_lines(s) == ["Settings: train.py's defaults (python train.py --help lists them)"]


def test_overrides_are_typed_and_dropout_follows_its_rates():
    _, s, _ = train.parse_args(["--B=2", "--LR_START=1", "--DROP_INPUT=0.3", "--RUNNER=ray", "--RAY_GPUS_PER_CHILD=0.5",
                             "--RAY_ADDRESS='auto'", "--MAX_MUL_OPS=1e6"])
    assert s["B"] == 2 and s["LR_START"] == 1.0 and isinstance(s["LR_START"], float)
    assert s["DROPOUT"] == (False, 0.3, 0.5)
    assert s["RUNNER"] == "ray"  # a text setting takes the text when the shell removed the quotes
    assert s["RAY_GPUS_PER_CHILD"] == 0.5 and s["RAY_ADDRESS"] == "auto" and s["MAX_MUL_OPS"] == 1e6


def test_apply_overrides_reports_which_names_changed():
    settings, overridden = apply_overrides({"A": 1, "T": "x"}, ["--A=2", "--T=hello world"])
    assert settings == {"A": 2, "T": "hello world"} and overridden == ["A", "T"]
    with pytest.raises(SettingsError, match="unknown setting 'B'; the settings are: A, T"):
        apply_overrides({"A": 1, "T": "x"}, ["--B=1"])


def test_the_defaults_are_valid_and_make_the_search_config():
    settings = dict(_defaults(), DROPOUT=tuple(train.DROPOUT))
    validate(settings)
    config = SearchConfig.from_settings(settings)
    assert config.max_blocks == train.B and config.encoder.k == train.K_
    assert config.child.epochs == train.MAX_EPOCHS and config.child.num_cell_filters == tuple(train.NUM_CELL_FILTERS)
    assert config.runner.kind == "processes" and config.runner.ray_address is None
    assert config.identity_dict()["NUM_CELL_FILTERS"] == list(train.NUM_CELL_FILTERS)
    assert list(config.identity_dict()) == list(IDENTITY)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.seed = 1
    # Settings that do not define the search (where children run) leave its identity alone.
    moved = SearchConfig.from_settings(dict(settings, RUNNER="ray", PARALLEL_CHILDREN=2, VERBOSE=0))
    assert moved.identity == config.identity and moved.runner.kind == "ray"


def test_resuming_with_other_settings_names_them_and_the_overrides_that_resume(tmp_path):
    import shlex

    from pnas.records import SearchConfigError, SearchState

    state = str(tmp_path / "search_state.json")
    saved_args = ["--ENCODER_TARGETS=raw", "--NUM_CELL_FILTERS=[8, 16, 16]", "--operators=['3x3 bconv', 'linear']"]
    saved, _ = apply_overrides(_defaults(), saved_args, TYPES)
    SearchState.load_or_create(state, SearchConfig.from_settings(saved).identity_dict()).save()

    now = SearchConfig.from_settings(_defaults()).identity_dict()
    with pytest.raises(SearchConfigError) as error:
        SearchState.load_or_create(state, now)
    message = str(error.value)
    assert "\n" not in message
    assert f"ENCODER_TARGETS='raw' (now {train.ENCODER_TARGETS!r})" in message
    assert "NUM_CELL_FILTERS=[8, 16, 16] (now [16, 24, 32])" in message
    assert "--OVERWRITE=True" in message
    # The overrides it suggests, as a shell splits them, resume the saved search.
    suggested = shlex.split(re.search(r"resume it with (.*), or start afresh", message).group(1))
    assert len(suggested) == 3
    resumed, _ = apply_overrides(_defaults(), suggested, TYPES)
    assert SearchState.load_or_create(state, SearchConfig.from_settings(resumed).identity_dict()).data.config == (
        SearchConfig.from_settings(saved).identity_dict()
    )


def test_a_saved_ridge_search_resumes_whatever_the_lstm_settings_hold(tmp_path):
    import json
    import shlex

    from pnas.config import LSTM_ONLY
    from pnas.records import SearchConfigError, SearchState

    state = str(tmp_path / "search_state.json")
    saved, _ = apply_overrides(_defaults(), ["--SURROGATE='ridge'"], TYPES)
    SearchState.load_or_create(state, SearchConfig.from_settings(saved).identity_dict()).save()
    # As a state written before ENCODER_AUGMENT and ENCODER_READOUT existed.
    with open(state) as f:
        data = json.load(f)
    del data["config"]["ENCODER_AUGMENT"], data["config"]["ENCODER_READOUT"]
    with open(state, "w") as f:
        json.dump(data, f)

    with pytest.raises(SearchConfigError) as error:  # today's default ranks with the LSTM
        SearchState.load_or_create(state, SearchConfig.from_settings(_defaults()).identity_dict())
    suggested = shlex.split(re.search(r"resume it with (.*), or start afresh", str(error.value)).group(1))
    assert suggested == ["--SURROGATE=ridge"]  # the LSTM's own settings need not be repeated
    resumed, _ = apply_overrides(_defaults(), suggested + ["--CONTROLLER_CELLS=7"], TYPES)
    loaded = SearchState.load_or_create(state, SearchConfig.from_settings(resumed).identity_dict())
    assert loaded.data.config["SURROGATE"] == "ridge" and loaded.data.config["ENCODER_AUGMENT"] is False
    assert "ENCODER_AUGMENT" in LSTM_ONLY and "K_" not in LSTM_ONLY
    # A search that ranks with the LSTM is still refused when they differ.
    lstm = str(tmp_path / "lstm_state.json")
    SearchState.load_or_create(lstm, SearchConfig.from_settings(_defaults()).identity_dict()).save()
    other, _ = apply_overrides(_defaults(), ["--CONTROLLER_CELLS=7"], TYPES)
    with pytest.raises(SearchConfigError, match="CONTROLLER_CELLS=100"):
        SearchState.load_or_create(lstm, SearchConfig.from_settings(other).identity_dict())
