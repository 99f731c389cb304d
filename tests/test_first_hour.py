"""What a new user meets first: one rule for settings, fixes that work, --help, quiet tools, installing."""

import os
import re
import shlex
import subprocess
import sys
import tomllib

import pytest

import train
from pnas.config import TYPES
from pnas.settings import format_override, is_text_setting, parse_value

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 300


def _defaults():
    return {name: getattr(train, name) for name in train.SETTINGS}


def _run(args, **kwargs):
    return subprocess.run(args, cwd=kwargs.pop("cwd", REPO_ROOT), capture_output=True, text=True,
                          timeout=TIMEOUT_S, **kwargs)


# ------------------------------------------------------------- one rule for settings
TEXT_SETTINGS = [n for n in train.SETTINGS if is_text_setting(n, getattr(train, n), TYPES)]


def test_the_text_settings_are_those_that_take_a_str():
    assert set(TEXT_SETTINGS) == {
        "EXPERIMENT_NAME", "SURROGATE", "ENCODER_TARGETS", "ENCODER_READOUT", "RUNNER", "RAY_ADDRESS", "BINARY_H",
        "KERNEL_LR_MULTIPLIER", "LOSS", "REPRESENTATION_STRING",
    }


@pytest.mark.parametrize("args, expected", [
    (["--RUNNER=ray"], {"RUNNER": "ray"}),
    (["--RUNNER='ray'"], {"RUNNER": "ray"}),  # --RUNNER="'ray'" once the shell removed its quotes
    (["--RAY_ADDRESS=auto"], {"RAY_ADDRESS": "auto"}),
    (["--RAY_ADDRESS='auto'"], {"RAY_ADDRESS": "auto"}),
    (["--RAY_ADDRESS=10.0.0.1:6379"], {"RAY_ADDRESS": "10.0.0.1:6379"}),
    (["--RAY_ADDRESS=None"], {"RAY_ADDRESS": None}),
    (["--RAY_ADDRESS=ray://10.0.0.1:10001"], {"RAY_ADDRESS": "ray://10.0.0.1:10001"}),
    (["--EXPERIMENT_NAME=try1"], {"EXPERIMENT_NAME": "try1"}),
    (["--EXPERIMENT_NAME=2024"], {"EXPERIMENT_NAME": "2024"}),  # text, not the int
    (["--SURROGATE=lstm", "--ENCODER_TARGETS=raw"], {"SURROGATE": "lstm", "ENCODER_TARGETS": "raw"}),
    (["--BINARY_H=Glorot", "--KERNEL_LR_MULTIPLIER=2"], {"BINARY_H": "Glorot", "KERNEL_LR_MULTIPLIER": 2}),
    (["--KERNEL_LR_MULTIPLIER=None"], {"KERNEL_LR_MULTIPLIER": None}),
    (["--LOSS=crossentropy"], {"LOSS": "crossentropy"}),
])
def test_a_text_setting_takes_a_bare_word_or_a_quoted_literal(args, expected):
    _, settings, overridden = train.parse_args(args)
    assert {name: settings[name] for name in expected} == expected
    assert set(overridden) == {a[2:].split("=")[0] for a in args}


def test_every_text_setting_takes_a_bare_word_and_every_other_takes_its_default_as_written():
    """format_override writes each default as the rule reads it back, bare words for text."""
    defaults = _defaults()
    for name, default in defaults.items():
        arg = format_override(name, default)
        value = parse_value(name, shlex.split(arg)[0].split("=", 1)[1], default, TYPES)
        assert value == default, arg
        if isinstance(default, str) and re.fullmatch(r"\w+", default):
            assert arg == f"--{name}={default}"


def test_a_value_of_another_setting_is_still_a_python_literal():
    with pytest.raises(Exception, match="not a Python literal; write e.g. --B=3"):
        parse_value("B", "three", 3, TYPES)


# Bad settings, and the part of the error line expected; the fix it suggests is checked below.
BAD = [
    ["--B=0"], ["--K_=0"], ["--B=two"], ["--B=2.5"], ["--operators=3"], ["--operators=['3x3 conv']"],
    ["--operators=[]"], ["--operators=['3x3 bconv', '3x3 bconv']"], ["--NUM_CELL_FILTERS=[4, 8]"],
    ["--NUM_CELL_FILTERS=[4, 0, 8]"], ["--DENSE_LAYERS=[10, 12]"], ["--DENSE_LAYERS=[]"],
    ["--PARALLEL_CHILDREN=2", "--CHILDREN_PER_PROCESS=0"], ["--PARALLEL_CHILDREN=0"], ["--CHILDREN_PER_PROCESS=-1"],
    ["--SURROGATE=mlp"], ["--ENCODER_TARGETS=zscore"], ["--ENCODER_ENSEMBLE=5", "--SURROGATE=ridge"], ["--RUNNER=spark"],
    ["--RUNNER=inline", "--PARALLEL_CHILDREN=2"], ["--RAY_ADDRESS=6379"], ["--RAY_ADDRESS="],
    ["--RAY_CPUS_PER_CHILD=0"], ["--RAY_GPUS_PER_CHILD=-1"], ["--RAY_MAX_RETRIES=-1"], ["--ENCODER_BATCHSIZE=0"],
    ["--ENCODER_LR=0"], ["--MAX_MUL_OPS=0"], ["--INPUT_LOOKBACK_DEPTH=2"], ["--INPUT_LOOKFORWARD_DEPTH=-1"],
    ["--DROPOUT=(True, 0.2, 1.5)"], ["--TRAIN_SIZE=0"], ["--BINARY_H=-1"], ["--KERNEL_LR_MULTIPLIER=huge"],
    ["--LR_END=0.1"], ["--LR_START=0"], ["--LOSS=hinge"], ["--EXPERIMENT_NAME=a/b"], ["B=2"],
    ["--B=1", "--B=2"], ["--VERBOSE=3"], ["--TRAIN_SIZE=1e3"], ["--DROP_HIDDEN=1"], ["--REGULARIZATION=-1"],
]
SUGGESTION = re.compile(r"--[A-Za-z_]+=(?:\"[^\"]*\"|\S+)")


def _error(args, capsys):
    with pytest.raises(SystemExit) as info:
        train.parse_args(args)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    return err[0]


@pytest.mark.parametrize("args", BAD, ids=[" ".join(a) for a in BAD])
def test_every_fix_an_error_suggests_is_accepted_when_pasted_back(args, capsys):
    message = _error(args, capsys)
    # An error line is "problem; fix": the suggestions come after the first "; ".
    fixes = [shlex.split(s.rstrip(",;"))[0] for s in SUGGESTION.findall(message.partition("; ")[2])]
    assert fixes, f"the error suggests no --NAME=value fix: {message}"
    for fix in fixes:
        # As the user would: the malformed argument, and the one the fix replaces, dropped; the fix added.
        name = fix.split("=", 1)[0]
        kept = [a for a in args if a.startswith("--") and "=" in a and a.split("=", 1)[0] != name]
        train.parse_args(kept + [fix])  # exits 2 if the fix does not work
        assert capsys.readouterr().err == "", f"{fix} (suggested by: {message})"


# ----------------------------------------------------------------------------- help
HELP_CHECK = """
import sys, train
try:
    train.main(sys.argv[1:])
except SystemExit as exc:
    print("exit", exc.code, "keras" in sys.modules, "tensorflow" in sys.modules)
"""


def test_train_help_lists_every_setting_with_its_default_and_comment_without_importing_tensorflow():
    result = _run([sys.executable, "-c", HELP_CHECK, "--help"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.rstrip().endswith("exit 0 False False")
    text = result.stdout
    source = open(os.path.join(REPO_ROOT, "train.py")).read()
    for name in train.SETTINGS:
        assert f"  {format_override(name, getattr(train, name))}\n" in text, name
    # The comments of train.py, continuation lines included, under their sections in file order.
    assert "      Maximum number of blocks in the cell\n" in text
    assert "      15 steps per stage, which ranked no better than chance: docs/surrogate.md)\n" in text
    sections = re.findall(r"^# -+ *([^\n-][^\n]*?) *-+$", source, re.M)
    positions = [text.index(f"\n{title}:\n") for title in sections]
    assert positions == sorted(positions) and len(sections) == 5
    assert "--RUNNER=ray" in text and "--EXPERIMENT_NAME=try1" in text  # the rule, stated once


def test_a_bad_setting_is_refused_before_tensorflow_is_imported():
    result = _run([sys.executable, "-c", HELP_CHECK, "--K_=0"])
    assert result.stderr == "error: K_ must be >= 1, received K_=0; write e.g. --K_=1\n"
    assert result.stdout.rstrip().endswith("exit 2 False False")


def test_the_settings_checks_import_no_keras():
    code = "import sys, pnas.settings, pnas.config; print(sorted(m for m in sys.modules if m.split('.')[0] in ('keras', 'tensorflow')))"
    assert _run([sys.executable, "-c", code]).stdout == "[]\n"
    from pnas import config, model

    assert model.OPERATORS is config.OPERATORS


@pytest.mark.parametrize("module", ["binarized.export", "pnas.report", "mnist.download_mnist"])
def test_every_python_m_entry_point_has_a_help(module):
    result = _run([sys.executable, "-m", module, "--help"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: python -m {module} ") and result.stderr == ""


def test_the_entry_points_are_all_checked():
    """Every module of the packages that runs as a script is in the list above."""
    mains = []
    for package in ("binarized", "mnist", "pnas"):
        for name in sorted(os.listdir(os.path.join(REPO_ROOT, package))):
            if name.endswith(".py") and 'if __name__ == "__main__":\n    sys.exit(main())' in open(
                    os.path.join(REPO_ROOT, package, name)).read():
                mains.append(f"{package}.{name[:-3]}")
    assert mains == ["binarized.export", "mnist.download_mnist", "pnas.report"]


BENCH = sorted(n for n in os.listdir(os.path.join(REPO_ROOT, "bench")) if n.endswith(".py"))


@pytest.mark.slow
@pytest.mark.parametrize("script", BENCH)
def test_every_bench_script_has_a_quiet_help(script):
    result = _run([sys.executable, os.path.join("bench", script), "--help"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: ")
    assert result.stderr == ""  # no TensorFlow start-up lines


def test_child_quality_takes_train_py_setting_names():
    sys.path.insert(0, os.path.join(REPO_ROOT, "bench"))
    try:
        import child_quality
    finally:
        sys.path.remove(os.path.join(REPO_ROOT, "bench"))
    keys = set(child_quality.child_settings({}))
    assert keys - set(train.SETTINGS) == {"BN_MOMENTUM", "FLOAT_TWIN"}  # the two the bench alone varies
    assert child_quality.child_settings({"BINARY_H": 1.0})["BINARY_H"] == 1.0
    with pytest.raises(SystemExit, match="H is now BINARY_H"):
        child_quality.child_settings({"H": 1.0})


# ------------------------------------------------------------------------ installing
def test_the_wheel_depends_on_the_runtime_pins_of_requirements_and_packages_every_package():
    with open(os.path.join(REPO_ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)
    with open(os.path.join(REPO_ROOT, "requirements.txt")) as f:
        pins = [line.strip() for line in f if line.strip()]
    # The wheel's dependencies are what its packages import at run time; Ray is the extra of RUNNER='ray'
    # (pip install .[ray]); pytest runs the tests only. requirements.txt (the README's install) has all.
    runtime = project["project"]["dependencies"]
    assert project["project"]["optional-dependencies"] == {"ray": ["ray==2.60.0"]}
    assert sorted(runtime + ["ray==2.60.0", "pytest==9.0.3"]) == sorted(pins)
    assert not any(p.startswith(("pytest", "ray")) for p in runtime)
    packages = sorted(n for n in os.listdir(REPO_ROOT) if os.path.exists(os.path.join(REPO_ROOT, n, "__init__.py"))
                      and n != "tests")
    assert project["tool"]["setuptools"]["packages"] == packages == ["binarized", "mnist", "pnas"]
    # requirements.txt: exact pins, one a line, as pip and setuptools both read them.
    with open(os.path.join(REPO_ROOT, "requirements.txt")) as f:
        lines = [line.strip() for line in f if line.strip()]
    assert all(re.fullmatch(r"[A-Za-z0-9_.\-]+==[0-9][A-Za-z0-9.]*", line) for line in lines)



# ------------------------------------------------------------------------ quiet tools
@pytest.mark.slow
def test_the_export_prints_its_one_line_and_no_tensorflow_line(tmp_path):
    model_path = tmp_path / "child.keras"
    build = (
        "import sys; from binarized.quiet import import_keras_quietly; import_keras_quietly()\n"
        "from pnas.model import model_fn\n"
        "model, _ = model_fn([0, '3x3 bconv', 0, '3x3 maxpool'], num_cells=1, num_cell_filters=[4], dense_layers=[10])\n"
        "model.save(sys.argv[1])\n"
    )
    made = _run([sys.executable, "-c", build, str(model_path)], env=dict(os.environ, PYTHONPATH=REPO_ROOT))
    assert made.returncode == 0, made.stderr
    # The user's environment as it comes: no TF_CPP_MIN_LOG_LEVEL of their own.
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    result = _run([sys.executable, "-m", "binarized.export", str(model_path), str(tmp_path / "child.npz")], env=env)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert re.fullmatch(r"wrote \S+child\.npz: \d+ bytes, \d+ bytes of float32 weights \([\d.]+x smaller\)\n",
                        result.stdout)
