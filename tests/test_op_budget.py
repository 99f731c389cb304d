"""MAX_MUL_OPS in a search, and the encoder's Spearman that a search records.

In-process searches on tiny synthetic data: children over the op budget are
recorded and not trained, the next in rank order fill the beam.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import csv  # noqa: E402
import re  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from conftest import (  # noqa: E402
    PLOTS, flow_config, is_png, keras_run_child, read_jsonl as _jsonl, search_with, synthetic_dataset, tiny_config,
)
from pnas import report  # noqa: E402
from pnas.encoder import RidgeSurrogate, StateSpace  # noqa: E402
from pnas.search import Search, SearchAborted, SearchPaths  # noqa: E402

SPACE = StateSpace(2, ["3x3 bconv", "3x3 maxpool"])
_settings = tiny_config
_dataset = synthetic_dataset


def _ranked(paths, b):
    """The children of scores_{b}.csv, best first."""
    with open(os.path.join(paths.scores_dir, f"scores_{b}.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [int(r["rank"]) for r in rows] == list(range(1, len(rows) + 1))
    return [(SPACE.from_representation_string(r["representation_string"]), float(r["predicted_reward"]))
            for r in rows]


def _expected_beam(ranked, mul_ops, budget, k):
    """Walks the ranking as the search should: (beam, skipped before the beam filled)."""
    beam, skipped = [], []
    for child in ranked:
        if len(beam) >= k:
            break
        (beam if mul_ops[child] <= budget else skipped).append(child)
    return beam, skipped


@pytest.fixture(scope="module")
def budget_search(tmp_path_factory):
    """A real tiny search whose MAX_MUL_OPS skips the costliest 1-block child."""
    root = tmp_path_factory.mktemp("budget")
    dataset = _dataset()
    # Ranked by the ridge: its top candidates at b = 2 are the costliest, so the budget skips some.
    probe = Search(_settings(SURROGATE="ridge"), dataset, SearchPaths("probe", root=str(root / "probe")))
    stage1 = SPACE.initial_children()
    costs = sorted(probe.mul_ops(c) for c in stage1)
    budget = (costs[-2] + costs[-1]) // 2  # between the two costliest 1-block children
    settings = _settings(MAX_MUL_OPS=budget, SURROGATE="ridge")
    paths = SearchPaths("tiny", root=str(root / "run"))
    trained = []
    train_child = keras_run_child(settings, dataset, paths)

    def run_child(search, child, sr_no):
        trained.append(tuple(child))
        return train_child(search, child, sr_no)

    search = search_with(run_child, settings, dataset, paths)
    records = search.run()
    return search, paths, budget, trained, records


@pytest.mark.slow  # budget_search trains its children with Keras
def test_op_budget_children_over_it_are_recorded_and_not_trained(budget_search):
    search, paths, budget, trained, records = budget_search
    mul_ops = {c: search.mul_ops(c) for c in SPACE.initial_children()}
    beam1 = SPACE.initial_children()
    over1 = [c for c in beam1 if mul_ops[c] > budget]
    assert over1 == [(0, 0, 0, 0)]  # the two 3x3 convs, 29792 MACs
    ranked2 = [c for c, _ in _ranked(paths, 2)]
    assert sorted(ranked2) == sorted(SPACE.expand([c for c in beam1 if mul_ops[c] <= budget]))
    mul_ops.update({c: search.mul_ops(c) for c in ranked2})
    beam2, over2 = _expected_beam(ranked2, mul_ops, budget, k=2)
    assert over2, "the budget should skip some 2-block candidates too"
    # min(K_, candidates within the budget), the next in rank order replacing the skipped ones.
    assert len(beam2) == min(2, sum(mul_ops[c] <= budget for c in ranked2))

    assert trained == [c for c in beam1 if mul_ops[c] <= budget] + beam2
    assert [tuple(r["child"]) for r in records] == trained
    assert all(r["status"] == "ok" for r in records)
    for r in records:
        assert r["mul_ops"] == mul_ops[tuple(r["child"])] <= budget
    assert search.state.beam(2) == beam2

    lines = _jsonl(paths.records)
    assert lines[: len(records)] == records
    skipped = lines[len(records):]
    assert [(r["stage"], tuple(r["child"])) for r in skipped] == [(1, c) for c in over1] + [(2, c) for c in over2]
    for r in skipped:
        child = tuple(r["child"])
        assert r["status"] == "over_budget"
        assert r["reward"] is None
        assert r["mul_ops"] == mul_ops[child] > budget
        assert r["architecture"] == SPACE.parse(child)
        assert SPACE.from_representation_string(r["representation_string"]) == child
    # The plots and summary read the over-budget records as such.
    assert report.summary_text(lines).startswith(
        f"{len(records)} children: {len(records)} trained, 0 failed; {len(skipped)} candidates over the op budget"
    )


def test_op_budget_the_next_candidates_in_rank_order_fill_the_beam(tmp_path, monkeypatch, capsys):
    """A ranking that puts the costliest candidates first: they are skipped, the next ones trained."""

    def run_child(self, child, sr_no):
        cost = self.mul_ops(child)
        return {"reward": 0.5 - cost / 1e6, "best_epoch": 1, "val_accuracy": [0.5], "test_accuracy": 0.5,
                "mul_ops": cost, "params": 1, "footprint": {"packed_kib": 1.0}, "seconds": 0.0}

    def predict(self, children):
        return np.array([child[1::2].count(0) / 4 for child in children], np.float32)  # more convs, higher

    monkeypatch.setattr(RidgeSurrogate, "predict", predict)
    paths = SearchPaths("tiny", root=str(tmp_path))
    search = search_with(run_child, _settings(MAX_MUL_OPS=40000, SURROGATE="ridge"), _dataset(n_train=32, n_val=16, n_test=16), paths)
    records = search.run()

    ranked = [c for c, _ in _ranked(paths, 2)]
    mul_ops = {c: search.mul_ops(c) for c in ranked}
    within = [c for c in ranked if mul_ops[c] <= 40000]
    assert len(within) > 2  # more candidates than K_: the rank order decides
    assert [mul_ops[c] for c in ranked[:2]] == [59584, 46648]  # all convs, then 3 of 4
    assert [tuple(r["child"]) for r in records if r["stage"] == 2] == within[:2]
    over = [r for r in _jsonl(paths.records) if r["status"] == "over_budget"]
    assert [(r["stage"], tuple(r["child"]), r["mul_ops"]) for r in over] == [
        (2, c, mul_ops[c]) for c in ranked[:2]
    ]
    assert "b = 2: 2 candidates over MAX_MUL_OPS=40000 skipped" in capsys.readouterr().out


@pytest.mark.parametrize("budget, stages", [(5000, [1]), (1000, None)])
def test_op_budget_that_leaves_a_stage_empty(tmp_path, monkeypatch, capsys, budget, stages):
    """No candidate within the budget: the search ends there (or, at b = 1, says why it cannot start)."""

    def run_child(self, child, sr_no):
        return {"reward": 0.5, "best_epoch": 1, "val_accuracy": [0.5], "test_accuracy": 0.5,
                "mul_ops": self.mul_ops(child), "params": 1, "footprint": {"packed_kib": 1.0}, "seconds": 0.0}

    paths = SearchPaths("tiny", root=str(tmp_path))
    search = search_with(run_child, flow_config(B=3, MAX_MUL_OPS=budget),
                         _dataset(n_train=32, n_val=16, n_test=16),
                         paths)
    if stages is None:
        with pytest.raises(SearchAborted, match="MAX_MUL_OPS=1000"):
            search.run()
        assert all(r["status"] == "over_budget" for r in _jsonl(paths.records))
        return
    records = search.run()
    assert [r["stage"] for r in records] == stages
    assert [tuple(r["child"]) for r in records] == [(0, 1, 0, 1)]  # the two max-pools, 3920 MACs
    assert search.state.data.finished
    over = [r for r in _jsonl(paths.records) if r["status"] == "over_budget"]
    assert {r["stage"] for r in over} == {1, 2}
    assert "no candidate within MAX_MUL_OPS=5000" in capsys.readouterr().out


@pytest.mark.slow  # budget_search trains its children with Keras
def test_search_records_the_encoder_spearman_of_stage_2(budget_search):
    search, paths, _, _, records = budget_search
    stage2 = [r for r in records if r["stage"] == 2]
    assert len(stage2) == 2
    assert all("predicted_reward" not in r and "stage_spearman" not in r for r in records if r["stage"] == 1)
    scores = dict(_ranked(paths, 2))
    for r in stage2:
        assert r["predicted_reward"] == pytest.approx(scores[tuple(r["child"])], abs=1e-6)
    expected = report.stage_spearman(records)
    assert set(expected) == {2}
    # A stage fact: in the stage record, not in the children's records.
    assert search.state.stage(2).spearman == expected[2]
    assert search.state.data.spearman == {"2": expected[2]}
    assert all("stage_spearman" not in r for r in records)
    # The same in the records file a program reads back.
    assert [r for r in _jsonl(paths.records) if r["status"] == "ok"] == records
    for name in PLOTS:
        assert is_png(os.path.join(paths.exp_log_dir, name))


def test_max_ops_skips_the_children_above_it_and_records_their_costs(tmp_path, capsys):
    """MAX_OPS budgets OPs (32-bit MACs + binary MACs / 64); a skipped candidate's record carries its costs."""

    def run_child(self, child, sr_no):
        cost = self.cost(child)
        return {"reward": 0.5, "best_epoch": 1, "val_accuracy": [0.5], "test_accuracy": 0.5,
                "mul_ops": cost["mul_ops"], "params": 1, "footprint": cost["footprint"], "seconds": 0.0}

    dataset = _dataset(n_train=32, n_val=16, n_test=16)
    probe = search_with(run_child, flow_config(B=1), dataset, SearchPaths("probe", root=str(tmp_path)))
    costs = {c: probe.cost(c) for c in SPACE.initial_children()}
    for cost in costs.values():
        footprint = cost["footprint"]
        assert footprint["ops"] == round(footprint["float_macs"] + footprint["binary_macs"] / 64)
    budget = sorted(c["footprint"]["ops"] for c in costs.values())[1]
    paths = SearchPaths("tiny", root=str(tmp_path))
    records = search_with(run_child, flow_config(B=1, MAX_OPS=budget), dataset, paths).run()
    assert sorted(tuple(r["child"]) for r in records) == sorted(
        c for c, cost in costs.items() if cost["footprint"]["ops"] <= budget
    )
    over = [r for r in _jsonl(paths.records) if r["status"] == "over_budget"]
    assert [tuple(r["child"]) for r in over] == [c for c, cost in costs.items() if cost["footprint"]["ops"] > budget]
    for r in over:  # a different kind of record: never trained, its costs as a trained child's
        assert r["reward"] is None and "sr_no" not in r
        assert (r["mul_ops"], r["footprint"]) == (costs[tuple(r["child"])]["mul_ops"], costs[tuple(r["child"])]["footprint"])
    out = capsys.readouterr().out
    assert f"b = 1: 1 candidates over MAX_OPS={budget} skipped" in out
    assert re.search(r"reward 0\.5000, test 0\.5000, binary MACs \d+, 32-bit MACs \d+, OPs \d+, ", out)
