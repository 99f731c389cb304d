"""train.py's settings and pnas/settings.py, in this process: names, overrides, validation, configs.

End-to-end cases (a real `python train.py` per bad input) are in tests/test_train_cli.py.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import dataclasses  # noqa: E402

import pytest  # noqa: E402

import train  # noqa: E402
from pnas.config import IDENTITY, SearchConfig  # noqa: E402
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
    "unknown runner": ("--RUNNER='spark'", "RUNNER must be one of 'processes', 'inline', 'ray'"),
    "inline side by side": ("--RUNNER='inline'|--PARALLEL_CHILDREN=2", "RUNNER='inline' trains one child"),
    "ray address type": ("--RAY_ADDRESS=6379", "--RAY_ADDRESS must be of type str or NoneType"),
    "no cpus": ("--RAY_CPUS_PER_CHILD=0", "RAY_CPUS_PER_CHILD must be > 0"),
    "negative gpus": ("--RAY_GPUS_PER_CHILD=-1", "RAY_GPUS_PER_CHILD must be >= 0"),
    "dropout": ("--DROPOUT=(True, 0.2, 1.5)", "DROPOUT must be (bool, input rate, hidden rate)"),
    "learning rates": ("--LR_END=0.1", "need 0 < LR_END <= LR_START"),
    "experiment name": ("--EXPERIMENT_NAME=a/b", "EXPERIMENT_NAME must be a plain file name"),
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


def test_overrides_are_typed_and_dropout_follows_its_rates():
    _, s = train.parse_args(["--B=2", "--LR_START=1", "--DROP_INPUT=0.3", "--RUNNER=ray", "--RAY_GPUS_PER_CHILD=0.5",
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
