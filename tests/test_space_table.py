"""The exhaustive space table: reading it back, and the search simulated on it (no child is trained)."""

import os

import numpy as np
import pytest

from pnas.encoder import Encoder, StateSpace, new_surrogate
from pnas.space_table import (
    COLUMNS,
    SpaceTable,
    TableError,
    all_cells,
    append_row,
    best_found,
    noise_ceiling,
    random_search,
    read_table,
    simulate_search,
)
from conftest import tiny_settings

OPERATORS = ["3x3 bconv", "3x3 maxpool", "linear"]
# Per-operator contribution to a synthetic reward: the best cell uses '3x3 bconv' only.
WEIGHTS = {0: 0.05, 1: 0.02, 2: 0.0}


def _row(space, child, seed, reward):
    return {
        "architecture": space.parse(child),
        "representation_string": space.representation_string(child),
        "b": len(child) // 4,
        "seed": seed,
        "reward": f"{reward:.4f}",
        "test_accuracy": "0.5000",
        "mul_ops": 100 * len(child),
        "seconds": "1.0",
    }


def _synthetic_reward(child):
    """Additive in the operators, higher for more blocks: the best cell is known."""
    ops = child[1::2]
    return 0.7 + 0.01 * (len(child) // 4) + sum(WEIGHTS[o] for o in ops) / len(ops)


def _synthetic_table(path, B=2, seeds=(0, 1), noise=0.0):
    space = StateSpace(B, OPERATORS)
    rng = np.random.default_rng(0)
    for b, cells in all_cells(space).items():
        for child in cells:
            for seed in seeds:
                append_row(path, _row(space, child, seed, _synthetic_reward(child) + rng.normal(0, noise)))
    return space


def test_rows_round_trip_with_types(tmp_path):
    path = tmp_path / "t.csv"
    space = _synthetic_table(path)
    rows = read_table(path)
    cells = all_cells(space)
    assert len(rows) == 2 * sum(len(c) for c in cells.values())
    first = rows[0]
    assert first["architecture"] == space.parse(cells[1][0])
    assert first["b"] == 1 and first["seed"] == 0
    assert first["reward"] == pytest.approx(_synthetic_reward(cells[1][0]), abs=1e-4)
    assert first["test_accuracy"] == 0.5 and first["mul_ops"] == 400
    with open(path) as f:
        assert f.readline().strip() == ",".join(COLUMNS)


def test_a_row_cut_short_is_dropped_and_repaired(tmp_path):
    path = tmp_path / "t.csv"
    space = StateSpace(1, OPERATORS)
    cells = all_cells(space)[1]
    append_row(path, _row(space, cells[0], 0, 0.8))
    append_row(path, _row(space, cells[1], 0, 0.7))
    with open(path, "a") as f:
        f.write('"[0, \'3x3 bconv\', 0, \'lin')  # a run killed mid-write
    assert len(read_table(path)) == 2
    assert not open(path).read().endswith("\n")  # reading alone changes nothing
    assert len(read_table(path, repair=True)) == 2
    assert open(path).read().endswith("\n")
    append_row(path, _row(space, cells[2], 0, 0.6))
    assert [r["reward"] for r in read_table(path)] == [0.8, 0.7, 0.6]


def test_a_file_that_is_not_a_table_is_refused(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(TableError, match="header"):
        read_table(path)
    assert read_table(tmp_path / "missing.csv") == []


def test_mean_reward_ranks_and_ties():
    space = StateSpace(1, OPERATORS)
    a, b, c = all_cells(space)[1][:3]
    rows = [
        {**_typed(space, a, 0, 0.80)}, {**_typed(space, a, 1, 0.70)},  # mean 0.75
        {**_typed(space, b, 0, 0.75)},  # mean 0.75: ties with a
        {**_typed(space, c, 0, 0.90)},
    ]
    table = SpaceTable(rows, space)
    assert table.mean_reward(a) == pytest.approx(0.75)
    assert table.ranks() == {c: 1, a: 2, b: 2}
    assert best_found(table, [a, b]) == a  # by the seed-0 reward the searcher saw
    # Ranked on the seeds every cell has, a's second seed no longer counts.
    assert table.common_seeds() == [0]
    assert table.mean_reward(a, seeds=[0]) == pytest.approx(0.80)
    assert table.ranks(seeds=table.common_seeds()) == {c: 1, a: 2, b: 3}


def _typed(space, child, seed, reward):
    return {"architecture": space.parse(child), "seed": seed, "reward": reward, "mul_ops": 1}


def test_noise_ceiling_is_the_seed_to_seed_spearman(tmp_path):
    path = tmp_path / "t.csv"
    space = _synthetic_table(path, noise=0.0)
    table = SpaceTable.load(path, space)
    rho, n = noise_ceiling(table, 2)
    assert n == len(all_cells(space)[2])
    assert rho == pytest.approx(1.0)
    noisy = SpaceTable.load(_noisy(tmp_path, space), space)
    rho, _ = noise_ceiling(noisy, 2)
    assert -0.5 < rho < 0.5  # pure noise: the two seeds do not agree


def _noisy(tmp_path, space):
    path = tmp_path / "noise.csv"
    rng = np.random.default_rng(1)
    for child in all_cells(space)[2]:
        for seed in (0, 1):
            append_row(path, _row(space, child, seed, rng.uniform(0.7, 0.8)))
    return path


@pytest.mark.slow  # trains the LSTM encoder at every stage
def test_a_perfect_surrogate_makes_the_search_find_the_best_cell(tmp_path, monkeypatch):
    path = tmp_path / "t.csv"
    space = _synthetic_table(path, B=3, seeds=(0,))
    table = SpaceTable.load(path, space)
    best = min(table.ranks().items(), key=lambda item: item[1])[0]
    assert best == (0, 0, 0, 0) * 3
    # The real search loop with the encoder's predictions replaced by the truth.
    monkeypatch.setattr(Encoder, "predict", lambda self, children: np.array([table.reward(c, 0) for c in children]))
    settings = tiny_settings(K_=1, SEED=3, SURROGATE="lstm")
    trained = simulate_search(table, settings, str(tmp_path))
    assert best_found(table, trained) == best
    assert len(trained) == len(all_cells(space)[1]) + 2  # all 1-block cells, then K_ = 1 per stage
    assert os.path.exists(tmp_path / "architectures" / "sim_k1_s3.jsonl")


def test_the_ridge_surrogate_leads_the_search_to_the_best_cell(tmp_path):
    # The synthetic reward is additive in the operators, as the ridge models it:
    # the search must reach the best three-block cell with a beam of 2.
    path = tmp_path / "t.csv"
    space = _synthetic_table(path, B=3, seeds=(0,))
    table = SpaceTable.load(path, space)
    trained = simulate_search(table, tiny_settings(K_=2, SEED=0, SURROGATE="ridge"), str(tmp_path))
    assert best_found(table, trained) == (0, 0, 0, 0) * 3
    assert len(trained) == len(all_cells(space)[1]) + 4
    # The surrogate saved per stage is the ridge's JSON, not Keras weights.
    assert os.path.exists(tmp_path / "logs" / "sim_k2_s0" / "encoder" / "after_b2.ridge.json")


@pytest.mark.slow  # trains the LSTM encoder at every stage
def test_simulated_search_trains_distinct_table_cells_with_the_real_encoder(tmp_path):
    path = tmp_path / "t.csv"
    space = _synthetic_table(path, B=2, seeds=(0,))
    table = SpaceTable.load(path, space)
    trained = simulate_search(table, tiny_settings(K_=4, SEED=0, SURROGATE="lstm"), str(tmp_path))
    assert len(trained) == len(set(trained)) == len(all_cells(space)[1]) + 4
    assert all(c in table for c in trained)
    sample = random_search(table, len(trained), seed=0)
    assert len(set(sample)) == len(trained)
    assert random_search(table, len(trained), seed=0) == sample  # seeded


@pytest.mark.slow  # two searches that train the LSTM encoder
def test_the_search_saves_its_encoder_and_a_new_search_starts_from_it(tmp_path, capsys):
    from pnas.config import SearchConfig
    from pnas.search import Search, SearchPaths
    from pnas.space_table import table_train_fn

    path = tmp_path / "t.csv"
    space = _synthetic_table(path, B=2, seeds=(0,))
    table = SpaceTable.load(path, space)
    settings = tiny_settings(
        B=2, operators=OPERATORS, INPUT_LOOKBACK_DEPTH=0, INPUT_LOOKFORWARD_DEPTH=0, K_=2, SEED=0,
        MAX_MUL_OPS=None, EXPERIMENT_NAME="restore", RESTORE_CONTROLLER=True, SURROGATE="lstm",
    )
    config = SearchConfig.from_settings(settings)
    paths = SearchPaths("restore", root=str(tmp_path))
    Search(config, None, paths, train_fn=table_train_fn(table), plots=False).run()
    assert "Restored the encoder" not in capsys.readouterr().out  # nothing to restore yet

    # The saved encoder has been trained after both stages, on every child.
    n1 = len(all_cells(space)[1])
    saved = new_surrogate(space, **config.encoder.encoder_kwargs())
    saved.load_weights(paths.encoder_weights)
    assert saved.steps == config.encoder.epochs * (n1 + (n1 + 2))
    cells = all_cells(space)[2]

    # A new search of the same name starts from it.
    again = SearchConfig.from_settings(dict(settings, OVERWRITE=True))
    Search(again, None, paths, train_fn=table_train_fn(table), plots=False).run()
    assert f"Restored the encoder from {paths.encoder_weights}" in capsys.readouterr().out
    start = new_surrogate(space, **config.encoder.encoder_kwargs())
    start.load_weights(paths.stage_encoder_weights(0))
    np.testing.assert_allclose(start.predict(cells), saved.predict(cells), rtol=1e-6, atol=1e-7)


@pytest.mark.slow  # a bench script that trains LSTM encoders
def test_surrogate_eval_prints_each_line_once_on_a_two_block_table(tmp_path):
    """bench/surrogate_eval.py on a complete B = 2 table (as the reference table's b <= 2 is)."""
    import re
    import subprocess
    import sys

    import train

    space = StateSpace(2, train.operators)
    path = tmp_path / "t.csv"
    value = {0: 0.01, 1: 0.02, 2: 0.04, 3: 0.0}  # additive: the best cell has four of operator 2
    rng = np.random.default_rng(0)
    for b, cells in all_cells(space).items():
        for child in cells:
            for seed in (0, 1):
                reward = 0.7 + sum(value[op] for op in child[1::2]) + rng.normal(0, 0.001)
                append_row(path, _row(space, child, seed, reward))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run(
        [sys.executable, os.path.join(root, "bench", "surrogate_eval.py"), "--table", str(path), "--quick",
         "--seeds", "2", "--repeats", "3", "--k", "4,8", "--jobs", "1"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if not line.startswith("#")]
    names = [line.split()[0] + " " + line.split()[1] for line in lines]
    assert len(names) == len(set(names)), lines  # each line once
    ceiling = re.search(r"^noise_ceiling b=2 rho=(\S+)", result.stdout, re.M)
    assert float(ceiling.group(1)) > 0.9
    heldout = re.search(r"^heldout_ridge b=1->2 rho=(\S+) sd=(\S+)$", result.stdout, re.M)
    assert float(heldout.group(1)) > 0.9  # the ridge on an additive reward
    for K in (4, 8):
        pattern = rf"^search_ridge K_={K} pnas_best_rank=(\S+) random_best_rank=(\S+) .*repeats=3 "
        line = re.search(pattern, result.stdout, re.M)
        assert float(line.group(1)) == 1.0, line.group(0)  # the ridge's beam reaches the best cell
    assert re.search(r"^oracle K_=4 best_rank=1 ", result.stdout, re.M)
    # --quick leaves out every line of the default surrogate, the LSTM.
    assert not re.search(r"^(heldout|search|search_seed1|heldout_ensemble5) ", result.stdout, re.M)

    noisy = subprocess.run(
        [sys.executable, os.path.join(root, "bench", "surrogate_eval.py"), "--table", str(path), "--quick",
         "--noisy", "--repeats", "3", "--k", "4", "--jobs", "1"],
        capture_output=True, text=True, timeout=600,
    )
    assert noisy.returncode == 0, noisy.stderr[-3000:]
    lines = [line for line in noisy.stdout.splitlines() if not line.startswith("#")]
    pattern = r"noisy K_=4 searcher=(\w+) regret=\d\.\d{4} regret_se=\d\.\d{4} rank=[\d.]+ rank_se=[\d.]+ repeats=3"
    assert [re.fullmatch(pattern, line).group(1) for line in lines] == ["ridge", "random", "oracle", "truth"], lines


def _load_surrogate_eval():
    """bench/surrogate_eval.py as a module (it is a script, not a package module)."""
    import importlib.util

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.util.spec_from_file_location("surrogate_eval", os.path.join(root, "bench", "surrogate_eval.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_noise_draw_is_fixed_by_its_repeat_and_takes_each_cell_from_one_of_its_seeds(tmp_path):
    from pnas.space_table import draw_rewards

    path = tmp_path / "t.csv"
    space = _synthetic_table(path, B=2, noise=0.01)
    table = SpaceTable.load(path, space)
    drawn = draw_rewards(table, 3)
    assert drawn == draw_rewards(table, 3)  # the same repeat, the same table
    assert drawn != draw_rewards(table, 4)
    assert set(drawn) == set(table.children())
    picked = [[s for s in (0, 1) if table.reward(c, s) == r] for c, r in drawn.items()]
    assert all(picked)  # every value is one of the cell's own rewards
    assert {s for p in picked for s in p} == {0, 1}  # and both seeds are drawn from


def test_the_search_and_random_search_pick_by_the_same_draw(tmp_path):
    from pnas.space_table import draw_rewards, table_train_fn
    from pnas.runners import ChildJob

    surrogate_eval = _load_surrogate_eval()
    path = tmp_path / "t.csv"
    space = _synthetic_table(path, B=2, noise=0.01)
    table = SpaceTable.load(path, space)
    drawn = draw_rewards(table, 5)
    # The search's train_fn returns the drawn reward of each child it trains.
    train_fn = table_train_fn(table, rewards=drawn)
    for child in all_cells(space)[2][:5]:
        job = ChildJob(1, 2, child, tuple(space.parse(child)), 0)
        assert train_fn(job)["reward"] == drawn[child]
    n, found = surrogate_eval.noisy_found(table, 2, 5, {"SURROGATE": "ridge"})
    outcomes = surrogate_eval.noisy_outcomes(table, 2, 5, {"ridge": found}, n)
    # Random search's pick in each subset is the best by the same draw, judged by the mean.
    means = {c: table.mean_reward(c) for c in table.children()}
    regrets = [max(means.values()) - means[best_found(table, random_search(table, n, 200 * 5 + i), rewards=drawn)]
               for i in range(surrogate_eval.RANDOM_SUBSETS)]
    assert outcomes["random"][0] == pytest.approx(np.mean(regrets))
    assert outcomes["ridge"][0] == pytest.approx(max(means.values()) - means[found])
    assert found == best_found(table, found_cells := simulate_search(
        table, surrogate_eval.settings(SURROGATE="ridge", K_=2, SEED=5), str(tmp_path / "again"), rewards=drawn),
        rewards=drawn) and n == len(found_cells)


def test_without_seed_noise_the_noisy_search_gives_the_old_figures(tmp_path):
    surrogate_eval = _load_surrogate_eval()
    path = tmp_path / "t.csv"
    space = _synthetic_table(path, B=3, noise=0.0)  # seed 1 repeats seed 0
    table = SpaceTable.load(path, space)
    ranks = table.ranks(seeds=[0])
    for K in (1, 2):
        for repeat in (0, 1):
            n, found = surrogate_eval.noisy_found(table, K, repeat, {"SURROGATE": "ridge"})
            old = simulate_search(table, surrogate_eval.settings(SURROGATE="ridge", K_=K, SEED=repeat),
                                  str(tmp_path / f"old{K}{repeat}"))
            assert found == best_found(table, old) and n == len(old)
            outcomes = surrogate_eval.noisy_outcomes(table, K, repeat, {"ridge": found}, n)
            assert outcomes["ridge"][1] == ranks[found]
            oracle = best_found(table, surrogate_eval.oracle_search(table, K, surrogate_eval.seed_rewards(table, 0)))
            assert outcomes["oracle"][1] == ranks[oracle]
            assert outcomes["truth"] == outcomes["oracle"]  # without noise the drawn rewards are the means
