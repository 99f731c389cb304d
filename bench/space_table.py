"""Trains every cell of the default search space and tabulates the rewards.

With train.py's 4 default operators, INPUT_LOOKFORWARD_DEPTH = 0 and B = 3
there are 10 + 55 + 220 = 285 distinct cells (canonical forms). This script
trains each of them exactly as the search trains a child (the same
`NetworkManager`, the same model, train.py's child-training settings, side
by side in replaceable worker processes) and appends one CSV row per
(cell, seed) as soon as it finishes:

    architecture, representation_string, b, seed, reward, test_accuracy, mul_ops, seconds

`seed` is the Keras seed of the training (weights, dropout, batch order).
Rows already in the file are skipped, so a killed run resumes where it was.

    python bench/space_table.py                       # proxy: 5,000 images x 1 epoch
    python bench/space_table.py --budget reference --max-b 2    # all 55,000 images x 3 epochs
    python bench/space_table.py --seeds 0 --sample 20 --out new.csv  # 20 fixed cells, e.g. after a change
    python bench/space_table.py --budget final --top-proxy 10 --seeds 0,1  # the final stage's budget, on
                                                      # the 10 best three-block cells of the proxy table

Order of the proxy run: seed 0 of b = 1 and 2, seed 1 of b = 1 and 2, seed 0
of b = 3, seed 1 of b = 3 (the three-block cells in a fixed shuffled order,
so that a partial table is a uniform sample). `bench/surrogate_eval.py` reads
the table.
"""

import argparse
import multiprocessing.connection
import os
import random
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from pnas.space_table import BUDGETS, all_cells, append_row, read_table, row_key  # noqa: E402  (imports no TensorFlow)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="proxy",
                        help="proxy: TRAIN_SIZE 5000, 1 epoch; reference: all 55,000 images, 3 epochs; "
                             "final: all 55,000 images, 1 epoch (train.py's final stage)")
    parser.add_argument("--seeds", default=None, help="comma-separated seeds (default: 0,1 proxy; 0 reference)")
    parser.add_argument("--max-b", type=int, default=3, choices=[1, 2, 3], help="largest block count to train")
    parser.add_argument("--parallel", type=int, default=2, help="children trained side by side (one thread each)")
    parser.add_argument("--limit", type=int, default=None, help="stop after this many new rows")
    parser.add_argument("--sample", type=int, default=None,
                        help="train only N cells, evenly spaced over the plan of each seed (a fixed subset)")
    parser.add_argument("--top-proxy", type=int, default=None,
                        help="train only the N best three-block cells by their mean reward in "
                             "bench/results/space_proxy.csv")
    parser.add_argument("--out", default=None, help="CSV path (default: bench/results/space_{budget}.csv)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    ARGS = parse_args()  # --help and a bad flag answer before TensorFlow is imported (about 7 s)

from binarized.quiet import import_keras_quietly  # noqa: E402

import_keras_quietly()  # TensorFlow's start-up lines stay off the terminal

import train  # noqa: E402
from pnas.report import hms  # noqa: E402


def plan(state_space, seeds, max_b, shuffle_seed=0):
    """The (child, seed) jobs in the order described in the module docstring."""
    cells = all_cells(state_space, max_b)
    small = [c for b in range(1, min(max_b, 2) + 1) for c in cells[b]]
    large = list(cells.get(3, []))
    random.Random(shuffle_seed).shuffle(large)
    jobs = []
    for seed in seeds:
        jobs += [(c, seed) for c in small]
    for seed in seeds:
        jobs += [(c, seed) for c in large]
    return jobs


def main(args):
    budget = BUDGETS[args.budget]
    seeds = [int(s) for s in (args.seeds or ("0,1" if args.budget == "proxy" else "0")).split(",")]
    out = args.out or os.path.join(ROOT, "bench", "results", f"space_{args.budget}.csv")
    os.makedirs(os.path.dirname(out), exist_ok=True)

    from pnas.runners import ChildJob
    from pnas.worker import ChildWorker, import_keras_quietly

    import_keras_quietly()
    from mnist.mnist_data import get_dataset
    from pnas.encoder import StateSpace
    from pnas.config import SearchConfig

    settings = {name: getattr(train, name) for name in train.SETTINGS}
    state_space = StateSpace(3, train.operators, 0, 0)
    done = {row_key(r) for r in read_table(out, repair=True)}
    planned = plan(state_space, seeds, args.max_b)
    if args.sample is not None:
        cells = [c for c, s in planned if s == seeds[0]]
        step = len(cells) / args.sample
        chosen = {cells[int(i * step)] for i in range(args.sample)}
        planned = [(c, s) for c, s in planned if c in chosen]
    if args.top_proxy is not None:
        proxy = read_table(os.path.join(ROOT, "bench", "results", "space_proxy.csv"), repair=False)
        means = {}
        for row in proxy:
            if int(row["b"]) == 3:
                means.setdefault(row["representation_string"], []).append(float(row["reward"]))
        best = sorted(means, key=lambda r: -sum(means[r]) / len(means[r]))[: args.top_proxy]
        order = {rep: i for i, rep in enumerate(best)}
        planned = sorted([(c, s) for c, s in planned if state_space.representation_string(c) in order],
                         key=lambda job: (job[1], order[state_space.representation_string(job[0])]))
    jobs = [(c, s) for c, s in planned
            if (state_space.representation_string(c), s) not in done]
    if args.limit is not None:
        jobs = jobs[: args.limit]
    print(f"{args.budget} budget (TRAIN_SIZE {budget['TRAIN_SIZE']}, {budget['MAX_EPOCHS']} epochs), "
          f"seeds {seeds}, b <= {args.max_b}: {len(done)} rows in {out}, {len(jobs)} to train", flush=True)
    if not jobs:
        return
    dataset = get_dataset(train.USE_EXPANSION, train_size=budget["TRAIN_SIZE"], seed=train.SEED, verbose=False)
    child = SearchConfig.from_settings(
        dict(settings, MAX_EPOCHS=budget["MAX_EPOCHS"], VERBOSE=0, TEST_CHILDREN=True)
    ).child
    manager_kwargs = child.manager_kwargs(tempfile.mkdtemp(prefix="space_table_"))
    threads = 1 if args.parallel > 1 else None
    workers = [ChildWorker(dataset, manager_kwargs, train.CHILDREN_PER_PROCESS, threads)
               for _ in range(args.parallel)]
    start, finished, failed = time.time(), 0, 0
    seconds_by_b = {}
    running, todo = {}, list(jobs)
    try:
        while todo or running:
            for slot, worker in enumerate(workers):
                if todo and worker not in running:
                    child, seed = todo.pop(0)
                    actions = state_space.parse(child)
                    worker.submit(ChildJob(0, len(child) // 4, child, tuple(actions), seed), dict(
                        actions=actions, num_cells=train.NUM_CELLS, num_cell_filters=train.NUM_CELL_FILTERS,
                        dense_layers=train.DENSE_LAYERS, dropout=tuple(train.DROPOUT), name=f"child{slot}",
                    ))
                    running[worker] = (child, seed)
            ready = multiprocessing.connection.wait([w.conn for w in running])
            for worker in [w for w in running if w.conn in ready]:
                child, seed = running.pop(worker)
                b = len(child) // 4
                outcome = worker.result()
                if not outcome.ok:
                    failed += 1
                    print(f"FAILED b={b} seed={seed} {state_space.parse(child)}: {outcome.error}", flush=True)
                    continue
                result = outcome.result
                append_row(out, {
                    "architecture": state_space.parse(child),
                    "representation_string": state_space.representation_string(child),
                    "b": b,
                    "seed": seed,
                    "reward": f"{result['reward']:.4f}",
                    "test_accuracy": f"{result['test_accuracy']:.4f}",
                    "mul_ops": result["mul_ops"],
                    "seconds": f"{result['seconds']:.1f}",
                })
                finished += 1
                seconds_by_b.setdefault(b, []).append(result["seconds"])
                elapsed = time.time() - start
                left = len(todo) + len(running)
                eta = elapsed / finished * left
                print(f"[{finished}/{len(jobs)} | elapsed {hms(elapsed)} | ETA {hms(eta)}] b={b} seed={seed} "
                      f"reward {result['reward']:.4f} test {result['test_accuracy']:.4f} "
                      f"{result['seconds']:.1f}s {state_space.parse(child)}", flush=True)
    finally:
        for worker in workers:
            worker.close()
    per_b = ", ".join(f"b={b} {sum(s) / len(s):.1f}" for b, s in sorted(seconds_by_b.items()))
    print(f"Done: {finished} rows written, {failed} failed, total {hms(time.time() - start)} "
          f"(seconds per child, {args.parallel} side by side: {per_b})")


if __name__ == "__main__":
    main(ARGS)
