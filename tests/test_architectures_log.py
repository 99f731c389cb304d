"""The architectures log, byte for byte against the original train.py's string expressions.

The expected text is written here the way the original research code
(yashkant/PNAS-Binarized-Neural-Networks, train.py and pnas/encoder.py) wrote
it, with its expressions copied verbatim, from the JSON-lines records of a
small in-process search. The package's own formatter is not used to build it.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import json  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from pnas.records import SearchState, write_logs  # noqa: E402
from pnas.search import Search, SearchPaths  # noqa: E402
from conftest import flow_config, search_with, synthetic_dataset, tiny_config, tiny_settings  # noqa: E402


# ------------------------------------------------ the original's code, verbatim
def _embedding_encode(size, value_idx):
    # pnas/encoder.py StateSpace.embedding_encode (input values 0..B-1 map to index = value)
    one_hot = np.zeros((1, size), dtype=np.float32)
    one_hot[np.arange(1), value_idx] = value_idx + 1
    return one_hot


def _parse_state_space_list(state_list, values):
    # pnas/encoder.py StateSpace.parse_state_space_list
    state_values = []
    for id, state_one_hot in enumerate(state_list):
        state_val_idx = np.argmax(state_one_hot, axis=-1)[0]
        value = values[id % 2][state_val_idx]
        state_values.append(value)
    return state_values


def get_architecure_from_action(action):
    # train.py
    arc = ""
    for i in range(len(action)):
        arc += np.array_str(action[i]) + " "
    return '"' + arc[:-1] + '"'


def _original_log(stages, B, operators):
    """What train.py appended to architectures/{EXPERIMENT_NAME}.txt.

    Args:
        stages: per trial, the `(child, reward)` pairs in the order they were logged.
    """
    values = [list(range(0, B)), operators]  # StateSpace(B, input_lookback_depth=0, ...)
    out = []
    log_architecture = out.append
    log_architecture('All the evaluated architectures will be logged in this file. \n \n \n')
    for trial in range(len(stages)):
        log_architecture('---- B= ' + str(trial) + " Architectures ---- \n" )
        actions = [[_embedding_encode(len(values[i % 2]), v) for i, v in enumerate(c)] for c, _ in stages[trial]]
        for t, action in enumerate(actions):
            reward = stages[trial][t][1]
            log_str = "\nSr. No: " + str(t+1)+ "\nReward: " + str(reward) + "\nArchitecture: " + str(_parse_state_space_list(action, values)) + "\nRepresentation String: " + get_architecure_from_action(action) + "\n"  # noqa: E501
            log_architecture(log_str)
        log_architecture("\n \n --------------------EXPERIMENT FINISHED------------------- \n \n")
    return "".join(out)


# ---------------------------------------------------------------- the search
def _reward(child):
    # Many digits, so that str(float) is tested rather than a rounded format.
    return 1 / 3 + sum(child) / 7


def _fake_run(fail, stop=None):
    def run_child(self, child, sr_no):
        if sr_no == stop:
            raise KeyboardInterrupt
        if sr_no == fail:
            raise RuntimeError("boom")
        return {"reward": _reward(child), "best_epoch": 1, "val_accuracy": [0.5], "test_accuracy": 0.5,
                "mul_ops": self.mul_ops(child), "params": 1, "footprint": {"packed_kib": 1.0}, "seconds": 0.0}
    return run_child


@pytest.fixture(scope="module")
def budget(tmp_path_factory):
    """Between the two costliest 1-block children's multiply-accumulates: the costliest is over it."""
    root = str(tmp_path_factory.mktemp("probe"))
    probe = Search(tiny_config(RUNNER="inline"), synthetic_dataset(), SearchPaths("probe", root=root))
    costs = sorted(probe.mul_ops(c) for c in probe.state_space.initial_children())
    return (costs[-2] + costs[-1]) // 2


def _settings(budget, surrogate=None):
    # The log does not depend on what ranks (`flow_config`); the LSTM's resume is the one slow test below.
    named = {} if surrogate is None else {"SURROGATE": surrogate}
    return flow_config(RUNNER="inline", MAX_MUL_OPS=budget, MAX_CONSECUTIVE_FAILURES=5, **named)


def _search(root, budget, monkeypatch, fail=2, stop=None, surrogate=None):
    paths = SearchPaths("tiny", root=str(root))
    return search_with(_fake_run(fail, stop), _settings(budget, surrogate), synthetic_dataset(), paths), paths


def _stages(paths, B):
    """Per stage, `(child, reward)` as logged: trained and failed children, then the over-budget ones."""
    with open(paths.records) as f:
        records = [json.loads(line) for line in f]
    stages = []
    for b in range(1, B + 1):
        ran = [(tuple(r["child"]), r["reward"]) for r in records if r["stage"] == b and r["status"] != "over_budget"]
        over = [(tuple(r["child"]), 0.0) for r in records if r["stage"] == b and r["status"] == "over_budget"]
        stages.append(ran + over)
    return stages


@pytest.fixture(scope="module")
def finished(budget, tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        search, paths = _search(tmp_path_factory.mktemp("finished"), budget, mp)
        search.run()
    with open(paths.architectures, "rb") as f:
        return paths, f.read()


def test_the_log_is_the_originals_byte_for_byte(finished):
    paths, text = finished
    settings = tiny_settings()
    stages = _stages(paths, settings["B"])
    # The recorded search has each case: a trained child, a failed one, one over the budget.
    assert stages[0][1][1] == 0.0  # Sr. No 2 of stage 0 failed
    assert stages[0][-1] == ((0, 0, 0, 0), 0.0) and len(stages[0]) == 3  # 2 trained or failed + 1 over budget
    assert len(stages[1]) >= 2
    expected = _original_log(stages, settings["B"], settings["operators"])
    assert text == expected.encode()
    # Spot checks of the layout itself, so that a wrong helper above cannot hide a wrong file.
    assert text.startswith(
        b"All the evaluated architectures will be logged in this file. \n \n \n---- B= 0 Architectures ---- \n"
        b"\nSr. No: 1\nReward: " + str(_reward((0, 0, 0, 1))).encode()
        + b"\nArchitecture: [0, '3x3 bconv', 0, '3x3 maxpool']"
        b'\nRepresentation String: "[[1. 0.]] [[1. 0.]] [[1. 0.]] [[0. 2.]]"\n'
        b"\nSr. No: 2\nReward: 0.0\n"
    )
    assert text.count(b"---- B= 1 Architectures ---- \n\nSr. No: 1\n") == 1
    assert text.count(b"\n \n --------------------EXPERIMENT FINISHED------------------- \n \n") == 2
    assert text.endswith(b"\n \n --------------------EXPERIMENT FINISHED------------------- \n \n")


def test_regenerating_from_the_state_gives_the_same_bytes(finished, budget, tmp_path):
    paths, text = finished
    state = SearchState.load_or_create(paths.state, _settings(budget).identity_dict())
    search = Search(_settings(budget), synthetic_dataset(), SearchPaths("tiny", root=str(tmp_path)))
    copy = SearchPaths("tiny", root=str(tmp_path))
    state.path = copy.state
    write_logs(state, search.state_space, copy)
    with open(copy.architectures, "rb") as f:
        assert f.read() == text


def _interrupted_then_resumed(text, budget, root, monkeypatch, surrogate=None):
    search, paths = _search(root, budget, monkeypatch, stop=3, surrogate=surrogate)  # killed before a 2-block child
    with pytest.raises(KeyboardInterrupt):
        search.run()
    with open(paths.architectures, "rb") as f:
        partial = f.read()
    assert text.startswith(partial)
    assert partial.endswith(b"\n \n --------------------EXPERIMENT FINISHED------------------- \n \n"
                            b"---- B= 1 Architectures ---- \n")
    search, paths = _search(root, budget, monkeypatch, surrogate=surrogate)
    search.run()
    with open(paths.architectures, "rb") as f:
        assert f.read() == text


def test_an_interrupted_search_logs_a_prefix_and_resumes_to_the_same_bytes(finished, budget, tmp_path, monkeypatch):
    _interrupted_then_resumed(finished[1], budget, tmp_path, monkeypatch)


@pytest.mark.slow  # three searches, each with its LSTM traced afresh
def test_an_interrupted_lstm_search_resumes_to_the_same_bytes(budget, tmp_path, monkeypatch):
    """The LSTM's stage weights, restored on resume, rank the next stage as in an unbroken run."""
    search, paths = _search(tmp_path / "whole", budget, monkeypatch, surrogate="lstm")
    search.run()
    with open(paths.architectures, "rb") as f:
        text = f.read()
    _interrupted_then_resumed(text, budget, tmp_path / "cut", monkeypatch, surrogate="lstm")


@pytest.mark.parametrize("surrogate", ["lstm", "ridge"])
def test_the_summary_names_the_surrogate_that_ranked(surrogate):
    from pnas import report

    def record(stage, sr_no, reward):
        return {"stage": stage, "sr_no": sr_no, "status": "ok", "reward": reward, "test_accuracy": None,
                "mul_ops": 10, "architecture": [0, "3x3 bconv", 0, "3x3 bconv"] * stage,
                "representation_string": "r", "predicted_reward": 0.5 if stage > 1 else None, "footprint": {}}

    records = [record(1, 1, 0.7), record(1, 2, 0.6), record(2, 3, 0.8), record(2, 4, 0.75)]
    text = report.summary_text(records, surrogate=surrogate)
    assert f"Candidates ranked by {report.SURROGATE_NAMES[surrogate]}" in text
    assert f"(SURROGATE='{surrogate}')" in text
    assert "ranked by" not in report.summary_text(records[:2], surrogate=surrogate)  # stage 1 is not ranked
    assert "ranked by" not in report.summary_text(records)  # settings unknown
