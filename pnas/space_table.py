"""The exhaustive table of a search space's rewards, and reading it back.

`bench/space_table.py` trains every cell of a small search space and writes
one CSV row per (cell, seed); `bench/surrogate_eval.py` measures surrogates
and searches against it without training anything.
"""

import ast
import csv
import os

import numpy as np

COLUMNS = ["architecture", "representation_string", "b", "seed", "reward", "test_accuracy", "mul_ops", "seconds"]

# Training budgets of the table: the CPU search's proxy, and a reference.
BUDGETS = {
    "proxy": {"TRAIN_SIZE": 5000, "MAX_EPOCHS": 1},
    "reference": {"TRAIN_SIZE": None, "MAX_EPOCHS": 3},
    "final": {"TRAIN_SIZE": None, "MAX_EPOCHS": 1},  # train.py's final stage (FINAL_TRAIN_SIZE, FINAL_EPOCHS)
}


class TableError(ValueError):
    """A table file that cannot be read as a space table."""


def all_cells(state_space, max_b=None):
    """Every distinct (canonical) cell of `state_space`, by block count: `{b: [child, ...]}`."""
    max_b = state_space.B if max_b is None else max_b
    cells = {1: state_space.initial_children()}
    for b in range(2, max_b + 1):
        cells[b] = state_space.expand(cells[b - 1])
    return cells


def row_key(row):
    return row["representation_string"], row["seed"]


def append_row(path, row):
    """Appends one row (a dict of `COLUMNS`) and forces it to disk; writes the header first in a new file."""
    new = not os.path.exists(path) or os.path.getsize(path) == 0
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        if new:
            writer.writeheader()
        writer.writerow(row)
        f.flush()
        os.fsync(f.fileno())


def read_table(path, repair=False):
    """Reads a space table; returns its rows with typed values (missing file: no rows).

    Args:
        path: The CSV file.
        repair: When the last line is cut short (a run killed while
            writing), drop it from the file so that appending resumes cleanly.

    Raises:
        TableError: the header is not `COLUMNS`, or a row does not parse.
    """
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        text = f.read()
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
        if repair:
            with open(path, "w", newline="") as f:
                f.write(text)
    lines = text.splitlines()
    if not lines:
        return []
    reader = csv.DictReader(lines)
    if reader.fieldnames != COLUMNS:
        raise TableError(f"{path}: header {reader.fieldnames} is not {COLUMNS}; is it a space table?")
    rows = []
    for n, row in enumerate(reader, start=2):
        try:
            rows.append({
                "architecture": ast.literal_eval(row["architecture"]),
                "representation_string": row["representation_string"],
                "b": int(row["b"]),
                "seed": int(row["seed"]),
                "reward": float(row["reward"]),
                "test_accuracy": float(row["test_accuracy"]) if row["test_accuracy"] else None,
                "mul_ops": int(row["mul_ops"]),
                "seconds": float(row["seconds"]),
            })
        except (TypeError, ValueError, SyntaxError) as exc:
            raise TableError(f"{path}, line {n}: cannot parse {row}: {exc}") from None
    return rows


class SpaceTable:
    """Rewards of cells, looked up by child tuple.

    Args:
        rows: Rows as `read_table` returns them.
        state_space: The `StateSpace` the rows' architectures belong to;
            each architecture is mapped to its canonical child tuple.
    """

    def __init__(self, rows, state_space):
        self.state_space = state_space
        self.rewards = {}  # child -> {seed: reward}
        self.mul_ops = {}  # child -> binary multiply-accumulates
        for row in rows:
            child = state_space.canonical(state_space.unparse(row["architecture"]))
            self.rewards.setdefault(child, {})[row["seed"]] = row["reward"]
            self.mul_ops[child] = row["mul_ops"]

    @classmethod
    def load(cls, path, state_space):
        return cls(read_table(path), state_space)

    def __contains__(self, child):
        return tuple(child) in self.rewards

    def __len__(self):
        return len(self.rewards)

    def children(self, b=None, seed=None):
        """Cells in the table (with `b` blocks, with a reward for `seed`), sorted."""
        return sorted(
            c for c, r in self.rewards.items()
            if (b is None or len(c) // 4 == b) and (seed is None or seed in r)
        )

    def reward(self, child, seed=0):
        """The reward of `child` trained with `seed` (KeyError when missing)."""
        return self.rewards[tuple(child)][seed]

    def mean_reward(self, child, seeds=None):
        """The mean over the seeds in the table (or over `seeds`, which the cell must have)."""
        rewards = self.rewards[tuple(child)]
        return float(np.mean([rewards[s] for s in (rewards if seeds is None else seeds)]))

    def common_seeds(self):
        """The seeds every cell in the table has a reward for, sorted."""
        seeds = [set(r) for r in self.rewards.values()]
        return sorted(set.intersection(*seeds)) if seeds else []

    def ranks(self, children=None, seeds=None):
        """Rank by mean reward (over `seeds`, default: all a cell has) among `children` (default: all).

        1 = best; ties share the best rank. Rank cells on the same seeds
        (`common_seeds`) when some have more than others: a cell measured
        once is more likely to sit at an extreme than one averaged over two.
        """
        from scipy.stats import rankdata

        children = list(self.children() if children is None else children)
        means = [self.mean_reward(c, seeds) for c in children]
        # Ranks of the negated means: the best is 1, and 'min' gives tied cells their best rank.
        ranks = rankdata([-m for m in means], method="min") if children else []
        return {c: int(r) for c, r in zip(children, ranks)}

    def complete(self, b, seed=0):
        """Whether every cell with `b` blocks has a reward for `seed`."""
        cells = all_cells(self.state_space, b)[b]
        return all(c in self.rewards and seed in self.rewards[c] for c in cells)


def noise_ceiling(table, b):
    """Spearman of seed 0 against seed 1 over the cells of stage b that have both; `(rho, n)`.

    rho is None with fewer than 3 such cells.
    """
    from scipy.stats import spearmanr

    cells = [c for c in table.children(b=b, seed=0) if 1 in table.rewards[c]]
    if len(cells) < 3:
        return None, len(cells)
    rho = spearmanr([table.reward(c, 0) for c in cells], [table.reward(c, 1) for c in cells]).statistic
    return float(rho), len(cells)


def draw_rewards(table, repeat):
    """One draw of the training noise: every cell's reward from one of its seeds, picked at random.

    A search on a real machine sees each child trained once, with whatever
    luck that training had. With two seeds in the table, the draw of repeat
    `repeat` picks seed 0 or seed 1 for each cell independently (the same
    picks for the same `repeat`); a cell with one seed keeps that one.

    Returns:
        `{child: reward}` over every cell of the table.
    """
    rng = np.random.default_rng(repeat)
    drawn = {}
    for child in table.children():
        seeds = sorted(table.rewards[child])
        drawn[child] = table.rewards[child][seeds[int(rng.integers(len(seeds)))]]
    return drawn


def seed_rewards(table, seed=0):
    """`{child: reward}` of the cells trained with `seed`: a draw with no noise."""
    return {c: r[seed] for c, r in table.rewards.items() if seed in r}


def table_train_fn(table, seed=0, rewards=None):
    """A `Search` train_fn that looks a child's reward up in the table instead of training.

    The reward is the table's for `seed`, or `rewards[child]` when a draw
    (`draw_rewards`) is given.
    """
    rewards = seed_rewards(table, seed) if rewards is None else rewards

    def train_fn(job):
        child = table.state_space.canonical(table.state_space.unparse(list(job.actions)))
        if child not in rewards:
            raise KeyError(f"{list(job.actions)} has no seed-{seed} reward in the table")
        reward = rewards[child]
        return {
            "reward": reward, "best_epoch": 1, "val_accuracy": [reward], "train_accuracy": [],
            "test_accuracy": None, "mul_ops": table.mul_ops.get(child, 0), "params": 0,
            "footprint": {"packed_kib": 0.0}, "seconds": 0.0,
        }

    return train_fn


def simulate_search(table, settings, root, reward_seed=0, rewards=None):
    """Runs the real search (`pnas.search.Search`) with the table's rewards of `reward_seed` (or `rewards`).

    Args:
        table: A `SpaceTable` holding every cell the search can reach.
        settings: train.py's settings (`K_`, `SEED` and the encoder's are
            used; `B` and `operators` come from the table's state space).
        root: A folder for the search's files.
        reward_seed: The seed whose rewards the search sees.
        rewards: A draw `{child: reward}` (`draw_rewards`) to see instead.

    Returns:
        The distinct cells the search trained, in training order.
    """
    import contextlib
    import io

    from pnas.config import SearchConfig
    from pnas.paths import ExperimentPaths
    from pnas.search import Search

    space = table.state_space
    s = dict(settings, B=space.B, operators=list(space.operators), INPUT_LOOKFORWARD_DEPTH=space.input_lookforward_depth,
             EXPERIMENT_NAME=f"sim_k{settings['K_']}_s{settings['SEED']}", OVERWRITE=True,
             RESTORE_CONTROLLER=False, MAX_MUL_OPS=None, MAX_CONSECUTIVE_FAILURES=1)
    config = SearchConfig.from_settings(s)
    paths = ExperimentPaths(config.experiment_name, root=root)
    train_fn = table_train_fn(table, reward_seed, rewards)
    search = Search(config, None, paths, train_fn=train_fn, plots=False, final_encoder=False)
    with contextlib.redirect_stdout(io.StringIO()):
        records = search.run()
    trained = []
    for record in records:
        child = space.canonical(tuple(record["child"]))
        if child not in trained:
            trained.append(child)
    return trained


def random_search(table, n, seed):
    """`n` distinct cells drawn uniformly from the table's cells with a seed-0 reward."""
    cells = table.children(seed=0)
    rng = np.random.default_rng(10_000 + seed)
    return [cells[i] for i in rng.choice(len(cells), size=min(n, len(cells)), replace=False)]


def best_found(table, cells, seed=0, rewards=None):
    """The cell with the highest reward of `seed` (or in `rewards`) among `cells`: what a searcher who saw them picks."""
    if rewards is None:
        return max(cells, key=lambda c: (table.reward(c, seed), c))
    return max(cells, key=lambda c: (rewards[c], c))
