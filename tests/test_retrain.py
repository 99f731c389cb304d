"""-ta True retrains the cell a search logged: the space settings come from the search's saved settings.

The end-to-end case (a real search, then its string retrained by train.py) is in tests/test_train_cli.py.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import json  # noqa: E402

import pytest  # noqa: E402

import train  # noqa: E402
from pnas.encoder import StateSpace  # noqa: E402
from pnas.retrain import logged_cell_settings, saved_search_settings  # noqa: E402
from pnas.settings import SettingsError  # noqa: E402

OPS = ["3x3 bconv", "3x3 maxpool", "linear", "3x3 avgpool"]
SPACE = StateSpace(1, OPS)
AVGPOOL = (0, 3, 0, 3)
STRING = SPACE.representation_string(AVGPOOL)  # "[[1.]] [[0. 0. 0. 4.]] [[1.]] [[0. 0. 0. 4.]]"


def _saved(**changes):
    _, settings, _ = train.parse_args(["--B=1", f"--operators={OPS!r}"])
    return json.loads(json.dumps(dict(settings, **changes), default=list))  # as settings.json holds them


def _run(args, saved, name="s1"):
    _, settings, overridden = train.parse_args(["-ta", "True", f"--REPRESENTATION_STRING={STRING}", *args])
    return logged_cell_settings(settings, overridden, saved, name)


def test_the_search_s_operators_give_the_string_its_meaning():
    settings, adopted = _run(["--B=1"], _saved())
    assert adopted == ["operators"] and settings["operators"] == OPS
    space = StateSpace(settings["B"], settings["operators"])
    assert space.parse(space.from_representation_string(STRING)) == [0, "3x3 avgpool", 0, "3x3 avgpool"]
    settings, adopted = _run([], _saved())  # B too
    assert adopted == ["B", "operators"] and settings["B"] == 1


def test_an_override_that_makes_the_string_another_cell_is_refused_with_the_fix():
    with pytest.raises(SettingsError) as error:
        _run(["--B=1", "--operators=['3x3 sep-bconv', '5x5 sep-bconv', '1x7-7x1 bconv', '3x3 bconv']"], _saved())
    message = str(error.value)
    assert "[0, '3x3 avgpool', 0, '3x3 avgpool'] in the search 's1'" in message
    assert "trains [0, '3x3 bconv', 0, '3x3 bconv']" in message
    assert message.endswith(f'write --operators="{OPS!r}"')
    with pytest.raises(SettingsError, match="write --B=1$"):
        _run(["--B=2"], _saved())  # the string's input arrays have 1 entry: no cell of B=2
    # An override that leaves the cell as logged is taken.
    settings, _ = _run(["--INPUT_LOOKFORWARD_DEPTH=None"], _saved())
    assert settings["INPUT_LOOKFORWARD_DEPTH"] is None and settings["operators"] == OPS


def test_a_string_of_no_saved_search_that_does_not_fit_names_what_it_needs():
    with pytest.raises(SettingsError) as error:
        _run([], None)  # train.py's B=3: input arrays of 3 entries
    message = str(error.value)
    assert message.startswith("REPRESENTATION_STRING: array 1 [[1.]] is not a one-hot input array of size 3")
    assert "no search 's1' saved the settings" in message and "need --B=1" in message and "4 operators" in message
    # A string that fits train.py's settings is theirs to mean: nothing is taken.
    settings, adopted = _run(["--B=1"], None)
    assert adopted == [] and settings["operators"] == train.operators
    # A string that is no cell of the saved search either: refused, naming the search's settings.
    with pytest.raises(SettingsError, match="it is no cell of the search 's1' .*B=2"):
        _run([], _saved(B=2))


def test_saved_search_settings_reads_a_search_s_settings_only(tmp_path):
    path = tmp_path / "settings.json"
    assert saved_search_settings(path) is None
    path.write_text(json.dumps(_saved()))
    assert saved_search_settings(path)["operators"] == OPS
    path.write_text("[]")
    assert saved_search_settings(path) is None


class _Stop(Exception):
    """Ends the -ta training where the test has seen what it was handed."""


def test_train_py_retrains_the_logged_cell_and_says_where_its_settings_come_from(tmp_path, monkeypatch, capsys):
    from conftest import synthetic_dataset
    from pnas import manager

    handed = {}

    class Manager:
        def __init__(self, dataset, **kwargs):
            pass

        def train_child(self, model_fn, **kwargs):
            handed.update(kwargs)
            raise _Stop

    monkeypatch.setattr(manager, "NetworkManager", Manager)
    monkeypatch.setattr(train, "load_dataset", lambda settings: synthetic_dataset(8, 8, 8))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "logs" / "s1").mkdir(parents=True)
    (tmp_path / "logs" / "s1" / "settings.json").write_text(json.dumps(_saved()))
    with pytest.raises(_Stop):
        train.main(["-ta", "True", "--EXPERIMENT_NAME=s1", "--B=1", f"--REPRESENTATION_STRING={STRING}"])
    assert handed["actions"] == [0, "3x3 avgpool", 0, "3x3 avgpool"]
    out = capsys.readouterr().out
    assert "Training architecture [0, '3x3 avgpool', 0, '3x3 avgpool']" in out
    assert f"Retraining the cell as logged: operators={OPS!r} from ./logs/s1/settings.json" in out
