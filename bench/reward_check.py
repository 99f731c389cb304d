"""Rewards of retrained cells against the table's: did a change to child training move them?

It reads a CSV of `bench/space_table.py` written by the changed code (for
example `--seeds 0 --sample 20 --out new.csv`) and the committed table, and
prints, over the cells in both, the mean reward of each, the difference of
the means, and the mean absolute difference per cell: against the table's
row of the same seed (the same seed, so only the change differs), and
against the table's mean over its seeds.

    python bench/reward_check.py new.csv [--table bench/results/space_proxy.csv]
"""

import argparse
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from pnas.space_table import read_table  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("new", help="the CSV written by the changed code")
    parser.add_argument("--table", default=os.path.join(ROOT, "bench", "results", "space_proxy.csv"))
    args = parser.parse_args()
    table = {}
    for row in read_table(args.table):
        table.setdefault(row["representation_string"], {})[int(row["seed"])] = float(row["reward"])
    pairs = []
    for row in read_table(args.new):
        seeds = table.get(row["representation_string"], {})
        if int(row["seed"]) in seeds:
            pairs.append((float(row["reward"]), seeds[int(row["seed"])], np.mean(list(seeds.values()))))
    if not pairs:
        sys.exit(f"error: no cell of {args.new} is in {args.table} with the same seed")
    new, same_seed, mean = (np.array(column) for column in zip(*pairs))
    print(f"{len(new)} cells: new mean reward {new.mean():.4f}")
    for name, old in (("table, same seed", same_seed), ("table, mean of its seeds", mean)):
        print(f"  {name:25} mean {old.mean():.4f}  difference of means {new.mean() - old.mean():+.4f}  "
              f"mean |difference| {np.abs(new - old).mean():.4f}  largest {np.abs(new - old).max():.4f}")


if __name__ == "__main__":
    main()
