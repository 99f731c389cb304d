"""What `python train.py -ta True` trains: the cell a search logged, never another one silently.

A representation string (architectures/NAME.txt, .jsonl) is one-hot arrays: it
names a cell only together with the search's `B`, `operators` and input
lookback (the array sizes and what each index means), which the original's log
format does not record. The search saves them in logs/NAME/settings.json, so a
retrain under `--EXPERIMENT_NAME=NAME` takes them from there unless they are
given, and a string that cannot mean the cell asked for is refused with the
override that fixes it.
"""

import json
import re

from pnas.encoder import RepresentationError, StateSpace
from pnas.settings import SettingsError, format_override

# The settings that give a representation string its meaning.
SPACE_SETTINGS = ("B", "operators", "INPUT_LOOKBACK_DEPTH", "INPUT_LOOKFORWARD_DEPTH")
_ARRAY = re.compile(r"\[\[([^\[\]]*)\]\]")  # one `[[1. 0. 0.]]` of a representation string


def saved_search_settings(path):
    """The settings a search saved at `path` (`ExperimentPaths.settings`), or None where there are none."""
    try:
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
    except (OSError, ValueError):
        return None
    return saved if isinstance(saved, dict) and all(name in saved for name in SPACE_SETTINGS) else None


def _space(s):
    return StateSpace(s["B"], s["operators"], s["INPUT_LOOKBACK_DEPTH"], s["INPUT_LOOKFORWARD_DEPTH"])


def _cell(s, string):
    """The architecture `string` names under the space settings of `s`, or the `RepresentationError`."""
    try:
        space = _space(s)
        return space.parse(space.from_representation_string(string))
    except RepresentationError as exc:
        return exc


def _shape_hint(string):
    """What the string's array sizes require of the space settings, as the overrides to give."""
    groups = _ARRAY.findall(str(string))
    if len(groups) < 2:
        return ""
    inputs, ops = len(groups[0].split()), len(groups[1].split())
    return (f"; its arrays need --B={inputs} (--B={inputs - 1} with --INPUT_LOOKBACK_DEPTH=-1) and {ops} operators "
            f"in the order of the search that logged it: retrain with that search's --EXPERIMENT_NAME "
            f"(its logs/NAME/settings.json), or give --B and --operators")


def logged_cell_settings(settings, overridden, saved, name):
    """The settings of a -ta run, with the space settings of the search `name` that logged the string.

    Args:
        settings: The run's settings (after overrides and validation).
        overridden: The names given on the command line.
        saved: The settings the search `name` saved (`saved_search_settings`), or None.
        name: The experiment's name.

    Returns:
        (settings, the names taken from `saved`).

    Raises:
        SettingsError: the string names no cell of these settings, or, under
            a space setting given on the command line, another cell than the
            one the search `name` logged; the message names the fix.
    """
    string = settings["REPRESENTATION_STRING"]
    settings, adopted = dict(settings), []
    if saved is not None:
        for key in SPACE_SETTINGS:
            if key not in overridden and settings[key] != saved[key]:
                settings[key] = saved[key]
                adopted.append(key)
        logged = _cell(saved, string)
        given = _cell(settings, string)
        if not isinstance(logged, Exception) and given != logged:
            differ = [key for key in SPACE_SETTINGS if settings[key] != saved[key]]
            meaning = (f"does not name a cell ({given})" if isinstance(given, Exception)
                       else f"trains {given}")
            raise SettingsError(
                f"REPRESENTATION_STRING is {logged} in the search {name!r}, but with "
                f"{', '.join(f'{k}={settings[k]!r}' for k in differ)} it {meaning}; to retrain the logged cell "
                f"drop those overrides or write {' '.join(format_override(k, saved[k]) for k in differ)}"
            )
    cell = _cell(settings, string)
    if isinstance(cell, Exception):
        where = (f"it is no cell of the search {name!r} (logs/{name}/settings.json: "
                 + ", ".join(f"{k}={saved[k]!r}" for k in SPACE_SETTINGS) + ")") if saved is not None else (
            f"no search {name!r} saved the settings that give it its meaning")
        raise SettingsError(f"REPRESENTATION_STRING: {cell}; {where}{_shape_hint(string)}")
    return settings, adopted


def adopted_line(settings, adopted, path):
    """The line that tells which space settings a -ta run took from the search's saved settings."""
    return (f"Retraining the cell as logged: {', '.join(f'{k}={settings[k]!r}' for k in adopted)} from {path}"
            if adopted else None)

