"""Does the surrogate rank unseen cells, and does the search beat random? From the table alone.

Reads the exhaustive table of `bench/space_table.py` (no training) and prints,
one line each, in a form meant to be parsed:

    against b=1 rho=0.xx (with --against OTHER_CSV)
                                             seed-0 rewards of the two tables, per stage
    noise_ceiling b=2 rho=0.xx               seed 0 against seed 1 within a stage:
    noise_ceiling b=3 rho=0.xx               no predictor can be expected to beat it
    heldout b=1->2 rho=0.xx sd=0.xx          the search's surrogate (train.py's settings,
    heldout b=2->3 rho=0.xx sd=0.xx          SURROGATE included), trained stage by stage on
                                             the cells of <= b blocks (seed 0), predicting
                                             every cell of b + 1 blocks, against the table's
                                             mean reward; mean and sd over seeds
    heldout_unaugmented b=...                the same, the LSTM with ENCODER_AUGMENT = False
    heldout_ensemble5 b=...                  the same, the LSTM with ENCODER_ENSEMBLE = 5
    heldout_ridge b=... / heldout_gbr b=...  scikit-learn baselines on operand counts
    search K_=k pnas_best_rank=x.x random_best_rank=y.y pnas_best_reward=0.xxxx
        random_best_reward=0.xxxx repeats=n pnas_rank_se=x.x random_rank_se=y.y
    search_ridge K_=k ...                    the same search with SURROGATE = 'ridge'
    search_seed1 K_=k ...                    the default search on the seed-1 rewards
                                             (once every cell has them)
    oracle K_=k best_rank=x best_reward=0.xxxx cells=n
                                             the beam ranked by the rewards themselves:
                                             the bound of any surrogate

With --noisy it prints only the search under training noise, one line per
searcher and K_:

    noisy K_=8 searcher=lstm regret=0.0031 regret_se=0.0004 rank=5.2 rank_se=0.8 repeats=40

Repeat r draws every cell's reward from one of its seeds at random
(`pnas.space_table.draw_rewards`, seeded by r), as one real search meets one
training of each child. The surrogates' searches (lstm, ridge; surrogate
seeded by r), random search and the oracle all see that draw and pick the cell
with the highest drawn reward among the cells they trained. The pick is
judged by its mean reward over all its seeds: regret is the best mean of all
cells minus the pick's mean, rank its place among all cells by mean (1 =
best); mean and standard error over the repeats. Random search's figure in a
repeat is its mean over 200 random subsets of as many cells as PNAS trains,
its expected pick under that draw. The oracle ranks the beam by the drawn
rewards; `truth` ranks it by each cell's mean over its seeds, as a surrogate
that predicted that mean exactly would, and still picks by the drawn reward.
Neither is a bound: a searcher that leaves out a cell whose lucky training
would win the pick can do better.

The search line runs the real search loop (`pnas.search.Search`: surrogate,
beam, dedup) with each child's reward looked up in the table (seed 0), and a
random search that trains as many distinct cells, drawn uniformly from the
table. The best-found cell is the one with the highest seed-0 reward among
those trained; its rank is among all cells by mean reward (1 = best), over
the seeds every cell has, averaged over repeats with different seeds, with
the standard error.

    python bench/surrogate_eval.py [--table bench/results/space_proxy.csv] [--repeats 20]
    python bench/surrogate_eval.py --quick         # without the lines that train an LSTM: about a minute
    python bench/surrogate_eval.py --table bench/results/space_reference.csv --against bench/results/space_proxy.csv
    python bench/surrogate_eval.py --ablation      # held-out rho of each surrogate recipe
    python bench/surrogate_eval.py --noisy --k 8,16          # the search under training noise
    python bench/surrogate_eval.py --noisy --ablation --k 8  # each recipe's noisy line
"""

import argparse
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

DEFAULT_TABLE = os.path.join(ROOT, "bench", "results", "space_proxy.csv")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", default=DEFAULT_TABLE, help="a CSV written by bench/space_table.py")
    parser.add_argument("--seeds", type=int, default=5, help="surrogate seeds of the held-out measure")
    parser.add_argument("--repeats", type=int, default=None, help="repeats of each search (default: 20; 40 with --noisy)")
    parser.add_argument("--k", default="4,8,16,32", help="comma-separated beam sizes K_ of the search lines")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="processes training encoders")
    parser.add_argument("--ablation", action="store_true", help="held-out rho of each surrogate recipe instead")
    parser.add_argument("--against", default=None,
                        help="another table (e.g. the proxy's): print how its seed-0 rewards rank alike, per stage")
    parser.add_argument("--quick", action="store_true",
                        help="leave out every line that trains an LSTM encoder: about a minute")
    parser.add_argument("--recipes", default=None,
                        help="with --ablation: comma-separated numbers (from 1) of the recipes to run (default: all)")
    parser.add_argument("--noisy", action="store_true",
                        help="only the search under training noise: each repeat draws every cell's reward from "
                             "one of its seeds; regret and rank by the mean over the seeds")
    return parser.parse_args(argv)


if __name__ == "__main__":
    ARGS = parse_args()  # --help and a bad flag answer before TensorFlow is imported (about 7 s)

from binarized.quiet import import_keras_quietly  # noqa: E402

import_keras_quietly()  # TensorFlow's start-up lines stay off the terminal

import numpy as np  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402
from sklearn.ensemble import GradientBoostingRegressor  # noqa: E402
from sklearn.linear_model import Ridge  # noqa: E402

import train  # noqa: E402
from pnas.search import top_k  # noqa: E402
from pnas.encoder import op_counts  # noqa: E402
from pnas.space_table import (  # noqa: E402
    SpaceTable, TableError, all_cells, best_found, draw_rewards, noise_ceiling, random_search, read_table,
    seed_rewards, simulate_search,
)

# Encoder recipes of the ablation: train.py's names -> values, on top of train.py's settings. Each
# LSTM recipe names its ENCODER_AUGMENT and ENCODER_READOUT, so that it stays what its name says.
_LSTM = dict(SURROGATE="lstm", ENCODER_AUGMENT=False, ENCODER_READOUT="last")
RECIPES = {
    "ridge on operand counts (SURROGATE='ridge')": dict(SURROGATE="ridge"),
    "original (batch 1, lr 1e-3, sigmoid on raw rewards)": dict(
        _LSTM, ENCODER_BATCHSIZE=1, ENCODER_LR=1e-3, ENCODER_TARGETS="raw"),
    "full batch, lr 2e-3, sigmoid on raw rewards (before)": dict(
        _LSTM, ENCODER_BATCHSIZE=None, ENCODER_LR=2e-3, ENCODER_TARGETS="raw"),
    "full batch, lr 2e-3, standardized": dict(
        _LSTM, ENCODER_BATCHSIZE=None, ENCODER_LR=2e-3, ENCODER_TARGETS="standardize"),
    "batch 1, lr 1e-3, scaled (0.5 +- 0.1, sigmoid)": dict(
        _LSTM, ENCODER_BATCHSIZE=1, ENCODER_LR=1e-3, ENCODER_TARGETS="scaled"),
    "batch 1, lr 1e-3, standardized": dict(
        _LSTM, ENCODER_BATCHSIZE=1, ENCODER_LR=1e-3, ENCODER_TARGETS="standardize"),
    "batch 8, lr 1e-3, standardized": dict(
        _LSTM, ENCODER_BATCHSIZE=8, ENCODER_LR=1e-3, ENCODER_TARGETS="standardize"),
    "batch 1, lr 1e-3, standardized, ensemble 5": dict(
        _LSTM, ENCODER_BATCHSIZE=1, ENCODER_LR=1e-3, ENCODER_TARGETS="standardize", ENCODER_ENSEMBLE=5),
    "scaled, ensemble 5": dict(_LSTM, ENCODER_TARGETS="scaled", ENCODER_ENSEMBLE=5),
    "scaled, every equivalent order (ENCODER_AUGMENT; the default)": dict(
        _LSTM, ENCODER_TARGETS="scaled", ENCODER_AUGMENT=True),
    "scaled, mean readout (ENCODER_READOUT='mean')": dict(
        _LSTM, ENCODER_TARGETS="scaled", ENCODER_READOUT="mean"),
    "scaled, every equivalent order, mean readout": dict(
        _LSTM, ENCODER_TARGETS="scaled", ENCODER_AUGMENT=True, ENCODER_READOUT="mean"),
}


def settings(**overrides):
    """train.py's settings with `overrides`."""
    s = {name: getattr(train, name) for name in train.SETTINGS}
    s.update(overrides)
    s["DROPOUT"] = tuple(s["DROPOUT"])
    return s


def new_encoder(state_space, s):
    """The surrogate a search with settings `s` builds (no output files)."""
    from pnas.config import SearchConfig
    from pnas.encoder import new_surrogate

    return new_surrogate(state_space, **SearchConfig.from_settings(s).encoder.encoder_kwargs())


# ----------------------------------------------------------------- measures
def seen_cells(table, b):
    """What the surrogate trains on before ranking stage b + 1: every cell of <= b blocks with a seed-0 reward."""
    return [c for k in range(1, b + 1) for c in table.children(b=k, seed=0)]


def heldout_rho(table, targets, predicted):
    """Spearman of the predictions against the table's mean rewards; nan for a constant prediction."""
    if len(set(np.round(np.asarray(predicted, dtype=float), 12))) < 2:
        return float("nan")
    return float(spearmanr(predicted, [table.mean_reward(c) for c in targets]).statistic)


def heldout_encoder(table, b, seed, s):
    """The surrogate trained stage by stage on b <= `b` (as the search does); Spearman on b + 1."""
    import keras

    keras.backend.clear_session(free_memory=True)
    keras.utils.set_random_seed(seed)
    encoder = new_encoder(table.state_space, s)
    for stage in range(1, b + 1):
        seen = seen_cells(table, stage)
        encoder.fit(seen, [table.reward(c, 0) for c in seen])
    targets = table.children(b=b + 1)
    return heldout_rho(table, targets, encoder.predict(targets))


# Baselines on operand counts (`pnas.encoder.op_counts`): seed -> an unfitted scikit-learn regressor.
BASELINES = {
    "ridge": lambda seed: Ridge(alpha=1.0),
    "gbr": lambda seed: GradientBoostingRegressor(
        n_estimators=200, max_depth=2, learning_rate=0.05, subsample=0.8, random_state=seed
    ),
}


def heldout_baseline(table, b, seed, name):
    seen = seen_cells(table, b)
    model = BASELINES[name](seed)
    model.fit(np.array([op_counts(table.state_space, c) for c in seen]), [table.reward(c, 0) for c in seen])
    targets = table.children(b=b + 1)
    return heldout_rho(table, targets, model.predict(np.array([op_counts(table.state_space, c) for c in targets])))


def agreement_line(table, other, b):
    """Spearman of two tables' seed-0 rewards over the cells of b blocks that both have."""
    cells = [c for c in table.children(b=b, seed=0) if c in other and 0 in other.rewards[c]]
    if len(cells) < 3:
        return f"against b={b} rho=nan  # {len(cells)} cells in both"
    rho = spearmanr([table.reward(c, 0) for c in cells], [other.reward(c, 0) for c in cells]).statistic
    return f"against b={b} rho={rho:.2f}  # {len(cells)} cells in both"


def mean_sd(values):
    """Mean and sd over the seeds; nan if a seed's rho is undefined (a constant prediction)."""
    values = np.array(values, dtype=float)
    return float(np.mean(values)), float(np.std(values))


# ------------------------------------------------------------------- search
def search_lines(table, label, results, ks, repeats, ranks, seeds, reward_seed=0):
    """The `label` lines from `results[K, seed] = (cells trained, best cell)` of the PNAS runs.

    Ranks and rewards are by the mean over `seeds` (`ranks` = `table.ranks(seeds=seeds)`);
    the searches saw the rewards of `reward_seed`, and so does the random search's pick.
    """
    lines = []
    for K in ks:
        pnas = np.array([(ranks[results[K, seed][1]], table.mean_reward(results[K, seed][1], seeds))
                         for seed in range(repeats)])
        rand = []
        for seed in range(repeats):
            best = best_found(table, random_search(table, results[K, seed][0], seed), reward_seed)
            rand.append((ranks[best], table.mean_reward(best, seeds)))
        rand = np.array(rand)
        se = lambda v: float(np.std(v, ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan")  # noqa: E731
        lines.append(
            f"{label} K_={K} pnas_best_rank={pnas[:, 0].mean():.1f} random_best_rank={rand[:, 0].mean():.1f} "
            f"pnas_best_reward={pnas[:, 1].mean():.4f} random_best_reward={rand[:, 1].mean():.4f} "
            f"repeats={repeats} pnas_rank_se={se(pnas[:, 0]):.1f} random_rank_se={se(rand[:, 0]):.1f}"
        )
    return lines


def oracle_search(table, K, rewards):
    """PNAS's beam (`StateSpace.expand`, `top_k`) ranked by `rewards` themselves; the cells it trains.

    The bound of any surrogate with this beam: a surrogate that knew the
    reward each candidate would get.
    """
    space = table.state_space
    trained = parents = list(space.initial_children())
    for _ in range(2, space.B + 1):
        candidates = space.expand(parents)
        ranked = sorted(((c, rewards[c]) for c in candidates), key=lambda item: -item[1])
        parents, _ = top_k(ranked, K)
        trained = trained + parents
    return trained


def oracle_line(table, K, ranks, seeds):
    """The oracle on the seed-0 rewards. Deterministic, so no repeats."""
    trained = oracle_search(table, K, seed_rewards(table, 0))
    best = best_found(table, trained)
    return (f"oracle K_={K} best_rank={ranks[best]} best_reward={table.mean_reward(best, seeds):.4f} "
            f"cells={len(trained)}")


# ------------------------------------------------------------- noisy search
# Searchers of the noisy lines, in print order: the default surrogate first. 'random', 'oracle' and
# 'truth' train no encoder; the others are (searcher, overrides of train.py's settings).
NOISY_SURROGATES = (("lstm", {"SURROGATE": "lstm"}), ("ridge", {"SURROGATE": "ridge"}))
# Random subsets averaged per draw: random search's expected pick under that draw, so that its
# standard error measures the training noise, not the luck of one subset.
RANDOM_SUBSETS = 200


def noisy_found(table, K, repeat, overrides):
    """One repeat of a surrogate's search under noise: `(cells trained, best-found cell)`.

    The search sees draw `repeat` of the rewards (`draw_rewards`), its
    surrogate is seeded by `repeat`, and it picks the cell with the highest
    drawn reward among those it trained.
    """
    drawn = draw_rewards(table, repeat)
    with tempfile.TemporaryDirectory(prefix="surrogate_eval_") as root:
        trained = simulate_search(table, settings(**overrides, K_=K, SEED=repeat), root, rewards=drawn)
    return len(trained), best_found(table, trained, rewards=drawn)


def noisy_outcomes(table, K, repeat, found, n_trained):
    """`{searcher: (regret, rank)}` of one repeat, judged by each cell's mean over all its seeds.

    `found` maps each surrogate to its best-found cell under draw `repeat`;
    random, oracle and truth are computed here on the same draw: random as the mean
    over `RANDOM_SUBSETS` subsets of `n_trained` cells.
    """
    means = {c: table.mean_reward(c) for c in table.children()}
    ranks = table.ranks()
    best = max(means.values())
    drawn = draw_rewards(table, repeat)
    picks = dict(found)
    picks["oracle"] = best_found(table, oracle_search(table, K, drawn), rewards=drawn)
    picks["truth"] = best_found(table, oracle_search(table, K, means), rewards=drawn)
    outcomes = {name: (best - means[c], ranks[c]) for name, c in picks.items()}
    subsets = [best_found(table, random_search(table, n_trained, RANDOM_SUBSETS * repeat + i), rewards=drawn)
               for i in range(RANDOM_SUBSETS)]
    outcomes["random"] = (float(np.mean([best - means[c] for c in subsets])),
                          float(np.mean([ranks[c] for c in subsets])))
    return outcomes


def noisy_lines(table, ks, repeats, found):
    """The `noisy` lines from `found[searcher, K, repeat] = (cells trained, best cell)`."""
    lines = []
    names = [name for name, _ in NOISY_SURROGATES] + ["random", "oracle", "truth"]
    for K in ks:
        per_repeat = []
        for r in range(repeats):
            n_trained = found[NOISY_SURROGATES[0][0], K, r][0]
            picks = {name: found[name, K, r][1] for name, _ in NOISY_SURROGATES}
            per_repeat.append(noisy_outcomes(table, K, r, picks, n_trained))
        for name in names:
            values = np.array([o[name] for o in per_repeat])
            se = np.std(values, axis=0, ddof=1) / np.sqrt(repeats) if repeats > 1 else [float("nan")] * 2
            lines.append(f"noisy K_={K} searcher={name} regret={values[:, 0].mean():.4f} regret_se={se[0]:.4f} "
                         f"rank={values[:, 1].mean():.1f} rank_se={se[1]:.1f} repeats={repeats}")
    return lines


# The surrogates of the held-out lines and the searches: (label, overrides of train.py's settings).
SURROGATES = (
    ("heldout", {}),
    ("heldout_unaugmented", {"SURROGATE": "lstm", "ENCODER_AUGMENT": False}),
    ("heldout_ensemble5", {"SURROGATE": "lstm", "ENCODER_ENSEMBLE": 5}),
)
# The searches: (label, overrides, the table seed whose rewards the search sees). search_seed1
# repeats the default search on the second training of every cell, once the table has it: an
# independent draw of the training noise, which the repeats of a deterministic surrogate do not vary.
SEARCHES = (("search", {}, 0), ("search_ridge", {"SURROGATE": "ridge"}, 0), ("search_seed1", {}, 1))


def trains_lstm(overrides):
    """Whether train.py's settings with `overrides` rank with the LSTM (the lines --quick leaves out)."""
    return overrides.get("SURROGATE", train.SURROGATE) == "lstm"


# ---------------------------------------------------------------- the tasks
# Every encoder training is a task, run in a pool of processes (`--jobs`).
_TABLE = None


def _init(path, threads):
    """A pool process: quiet Keras, `threads` CPU threads, the table loaded once."""
    global _TABLE
    from binarized.quiet import import_keras_quietly

    import_keras_quietly()
    if threads:
        import keras

        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
    _TABLE = load_table(path)


def _run_task(task):
    """("heldout", b, seed, overrides) -> rho; ("search", K, seed, overrides, reward seed) -> (cells, best cell);
    ("noisy", K, repeat, overrides) -> (cells, best cell)."""
    kind, *args = task
    if kind == "heldout":
        b, seed, overrides = args
        return heldout_encoder(_TABLE, b, seed, settings(**overrides))
    if kind == "noisy":
        K, repeat, overrides = args
        return noisy_found(_TABLE, K, repeat, overrides)
    K, seed, overrides, reward_seed = args
    with tempfile.TemporaryDirectory(prefix="surrogate_eval_") as root:
        trained = simulate_search(_TABLE, settings(**overrides, K_=K, SEED=seed), root, reward_seed)
    return len(trained), best_found(_TABLE, trained, reward_seed)


def run_tasks(tasks, path, jobs):
    """Results of `tasks` in order, computed `jobs` at a time."""
    if jobs <= 1:
        _init(path, None)
        return [_run_task(t) for t in tasks]
    import concurrent.futures
    import multiprocessing

    with concurrent.futures.ProcessPoolExecutor(
        jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_init, initargs=(path, 1)
    ) as pool:
        return list(pool.map(_run_task, tasks))


# --------------------------------------------------------------------- main
def load_table(path):
    """The table at `path`, in the default space of as many blocks as its largest cell has."""
    from pnas.encoder import StateSpace

    try:
        rows = read_table(path)
        if not rows:
            sys.exit(f"error: {path} holds no rows; run python bench/space_table.py first")
        state_space = StateSpace(max(row["b"] for row in rows), train.operators, 0, 0)
        return SpaceTable(rows, state_space)
    except TableError as exc:
        sys.exit(f"error: {exc}")


def chosen_recipes(numbers):
    """`(name, overrides)` of the `RECIPES` numbered (from 1) in the comma-separated `numbers`; all for None."""
    recipes = list(RECIPES.items())
    if numbers is None:
        return recipes
    try:
        return [recipes[int(n) - 1] for n in numbers.split(",")]
    except (ValueError, IndexError):
        sys.exit(f"error: --recipes takes numbers from 1 to {len(recipes)}, e.g. --recipes 1,3; got {numbers!r}")


def noisy_main(table, args, ks):
    """The `noisy` lines (or with --ablation, each recipe's noisy line at every K_)."""
    two = sum(len(r) >= 2 for r in table.rewards.values())
    print(f"# noisy: {two} of {len(table)} cells have two seeds (a cell with one is the same in every draw); "
          "regret and rank by each cell's mean over its seeds", flush=True)
    if args.ablation:
        recipes = chosen_recipes(args.recipes)
        tasks = [("noisy", K, r, o) for _, o in recipes for K in ks for r in range(args.repeats)]
        results = iter(run_tasks(tasks, args.table, args.jobs))
        for name, _ in recipes:
            found = {}
            for K in ks:
                for r in range(args.repeats):
                    found["lstm", K, r] = next(results)
                    found["ridge", K, r] = found["lstm", K, r]
            for line in noisy_lines(table, ks, args.repeats, found):
                if "searcher=lstm" in line:
                    print(f"ablation {line.replace('searcher=lstm ', '')} | {name}", flush=True)
        return
    surrogates = [(n, o) for n, o in NOISY_SURROGATES if not (args.quick and trains_lstm(o))]
    tasks = [("noisy", K, r, o) for _, o in surrogates for K in ks for r in range(args.repeats)]
    results = iter(run_tasks(tasks, args.table, args.jobs))
    found = {(name, K, r): next(results) for name, _ in surrogates for K in ks for r in range(args.repeats)}
    for name, _ in NOISY_SURROGATES:
        if (name, ks[0], 0) not in found:  # --quick: the ridge stands in, and its line is left out
            for K in ks:
                for r in range(args.repeats):
                    found[name, K, r] = found["ridge", K, r]
    for line in noisy_lines(table, ks, args.repeats, found):
        if not (args.quick and "searcher=lstm" in line):
            print(line, flush=True)


def main(args):
    if args.repeats is None:
        args.repeats = 40 if args.noisy else 20
    for path in (args.table, args.against):
        if path is not None and not os.path.exists(path):
            sys.exit(f"error: no table at {path}; run python bench/space_table.py first")

    start = time.time()
    table = load_table(args.table)
    B = table.state_space.B
    cells = all_cells(table.state_space, B)
    coverage = {b: sum(c in table and 0 in table.rewards[c] for c in cells[b]) for b in cells}
    print(f"# {args.table}: {len(table)} cells; seed-0 coverage "
          + ", ".join(f"b={b} {coverage[b]}/{len(cells[b])}" for b in cells)
          + f"; seed 1 for {sum(1 in r for r in table.rewards.values())}", flush=True)
    # A held-out stage needs every cell of b blocks and some of b + 1.
    stages = [b for b in range(1, B) if coverage[b] == len(cells[b]) and coverage[b + 1] >= 3]
    if coverage[B] < len(cells[B]) and B - 1 in stages:
        print(f"# b={B - 1}->{B} is measured on the {coverage[B]} cells of {B} blocks in the table so far")
    seeds = range(args.seeds)
    ks = [int(k) for k in args.k.split(",")]
    complete = all(coverage[b] == len(cells[b]) for b in cells)

    if args.noisy:
        if not complete:
            sys.exit(f"error: {args.table} lacks cells of the {B}-block space; the noisy search needs every cell")
        noisy_main(table, args, ks)
        print(f"# {time.time() - start:.0f} s with {args.jobs} processes")
        return

    if args.ablation:
        recipes = chosen_recipes(args.recipes)
        tasks = [("heldout", b, seed, recipe) for _, recipe in recipes for b in stages for seed in seeds]
        results = iter(run_tasks(tasks, args.table, args.jobs))
        for name, _ in recipes:
            parts = []
            for b in stages:
                m, sd = mean_sd([next(results) for _ in seeds])
                parts.append(f"b={b}->{b + 1} rho={m:.2f} sd={sd:.2f}")
            print(f"ablation {' '.join(parts)} | {name}", flush=True)
        print(f"# {time.time() - start:.0f} s")
        return

    if args.against:
        other = load_table(args.against)
        for b in range(1, B + 1):
            print(agreement_line(table, other, b))
    for b in range(2, B + 1):
        rho, n = noise_ceiling(table, b)
        print(f"noise_ceiling b={b} rho={'nan' if rho is None else f'{rho:.2f}'}  # {n} cells with 2 seeds")
    for name in BASELINES:
        for b in stages:
            m, sd = mean_sd([heldout_baseline(table, b, seed, name) for seed in seeds])
            print(f"heldout_{name} b={b}->{b + 1} rho={m:.2f} sd={sd:.2f}", flush=True)
    surrogates = [(label, o) for label, o in SURROGATES if not (args.quick and trains_lstm(o))]
    searches = [(label, o, r) for label, o, r in SEARCHES
                if not (args.quick and trains_lstm(o)) and r in table.common_seeds()]
    tasks = [("heldout", b, seed, overrides) for _, overrides in surrogates for b in stages for seed in seeds]
    if complete:
        tasks += [("search", K, seed, overrides, r) for _, overrides, r in searches for K in ks
                  for seed in range(args.repeats)]
    results = iter(run_tasks(tasks, args.table, args.jobs))
    for label, _ in surrogates:
        for b in stages:
            m, sd = mean_sd([next(results) for _ in seeds])
            print(f"{label} b={b}->{b + 1} rho={m:.2f} sd={sd:.2f}", flush=True)
    if complete:
        rank_seeds = table.common_seeds()
        ranks = table.ranks(seeds=rank_seeds)
        print(f"# best-found ranks by the mean reward over seed(s) {rank_seeds}, which every cell has")
        for label, _, reward_seed in searches:
            found = {(K, seed): next(results) for K in ks for seed in range(args.repeats)}
            for line in search_lines(table, label, found, ks, args.repeats, ranks, rank_seeds, reward_seed):
                print(line)
        for K in ks:
            print(oracle_line(table, K, ranks, rank_seeds))
    else:
        print("# search lines skipped: the table lacks seed-0 rewards for some cells")
    print(f"# {time.time() - start:.0f} s with {args.jobs} processes")


if __name__ == "__main__":
    main(ARGS)
