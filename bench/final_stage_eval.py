"""How often the final stage picks the best cell, against picking by the proxy reward alone.

Reads two space tables of the same cells, each with two seeds:
- the proxy table (bench/results/space_proxy.csv: 5,000 images x 1 epoch, the search's budget);
- a table at the final stage's budget (bench/results/space_final.csv, written by
  `python bench/space_table.py --budget final --top-proxy 10 --seeds 0,1`: all 55,000 images
  x 1 epoch, the ten best three-block cells of the proxy table).

Repeat r draws, for every cell, one of its proxy seeds (the search's one training), one of its
final-budget seeds (the final stage's training) and keeps the other final-budget seed to judge
by (an independent training). Over those cells:

- proxy pick: the best drawn proxy reward (the search without a final stage);
- final pick (FINAL_TOP = T): of the T best drawn proxy rewards, the best drawn final-budget reward.

Each pick is judged by the held-out final-budget seed (its regret: the best held-out reward minus
the pick's) and by whether it is the best cell by the mean of both final-budget seeds ("hit").
The hit rate slightly favours the final pick, whose own draw is half of that mean; the held-out
regret does not.

    python bench/final_stage_eval.py [--proxy PATH] [--final PATH] [--repeats 2000]
"""

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

from pnas.space_table import read_table  # noqa: E402  (no TensorFlow)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proxy", default=os.path.join(ROOT, "bench", "results", "space_proxy.csv"))
    parser.add_argument("--final", default=os.path.join(ROOT, "bench", "results", "space_final.csv"))
    parser.add_argument("--repeats", type=int, default=2000)
    return parser.parse_args(argv)


def two_seed_rewards(path, cells=None):
    """{representation string: [reward of seed 0, reward of seed 1]} of the cells with both seeds."""
    by_cell = {}
    for row in read_table(path):
        by_cell.setdefault(row["representation_string"], {})[int(row["seed"])] = float(row["reward"])
    return {c: [s[0], s[1]] for c, s in by_cell.items() if 0 in s and 1 in s and (cells is None or c in cells)}


def evaluate(proxy, final, repeats, seed=0):
    """{T: (hit rate, mean held-out regret, its standard error)}; T = 0 is the proxy pick."""
    cells = sorted(final)
    p = np.array([proxy[c] for c in cells])  # (cells, 2)
    f = np.array([final[c] for c in cells])
    best_by_mean = int(np.argmax(f.mean(axis=1)))
    rng = np.random.default_rng(seed)
    out = {}
    for top in range(0, len(cells) + 1):
        hits, regrets = [], []
        for _ in range(repeats):
            ps = rng.integers(0, 2, len(cells))
            fs = rng.integers(0, 2, len(cells))
            drawn_proxy = p[np.arange(len(cells)), ps]
            drawn_final = f[np.arange(len(cells)), fs]
            held_out = f[np.arange(len(cells)), 1 - fs]
            order = np.argsort(-drawn_proxy, kind="stable")
            pick = order[0] if top == 0 else order[:top][np.argmax(drawn_final[order[:top]])]
            hits.append(pick == best_by_mean)
            regrets.append(held_out.max() - held_out[pick])
        out[top] = (float(np.mean(hits)), float(np.mean(regrets)), float(np.std(regrets, ddof=1) / np.sqrt(repeats)))
    return out


def main(args):
    final = two_seed_rewards(args.final)
    proxy = two_seed_rewards(args.proxy, cells=final)
    cells = sorted(set(final) & set(proxy))
    final = {c: final[c] for c in cells}
    if len(cells) < 2:
        print(f"error: {args.final} has {len(cells)} cells with two seeds in both tables; train them first "
              "(python bench/space_table.py --budget final --top-proxy 10 --seeds 0,1)", file=sys.stderr)
        return 2
    f = np.array(list(final.values()))
    p = np.array([proxy[c] for c in cells])
    print(f"{len(cells)} cells with two seeds at both budgets; mean |seed 0 - seed 1|: proxy "
          f"{np.abs(p[:, 0] - p[:, 1]).mean():.4f}, final budget {np.abs(f[:, 0] - f[:, 1]).mean():.4f}; "
          f"spread of the final-budget means {f.mean(axis=1).max() - f.mean(axis=1).min():.4f}")
    rho = np.corrcoef(np.argsort(np.argsort(p.mean(axis=1))), np.argsort(np.argsort(f.mean(axis=1))))[0, 1]
    print(f"Spearman of the proxy means against the final-budget means: {rho:.2f}")
    for top, (hit, regret, se) in evaluate(proxy, final, args.repeats).items():
        name = "proxy pick" if top == 0 else f"final stage, FINAL_TOP={top}"
        print(f"{name:<26} best cell picked {100 * hit:5.1f} %   held-out regret {regret:.4f} +- {se:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(parse_args()))
