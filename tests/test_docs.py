"""The README and docs/ name what the code has: dotted names, settings and flags, modules."""

import glob
import importlib
import os
import re

import pytest

import train

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = [os.path.join(REPO_ROOT, "README.md"), *sorted(glob.glob(os.path.join(REPO_ROOT, "docs", "*.md")))]
PACKAGES = ("binarized", "mnist", "pnas")
DOTTED = re.compile(r"(?<![\w./-])((?:binarized|mnist|pnas)(?:\.[A-Za-z_]\w*)+)")
OVERRIDE = re.compile(r"(?<![\w-])--([A-Za-z_][\w-]*)=")
# A command a `--NAME=` may follow on its line: train.py, a bench script, or a module run with -m;
# or another project's tool (Ray's command line), whose flags are its own.
COMMAND = re.compile(r"python (?:-m ([\w.]+)|((?:bench|mnist)/\w+\.py)|train\.py)|(ray start|tensorboard|pip) ")


def _read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def _names(pattern):
    return sorted({(os.path.basename(page), m) for page in PAGES for m in pattern.findall(_read(page))})


def _resolve(dotted):
    """The object a dotted name stands for: the longest importable module, then attributes."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(dotted)


@pytest.mark.parametrize("page, dotted", _names(DOTTED))
def test_every_dotted_name_of_the_packages_resolves(page, dotted):
    dotted = dotted.rstrip(".")
    try:
        _resolve(dotted)
    except (ImportError, AttributeError) as exc:
        pytest.fail(f"{page} names {dotted}, which does not resolve: {exc}")


def _flags(command):
    """The --flags a script's argparse parser declares, read from its source."""
    module, script = command
    path = os.path.join(REPO_ROOT, script) if script else os.path.join(REPO_ROOT, *module.split(".")) + ".py"
    return set(re.findall(r"add_argument\(\s*(?:\"-\w+\",\s*)?\"--([\w-]+)\"", _read(path)))


def _overrides():
    """(page, line number, name, the command it follows or None) of every `--NAME=` in the pages."""
    found = []
    for page in PAGES:
        for number, line in enumerate(_read(page).splitlines(), start=1):
            for match in OVERRIDE.finditer(line):
                commands = [c for c in COMMAND.finditer(line[: match.start()])]
                command = None
                if commands and commands[-1].group(3):
                    continue  # a flag of another project's tool
                if commands and (commands[-1].group(1) or commands[-1].group(2)):
                    command = (commands[-1].group(1), commands[-1].group(2))
                found.append((os.path.basename(page), number, match.group(1), command))
    return found


def test_the_pages_hold_overrides_to_check():
    assert len(_overrides()) > 50


@pytest.mark.parametrize("page, line, name, command", _overrides())
def test_every_override_is_a_setting_of_train_py_or_a_flag_of_its_script(page, line, name, command):
    if command is None:  # train.py, or prose about its settings; --NAME=value is the form itself
        assert name in (*train.SETTINGS, "NAME"), f"{page}:{line}: --{name}= is no setting of train.py"
    else:
        assert name in _flags(command), f"{page}:{line}: --{name}= is no flag of {command[0] or command[1]}"


def test_every_module_is_named_in_the_readme_layout():
    readme = _read(os.path.join(REPO_ROOT, "README.md"))
    layout = readme.split("## Layout", 1)[1].split("```")[1]
    named = set(re.findall(r"^(\S+\.py)\s", layout, re.M))
    modules = {
        f"{package}/{name}" for package in PACKAGES for name in os.listdir(os.path.join(REPO_ROOT, package))
        if name.endswith(".py") and name != "__init__.py"
    }
    assert modules - named == set(), "modules missing from the README's layout"
    assert named - modules - {"train.py"} == set(), "the layout names modules that do not exist"


LIBRARY = os.path.join(REPO_ROOT, "docs", "library.md")
SNIPPETS = re.findall(r"^```python\n(.*?)^```", _read(LIBRARY), flags=re.M | re.S)


def test_library_md_holds_its_python_examples():
    assert len(SNIPPETS) == 3 and all("import_keras_quietly()" in code for code in SNIPPETS)


@pytest.mark.slow  # each imports TensorFlow
@pytest.mark.parametrize("index", range(len(SNIPPETS)))
def test_every_library_example_runs_without_a_tensorflow_line(index, tmp_path):
    import subprocess
    import sys

    # The user's environment as it comes: no TF_CPP_MIN_LOG_LEVEL of their own.
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = REPO_ROOT
    result = subprocess.run([sys.executable, "-c", SNIPPETS[index]], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr == ""
    assert not re.search(r"absl|oneDNN|cuInit|cuda|tensorflow", result.stdout, flags=re.I), result.stdout
