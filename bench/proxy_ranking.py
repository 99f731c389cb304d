"""Does a cheap proxy training rank children as the full training does?

Samples children of every block count from the search space, trains each one
with one or more proxy budgets (a training subset and fewer epochs) and with
the reference budget, exactly as the search trains a child (NetworkManager,
train.py's child-training settings, the same seed), then prints the rewards,
the Spearman rank correlation of each proxy's rewards with the reference
rewards (over all children and within each block count, which is what one
stage of the search compares), the seconds per child, and what a full search
with each proxy would take at that pace.

    python bench/proxy_ranking.py [--per-b 4] [--reference '{"MAX_EPOCHS": 20}']
        [--proxies '[{"TRAIN_SIZE": 5000, "MAX_EPOCHS": 1}]'] [--jsonl runs.jsonl]

A budget is a JSON object of TRAIN_SIZE (None: all 55,000 images) and
MAX_EPOCHS. The default reference is train.py's full budget. With --jsonl,
every training is appended to that file as it finishes, and a rerun with the
same file skips the trainings it already holds (a killed run resumes).
"""

import argparse
import json
import os
import random
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

DEFAULT_PROXIES = [{"TRAIN_SIZE": 5000, "MAX_EPOCHS": 1}, {"TRAIN_SIZE": 10000, "MAX_EPOCHS": 1}]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-b", type=int, default=4, help="children sampled for each block count 1..B")
    parser.add_argument("--b", default=None, help="comma-separated block counts to sample (default: 1..B)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the sample and every training")
    parser.add_argument("--reference", default="{}", help="JSON budget of the reference (default: train.py's)")
    parser.add_argument("--proxies", default=json.dumps(DEFAULT_PROXIES), help="JSON list of proxy budgets")
    parser.add_argument("--jsonl", default=None, help="append every training here; skip those it holds")
    return parser.parse_args(argv)


if __name__ == "__main__":
    ARGS = parse_args()  # --help and a bad flag answer before TensorFlow is imported (about 7 s)

from binarized.quiet import import_keras_quietly  # noqa: E402

import_keras_quietly()  # TensorFlow's start-up lines stay off the terminal

import keras  # noqa: E402
import numpy as np  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

import train  # noqa: E402
from mnist.mnist_data import get_dataset  # noqa: E402
from pnas.encoder import StateSpace  # noqa: E402
from pnas.manager import NetworkManager  # noqa: E402
from pnas.model import model_fn  # noqa: E402
from pnas.config import SearchConfig  # noqa: E402

WEIGHTS_DIR = tempfile.mkdtemp(prefix="proxy_ranking_")


def budget(spec):
    unknown = set(spec) - {"TRAIN_SIZE", "MAX_EPOCHS"}
    if unknown:
        sys.exit(f"error: unknown budget keys {sorted(unknown)}; a budget has TRAIN_SIZE and MAX_EPOCHS")
    return {"TRAIN_SIZE": train.TRAIN_SIZE, "MAX_EPOCHS": train.MAX_EPOCHS, **spec}


def label(b):
    size = "all" if b["TRAIN_SIZE"] is None else b["TRAIN_SIZE"]
    return f"{size}x{b['MAX_EPOCHS']}"


def sample_children(state_space, per_b, rng, blocks=None):
    """`per_b` distinct children of each block count in `blocks` (default all), drawn uniformly."""
    children, stage = [], state_space.initial_children()
    for b in range(1, state_space.B + 1):
        if b > 1:
            stage = state_space.expand(stage)
        if blocks is None or b in blocks:
            children += [state_space.parse(c) for c in rng.sample(stage, min(per_b, len(stage)))]
    return children


def train_child(datasets, actions, b, seed):
    settings = {name: getattr(train, name) for name in train.SETTINGS}
    child = SearchConfig.from_settings(dict(settings, MAX_EPOCHS=b["MAX_EPOCHS"], VERBOSE=0, TEST_CHILDREN=True)).child
    keras.utils.set_random_seed(seed)
    manager = NetworkManager(datasets[b["TRAIN_SIZE"]], **child.manager_kwargs(os.path.join(WEIGHTS_DIR, "proxy_ranking")))
    return manager.train_child(model_fn, **child.train_kwargs(actions, name="proxy_ranking"))


def load_done(path):
    done = {}
    if path and os.path.exists(path):
        with open(path) as f:
            for line in f:
                r = json.loads(line)
                done[(json.dumps(r["actions"]), label(r["budget"]), r["seed"])] = r
    return done


def main(args):
    reference = budget(json.loads(args.reference))
    proxies = [budget(p) for p in json.loads(args.proxies)]
    budgets = proxies + [reference]

    state_space = StateSpace(train.B, train.operators, input_lookforward_depth=train.INPUT_LOOKFORWARD_DEPTH)
    only_b = None if args.b is None else [int(b) for b in args.b.split(",")]
    children = sample_children(state_space, args.per_b, random.Random(args.seed), only_b)
    sizes = {b["TRAIN_SIZE"] for b in budgets}
    datasets = {n: get_dataset(train.USE_EXPANSION, train_size=n, seed=train.SEED, verbose=False) for n in sizes}
    done = load_done(args.jsonl)
    print(f"keras {keras.__version__} ({keras.backend.backend()}), {len(children)} children, "
          f"budgets {[label(b) for b in budgets]} (TRAIN_SIZE x MAX_EPOCHS), reference {label(reference)}")

    results = {}  # (child index, budget label) -> result
    for b in budgets:  # proxies first: their results come early
        for i, actions in enumerate(children):
            key = (json.dumps(actions), label(b), args.seed)
            if key not in done:
                r = train_child(datasets, actions, b, args.seed)
                done[key] = {"actions": actions, "budget": b, "seed": args.seed, **r}
                if args.jsonl:
                    with open(args.jsonl, "a") as f:
                        f.write(json.dumps(done[key]) + "\n")
            r = done[key]
            results[i, label(b)] = r
            print(f"{label(b):>10} b={len(actions) // 4} reward {r['reward']:.4f} {r['seconds']:6.1f}s  {actions}",
                  flush=True)

    blocks = np.array([len(a) // 4 for a in children])
    ref = np.array([results[i, label(reference)]["reward"] for i in range(len(children))])
    print()
    print(f"{'b':>2} " + " ".join(f"{label(b):>10}" for b in budgets) + "  architecture")
    for i, actions in enumerate(children):
        print(f"{blocks[i]:2d} " + " ".join(f"{results[i, label(b)]['reward']:10.4f}" for b in budgets)
              + f"  {actions}")
    print()
    stage_sizes = state_space.stage_sizes(train.K_)
    print(f"Spearman rank correlation with the reference {label(reference)}, and seconds per child "
          f"(a full search trains {' + '.join(map(str, stage_sizes))} children):")
    for b in budgets:
        rewards = np.array([results[i, label(b)]["reward"] for i in range(len(children))])
        seconds = np.array([results[i, label(b)]["seconds"] for i in range(len(children))])
        rho = [f"all {spearmanr(rewards, ref).statistic:+.3f}"] if len(set(blocks)) > 1 else []
        rho += [f"b={k} {spearmanr(rewards[blocks == k], ref[blocks == k]).statistic:+.3f}"
                for k in range(1, train.B + 1) if (blocks == k).sum() > 2]
        per_b = [seconds[blocks == k].mean() if (blocks == k).any() else None for k in range(1, train.B + 1)]
        line = f"  {label(b):>10}: {', '.join(rho)} | s/child by b " + " ".join(
            "-" if s is None else f"{s:.1f}" for s in per_b)
        if None not in per_b:
            line += f" | children alone ~{sum(n * s for n, s in zip(stage_sizes, per_b)) / 60:.0f} min"
        print(line)


if __name__ == "__main__":
    main(ARGS)
