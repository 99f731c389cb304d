"""Tests for pnas/search.py and pnas/manager.py in-process: failures, NaN, reproducibility."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import json  # noqa: E402
import pathlib  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import train  # noqa: E402
from pnas.manager import ChildTrainingError, NetworkManager  # noqa: E402
from pnas.model import model_fn  # noqa: E402
import pnas.search  # noqa: E402
from pnas.search import Search, SearchAborted, SearchPaths, estimate_eta  # noqa: E402
from conftest import (  # noqa: E402
    fake_result as _fake_result, flow_config, keras_run_child, search_with, synthetic_dataset,
)


# The LSTM's own search is tested below (slow) and in test_pnas_encoder.py and test_architectures_log.py.
_settings = flow_config


_dataset = synthetic_dataset




def _read_records(paths):
    with open(paths.records) as f:
        return [json.loads(line) for line in f]


def test_a_failing_child_is_recorded_and_the_search_goes_on(tmp_path):
    def run_child(self, child, sr_no):
        if sr_no == 2:
            raise RuntimeError("boom")
        return _fake_result(child)

    paths = SearchPaths("tiny", root=str(tmp_path))
    records = search_with(run_child, _settings(), _dataset(), paths).run()

    assert [r["sr_no"] for r in records] == [1, 2, 3, 4, 5]
    failed = records[1]
    assert failed["status"] == "failed"
    assert failed["reward"] == 0.0
    assert failed["error"] == "RuntimeError: boom"
    assert "boom" in failed["traceback"]
    assert [r["status"] for r in records] == ["ok", "failed", "ok", "ok", "ok"]
    assert _read_records(paths) == records
    text = open(paths.architectures).read()
    assert "---- B= 0 Architectures ---- \n" in text
    assert "\nSr. No: 2\nReward: 0.0\nArchitecture: " in text
    assert text.endswith("\n \n --------------------EXPERIMENT FINISHED------------------- \n \n")


def test_consecutive_failures_abort_the_search(tmp_path):
    def run_child(self, child, sr_no):
        raise RuntimeError(f"broken {sr_no}")

    paths = SearchPaths("tiny", root=str(tmp_path))
    with pytest.raises(SearchAborted, match="2 children failed in a row"):
        search_with(run_child, _settings(MAX_CONSECUTIVE_FAILURES=2), _dataset(), paths).run()
    records = _read_records(paths)
    assert [(r["sr_no"], r["status"], r["error"]) for r in records] == [
        (1, "failed", "RuntimeError: broken 1"),
        (2, "failed", "RuntimeError: broken 2"),
    ]


def test_failures_that_are_not_consecutive_do_not_abort(tmp_path):
    def run_child(self, child, sr_no):
        if sr_no % 2:
            raise RuntimeError("odd")
        return _fake_result(child)

    paths = SearchPaths("tiny", root=str(tmp_path))
    records = search_with(run_child, _settings(MAX_CONSECUTIVE_FAILURES=2), _dataset(), paths).run()
    assert [r["status"] for r in records] == ["failed", "ok", "failed", "ok", "failed"]


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_diverging_child_raises_child_training_error(tmp_path, bad):
    dataset = _dataset(n_train=32, n_val=16, n_test=16)
    dataset[0][:, 10, 10, 0] = bad  # every training image, so the first batch diverges
    manager = NetworkManager(dataset, epochs=2, batchsize=16, weights_dir=str(tmp_path), log_dir=None, verbose=0)
    with pytest.raises(ChildTrainingError, match="diverged"):
        manager.train_child(model_fn, [0, "3x3 bconv", 0, "3x3 sep-bconv"], 1, [4], [10])


def test_a_diverging_child_fails_alone_in_a_search(tmp_path):
    paths = SearchPaths("tiny", root=str(tmp_path))
    config = _settings(B=1)
    poisoned = _dataset()
    poisoned[0] = np.full_like(poisoned[0], np.nan)
    train_poisoned = keras_run_child(config, poisoned, paths)

    def run_child(search, child, sr_no):
        return train_poisoned(search, child, sr_no) if sr_no == 1 else _fake_result(child)

    records = search_with(run_child, config, _dataset(), paths).run()
    assert records[0]["status"] == "failed"
    assert records[0]["error"].startswith("ChildTrainingError")
    assert [r["status"] for r in records[1:]] == ["ok", "ok"]


@pytest.mark.slow  # trains 8 children in worker processes
def test_the_same_seed_gives_the_same_search(tmp_path):
    dataset = _dataset()
    runs = []
    for name in ("first", "second"):
        paths = SearchPaths("tiny", root=str(tmp_path / name))
        records = Search(_settings(K_=1, SURROGATE="lstm"), dataset, paths).run()
        with open(os.path.join(paths.scores_dir, "scores_2.csv")) as f:
            runs.append((records, f.read()))
    (first, scores1), (second, scores2) = runs
    assert len(first) == 4
    assert all(r["status"] == "ok" for r in first + second)
    assert [r["child"] for r in first] == [r["child"] for r in second]
    for a, b in zip(first, second):
        assert a["reward"] == pytest.approx(b["reward"], abs=1e-6)
        assert a["val_accuracy"] == pytest.approx(b["val_accuracy"], abs=1e-6)
        assert a["test_accuracy"] == pytest.approx(b["test_accuracy"], abs=1e-6)
    # The encoder's predictions (6 decimals) and so its ranking are the same too.
    assert scores1 == scores2


@pytest.mark.slow  # two worker processes
def test_children_side_by_side_give_the_search_of_one_by_one(tmp_path, capsys):
    """Two workers, one thread each: the same children, numbers and order as one by one."""
    dataset = _dataset()
    runs = {}
    for parallel in (1, 2):
        paths = SearchPaths("tiny", root=str(tmp_path / str(parallel)))
        settings = _settings(B=1, CHILDREN_PER_PROCESS=3 if parallel > 1 else 0, PARALLEL_CHILDREN=parallel,
                             TEST_CHILDREN=parallel == 1)
        runs[parallel] = (Search(settings, dataset, paths).run(), _read_records(paths))
    (one, _), (two, two_log) = runs[1], runs[2]
    assert len(one) == 3 and all(r["status"] == "ok" for r in one + two)
    assert [(r["sr_no"], r["child"]) for r in two] == [(r["sr_no"], r["child"]) for r in one]
    assert [r["sr_no"] for r in two_log] == [1, 2, 3]
    # Same seeds; only the threads' arithmetic differs (1 vs 2 threads per child).
    for a, b in zip(one, two):
        assert a["reward"] == pytest.approx(b["reward"], abs=0.05)
    assert all(r["test_accuracy"] is not None for r in one)
    assert all(r["test_accuracy"] is None for r in two)
    out = capsys.readouterr().out
    assert "#3 reward" in out and "test -," in out


def test_the_eta_weights_each_stage_by_its_own_cost():
    # Stage 3 of the search: three children left at 180 s each, after 10 children
    # at 8 s (b = 1) and 55 at 17 s (b = 2).
    # (An average over all children, most of them small, said a few minutes.)
    assert estimate_eta({1: 8.0, 2: 17.0, 3: 180.0}, {3: 3}) == 3 * 180.0
    # A stage not measured yet: the nearest measured stage below, scaled by blocks.
    assert estimate_eta({1: 8.0, 2: 17.0}, {2: 5, 3: 128}) == 5 * 17.0 + 128 * 17.0 * 3 / 2
    assert estimate_eta({1: 8.0}, {1: 2, 2: 4, 3: 6}) == 2 * 8.0 + 4 * 16.0 + 6 * 24.0
    assert estimate_eta({}, {1: 3, 2: 2}) is None


def test_the_progress_line_prints_the_stage_weighted_eta(tmp_path, monkeypatch, capsys):
    """A fake clock: a b-block child takes 10 * b seconds; the encoder takes none."""
    clock = [1000.0]

    def run_child(self, child, sr_no):
        clock[0] += 10 * (len(child) // 4)
        return _fake_result(child)

    monkeypatch.setattr(pnas.search, "time", type("Clock", (), {"time": staticmethod(lambda: clock[0])}))
    search_with(run_child, _settings(), _dataset(), SearchPaths("tiny", root=str(tmp_path))).run()
    etas = re.findall(r"\| ETA (\S+) \|", capsys.readouterr().out)
    # b = 1: 3 children of 10 s, then 2 of b = 2 estimated at 2 * 10 s until one is measured (20 s).
    assert etas == [
        "?",
        "0:01:00",  # 2 * 10 + 2 * 20
        "0:00:50",  # 1 * 10 + 2 * 20
        "0:00:40",  # 2 * 20, scaled from b = 1
        "0:00:20",  # 1 * 20, measured at b = 2
    ]


def test_an_unreadable_state_is_rebuilt_from_the_records(tmp_path, caplog):
    """A state file cut short (full disk, partial copy): the JSON lines are the journal."""
    expected = search_with(lambda search, child, sr_no: _fake_result(child), _settings(), _dataset(),
                           SearchPaths("tiny", root=str(tmp_path / "whole"))).run()
    trained, killed = [], []

    def run_child(search, child, sr_no):
        if sr_no == 4 and not killed:
            killed.append(sr_no)
            raise KeyboardInterrupt  # killed before the first 2-block child finished
        trained.append(sr_no)
        return _fake_result(child)

    paths = SearchPaths("tiny", root=str(tmp_path / "cut"))
    with pytest.raises(KeyboardInterrupt):
        search_with(run_child, _settings(), _dataset(), paths).run()
    with open(paths.state, "r+") as f:
        f.truncate(100)
    trained.clear()
    with caplog.at_level("WARNING"):
        records = search_with(run_child, _settings(), _dataset(), paths).run()
    assert trained == [4, 5]  # the 3 recorded children were not trained again
    assert f"search state {paths.state} is unreadable (JSONDecodeError); rebuilt it from the 3 records" in caplog.text
    assert [(r["sr_no"], r["child"], r["reward"]) for r in records] == [
        (r["sr_no"], r["child"], r["reward"]) for r in expected
    ]


def test_an_unreadable_state_without_records_is_one_clear_error(tmp_path):
    from pnas.records import SearchConfigError, SearchState

    state = tmp_path / "search_state.json"
    state.write_text('{"version": 1, "config": {"B": 2}, "chi')
    with pytest.raises(SearchConfigError, match=r"search_state.json is unreadable \(JSONDecodeError\).*OVERWRITE"):
        SearchState.load_or_create(str(state), {"B": 2}, records_path=str(tmp_path / "missing.jsonl"))


# A search (B=3, 2 operators, K_=2) killed during its last child by the code of before the state's
# schema (pnas.records.StateFile): its state file, records, logs, scores and ridge weights.
SAVED_SEARCH = pathlib.Path(__file__).parent / "fixtures" / "search_v1"


def test_a_search_saved_by_earlier_code_resumes_at_its_last_child(tmp_path):
    shutil.copytree(SAVED_SEARCH, tmp_path / "saved")
    saved = _read_records(SearchPaths("fixture", root=str(tmp_path / "saved")))
    trained = []

    def run_child(search, child, sr_no):
        trained.append(sr_no)
        return _fake_result(child)

    settings = _settings(B=3, EXPERIMENT_NAME="fixture")  # the ridge: the default when it was saved
    paths = SearchPaths("fixture", root=str(tmp_path / "saved"))
    search = search_with(run_child, settings, _dataset(), paths, plots=False)
    assert search.state.stage(2).spearman == pytest.approx(1.0)  # read from the saved file's layout
    assert search.state.stage(3).beam == [tuple(c) for c in search.state.data.beams["3"]]
    records = search.run()
    assert trained == [7]  # the 6 recorded children were not trained again
    assert records[:6] == saved
    assert search.state.data.finished
    expected = search_with(lambda search, child, sr_no: _fake_result(child), settings, _dataset(),
                           SearchPaths("fixture", root=str(tmp_path / "whole")), plots=False).run()
    assert [(r["sr_no"], r["child"], r["reward"], r.get("predicted_reward")) for r in records] == [
        (r["sr_no"], r["child"], r["reward"], r.get("predicted_reward")) for r in expected
    ]


class _ShuffledRunner:
    """A runner whose children finish in another order than the beam's: each stage's in reverse.

    It trains nothing (`fake_result`); `stop_after` outcomes in all, it raises
    KeyboardInterrupt, as a kill would stop the search between two outcomes.
    """

    parallel = 2

    def __init__(self, stop_after=None):
        self.stop_after = stop_after
        self.trained = []

    def run(self, jobs, on_start=None):
        from pnas.runners import Outcome

        jobs = list(jobs)
        for job in jobs:
            if on_start:
                on_start(job)
        for job in reversed(jobs):
            if self.stop_after is not None and len(self.trained) == self.stop_after:
                raise KeyboardInterrupt
            self.trained.append(job.sr_no)
            yield Outcome(job, _fake_result(job.child))

    def close(self):
        pass


def _outputs(paths):
    with open(paths.architectures, "rb") as f, open(paths.records, "rb") as g:
        return f.read(), g.read()


def test_children_recorded_as_they_finish_give_the_outputs_of_a_straight_run(tmp_path, capsys):
    settings = _settings(K_=3)
    straight = SearchPaths("tiny", root=str(tmp_path / "straight"))
    search_with(lambda search, child, sr_no: _fake_result(child), settings, _dataset(), straight).run()
    shuffled = SearchPaths("tiny", root=str(tmp_path / "shuffled"))
    runner = _ShuffledRunner()
    records = Search(settings, _dataset(), shuffled, runner=runner).run()
    assert runner.trained == [3, 2, 1, 6, 5, 4]  # they finished in reverse order
    assert [r["sr_no"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert _outputs(shuffled) == _outputs(straight)
    # The reward lines come in the order the children finished, each naming its child.
    out = capsys.readouterr().out
    assert re.findall(r"^  #(\d+) reward", out, flags=re.M) == ["3", "2", "1", "6", "5", "4"]


def test_a_kill_loses_only_the_children_in_training_whatever_order_they_finished(tmp_path):
    settings = _settings(K_=3)
    straight = SearchPaths("tiny", root=str(tmp_path / "straight"))
    search_with(lambda search, child, sr_no: _fake_result(child), settings, _dataset(), straight).run()
    paths = SearchPaths("tiny", root=str(tmp_path / "cut"))
    runner = _ShuffledRunner(stop_after=5)  # stage 1's three, then #6 and #5 of stage 2
    with pytest.raises(KeyboardInterrupt):
        Search(settings, _dataset(), paths, runner=runner).run()
    state = json.loads(pathlib.Path(paths.state).read_text())
    assert [r["sr_no"] for r in state["children"]] == [1, 2, 3, 6, 5]  # stage 2 in the order it finished
    assert [r["sr_no"] for r in _read_records(paths)] == [1, 2, 3, 5, 6]  # the JSON lines: beam order
    text = pathlib.Path(paths.architectures).read_text()
    # The log holds stage 2 up to its first child not recorded (#4): none of it yet.
    assert text.endswith("---- B= 1 Architectures ---- \n")
    assert _outputs(straight)[0].decode().startswith(text)
    rerun = _ShuffledRunner()
    records = Search(settings, _dataset(), paths, runner=rerun).run()
    assert rerun.trained == [4]  # only the child in training when it was killed
    assert [r["sr_no"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert _outputs(paths) == _outputs(straight)
    state = json.loads(pathlib.Path(paths.state).read_text())
    assert [r["sr_no"] for r in state["children"]] == [1, 2, 3, 4, 5, 6]  # a complete stage: beam order


# A search (B=2, 2 operators, K_=3, the ridge) killed while its 5th child trained, saved by the code
# of commit 5d7412b, whose runners returned outcomes in beam order (made by
# tests/fixtures/make_search_5d7412b.py in that commit's tree: `fake_result`, KeyboardInterrupt at #5).
SAVED_5D7412B = pathlib.Path(__file__).parent / "fixtures" / "search_5d7412b"


def test_a_search_saved_before_outcomes_came_as_they_finish_resumes(tmp_path):
    shutil.copytree(SAVED_5D7412B, tmp_path / "saved")
    paths = SearchPaths("fixture", root=str(tmp_path / "saved"))
    saved = _read_records(paths)
    assert [r["sr_no"] for r in saved] == [1, 2, 3, 4]
    settings = _settings(B=2, K_=3, EXPERIMENT_NAME="fixture")
    runner = _ShuffledRunner()
    records = Search(settings, _dataset(), paths, runner=runner, plots=False).run()
    assert runner.trained == [6, 5]  # the two children it had not recorded, and no other
    assert records[:4] == saved
    whole = SearchPaths("fixture", root=str(tmp_path / "whole"))
    search_with(lambda search, child, sr_no: _fake_result(child), settings, _dataset(), whole, plots=False).run()
    assert _outputs(paths) == _outputs(whole)


def test_a_resume_removes_the_temporary_files_of_killed_writes(tmp_path):
    """Kills inside writes leave `<file>.tmp<pid>...` (mnist.files.atomic_path); a resume clears them."""
    paths = SearchPaths("tiny", root=str(tmp_path))
    with pytest.raises(KeyboardInterrupt):
        Search(_settings(), _dataset(), paths, runner=_ShuffledRunner(stop_after=4)).run()
    dead = 2**22 + 12345  # above Linux's default pid_max: no process has it
    leftovers = [
        f"{paths.state}.tmp{dead}", f"{paths.records}.tmp{dead}", f"{paths.architectures}.tmp{dead}",
        f"{paths.scores(2)}.tmp{dead}", f"{paths.weights('child1')}.tmp{dead}.weights.h5",
        os.path.join(paths.exp_log_dir, "encoder", f"after_b1.ridge.json.tmp{dead}"),
    ]
    kept = [
        f"{paths.state}.tmp{os.getppid()}",  # a live writer's (pytest's parent) write in progress
        str(tmp_path / "architectures" / f"other.jsonl.tmp{dead}"),  # another experiment's
    ]
    for path in leftovers + kept:
        pathlib.Path(path).write_text("partial")
    Search(_settings(), _dataset(), paths, runner=_ShuffledRunner()).run()
    assert [p for p in leftovers if os.path.exists(p)] == []
    assert [p for p in kept if os.path.exists(p)] == kept
