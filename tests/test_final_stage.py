"""The final stage: the search's FINAL_TOP best cells retrained longer, and the best of those picked.

Its trainings are children like any other (seeded, recorded as they finish,
resumed); its records live beside the search's (`NAME.final.jsonl`), so the
original's architectures log and the records are the bytes of a search
without one.
"""

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest  # noqa: E402

from conftest import fake_result, flow_config, synthetic_dataset  # noqa: E402
from pnas import report  # noqa: E402
from pnas.records import SearchConfigError  # noqa: E402
from pnas.search import Search, SearchPaths  # noqa: E402

B = 2


def _config(**overrides):
    return flow_config(RUNNER="inline", B=B, K_=3, **overrides)


class Trainer:
    """`train_fn(job)`: search children get `fake_result`; a final-stage training's reward rises with its number.

    So the final stage's pick (its last cell: the lowest search reward of the
    retrained ones) differs from the search's best. `stop_at` interrupts the
    training of that child number, as a kill would.
    """

    def __init__(self, stop_at=None):
        self.jobs = []
        self.stop_at = stop_at

    def __call__(self, job):
        if job.sr_no == self.stop_at:
            raise KeyboardInterrupt
        self.jobs.append(job)
        result = fake_result(job.child)
        if job.stage == B + 1:
            result = dict(result, reward=0.5 + job.sr_no / 1000, val_accuracy=[0.5 + job.sr_no / 1000])
        return result


def _search(root, trainer, **overrides):
    paths = SearchPaths("final", root=str(root))
    return Search(_config(**overrides), synthetic_dataset(), paths, train_fn=trainer, plots=False), paths


def _searched(root):
    """How many children the search trains before its final stage."""
    search, _ = _search(root, Trainer(), FINAL_TOP=0)
    return len(search.run())


def _read(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_the_best_cells_are_retrained_with_seeds_of_their_own_and_the_best_of_those_is_picked(tmp_path, capsys):
    trainer = Trainer()
    search, paths = _search(tmp_path, trainer, FINAL_TOP=2)
    records = search.run()
    out = capsys.readouterr().out

    searched = [r for r in records if r["status"] == "ok"]
    best_two = sorted(searched, key=lambda r: (-r["reward"], r["sr_no"]))[:2]
    final = _read(paths.final_records)
    assert [r["child"] for r in final] == [r["child"] for r in best_two]
    assert [r["retrains"] for r in final] == [r["sr_no"] for r in best_two]
    assert [r["proxy_reward"] for r in final] == [r["reward"] for r in best_two]
    assert [r["sr_no"] for r in final] == [len(records) + 1, len(records) + 2]
    assert all(r["stage"] == "final" and r["status"] == "ok" for r in final)
    # Trained after every search child, each with a seed of its own.
    assert [job.sr_no for job in trainer.jobs[-2:]] == [len(records) + 1, len(records) + 2]
    seed = {job.sr_no: job.seed for job in trainer.jobs}
    assert len({seed[r["sr_no"]] for r in final + best_two}) == 4

    pick = final[1]  # the higher final reward, though the lower search reward
    assert report.final_pick(final)["sr_no"] == pick["sr_no"]
    assert f"Final pick: #{pick['sr_no']} {pick['architecture']}" in out
    text = report.report("final", root=str(tmp_path))
    assert "Final stage: the 2 best cells retrained" in text
    command = text.split("Retrain the final pick:\n")[1].splitlines()[0]
    assert command.endswith(f'--REPRESENTATION_STRING="{pick["representation_string"]}"')
    assert json.load(open(paths.state))["final"]["settings"] == {
        "FINAL_TOP": 2, "FINAL_EPOCHS": None, "FINAL_TRAIN_SIZE": None}


def test_the_original_log_and_the_records_are_those_of_a_search_without_a_final_stage(tmp_path):
    with_final, paths_final = _search(tmp_path / "a", Trainer(), FINAL_TOP=2)
    with_final.run()
    without, paths = _search(tmp_path / "b", Trainer(), FINAL_TOP=0)
    without.run()
    for name in ("architectures", "records"):
        with open(getattr(paths_final, name), "rb") as a, open(getattr(paths, name), "rb") as b:
            assert a.read() == b.read(), name
    # FINAL_TOP = 0 writes what a search wrote before the final stage existed.
    assert not os.path.exists(paths.final_records)
    state = json.load(open(paths.state))
    assert "final" not in state and state["finished"] is True
    assert "Retrain the best:" in report.report("final", root=str(tmp_path / "b"))


def test_a_final_stage_killed_midway_resumes_with_the_trainings_not_recorded(tmp_path, capsys):
    searched = _searched(tmp_path / "probe")
    search, paths = _search(tmp_path, Trainer(stop_at=searched + 2), FINAL_TOP=3)
    with pytest.raises(KeyboardInterrupt):
        search.run()
    assert [r["sr_no"] for r in _read(paths.final_records)] == [searched + 1]
    assert json.load(open(paths.state))["finished"] is False
    capsys.readouterr()

    trainer = Trainer()
    resumed, _ = _search(tmp_path, trainer, FINAL_TOP=3)
    resumed.run()
    out = capsys.readouterr().out
    assert [job.sr_no for job in trainer.jobs] == [searched + 2, searched + 3]
    assert "Encoder trained" not in out  # the final stage had begun: the encoder is not trained again
    assert [r["sr_no"] for r in _read(paths.final_records)] == [searched + i for i in (1, 2, 3)]
    assert json.load(open(paths.state))["finished"] is True


def test_a_final_stage_resumed_with_other_settings_is_refused_with_the_fix(tmp_path):
    searched = _searched(tmp_path / "probe")
    search, paths = _search(tmp_path, Trainer(stop_at=searched + 2), FINAL_TOP=2)
    with pytest.raises(KeyboardInterrupt):
        search.run()
    other, _ = _search(tmp_path, Trainer(), FINAL_TOP=2, FINAL_EPOCHS=3)
    with pytest.raises(SearchConfigError, match="resume it with --FINAL_TOP=2 --FINAL_EPOCHS=None --FINAL_TRAIN_SIZE=None"):
        other.run()
