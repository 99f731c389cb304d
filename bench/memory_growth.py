"""Process memory across consecutive child trainings.

Trains N children one after another as the search does: in worker processes
replaced every CHILDREN_PER_PROCESS children (pnas/worker.py), and, for
comparison, all in this process (--children-per-process 0). Prints the
resident set size (RSS) of the search process and of the worker after each
child. The goal: at most 100 MB of growth across 50 children.

    python bench/memory_growth.py [--children 50] [--children-per-process 10] [--train-size 512]
"""

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--children", type=int, default=50)
    parser.add_argument("--train-size", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--children-per-process", type=int, default=10,
                        help="as CHILDREN_PER_PROCESS in train.py; 0 trains every child in this process")
    return parser.parse_args(argv)


if __name__ == "__main__":
    ARGS = parse_args()  # --help and a bad flag answer before TensorFlow is imported (about 7 s)

from binarized.quiet import import_keras_quietly  # noqa: E402

import_keras_quietly()  # TensorFlow's start-up lines stay off the terminal

from mnist.mnist_data import get_dataset  # noqa: E402
from pnas.encoder import StateSpace  # noqa: E402
from pnas.manager import NetworkManager  # noqa: E402
from pnas.model import model_fn  # noqa: E402
from pnas.runners import ChildJob  # noqa: E402
from pnas.worker import ChildWorker  # noqa: E402

OPERATORS = ["3x3 sep-bconv", "5x5 sep-bconv", "1x7-7x1 bconv", "3x3 bconv"]


def rss_mb(pid="self"):
    """Current resident set size of a process, in MB (Linux /proc)."""
    with open(f"/proc/{pid}/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6


def main(args):
    dataset = get_dataset(train_size=args.train_size, val_size=500, test_size=500, verbose=False)
    space = StateSpace(2, OPERATORS)
    # Alternate 1- and 2-block cells so that every child is a new graph.
    children = space.initial_children() + space.expand(space.initial_children())
    with tempfile.TemporaryDirectory() as tmp:
        kwargs = dict(epochs=args.epochs, weights_dir=tmp, log_dir=os.path.join(tmp, "logs"),
                      verbose=0)
        worker = ChildWorker(dataset, kwargs, args.children_per_process) if args.children_per_process else None
        manager = None if worker else NetworkManager(dataset, **kwargs)
        start = rss_mb()
        samples, worker_samples = [], []
        for i in range(args.children):
            child_kwargs = dict(actions=space.parse(children[i % len(children)]), num_cells=3,
                                num_cell_filters=[16, 24, 32], dense_layers=[32, 10])
            if worker:
                outcome = worker.train(ChildJob(i + 1, 3, (), tuple(child_kwargs["actions"]), i), child_kwargs)
                if not outcome.ok:
                    raise RuntimeError(outcome.error)
                worker_samples.append(rss_mb(worker.pid))
            else:
                manager.train_child(model_fn, **child_kwargs)
            samples.append(rss_mb())
            extra = f", worker {worker_samples[-1]:8.1f} MB" if worker else ""
            print(f"child {i + 1:3d}: search process {samples[-1]:8.1f} MB{extra}", flush=True)
        if worker:
            worker.close()
    mode = f"a worker process per {args.children_per_process} children" if worker else "one process"
    print(f"{mode}: search process RSS {start:.1f} MB before the first child, {samples[0]:.1f} MB after it, "
          f"{samples[-1]:.1f} MB after child {len(samples)}")
    print(f"growth of the search process over {len(samples)} children: {samples[-1] - samples[0]:.1f} MB; "
          "goal <= 100 MB")
    if worker:
        print(f"largest worker RSS {max(worker_samples):.1f} MB (first child {worker_samples[0]:.1f} MB)")


if __name__ == "__main__":
    main(ARGS)
