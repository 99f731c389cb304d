"""Process memory across consecutive child trainings.

Trains N children one after another through NetworkManager, as the search
does, and prints the resident set size (RSS) after each and its growth. The
goal: at most 100 MB of growth across 50 children.

    python bench/memory_growth.py [--children 50] [--train-size 512] [--epochs 1]
"""

import argparse
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mnist.mnist_data import get_dataset  # noqa: E402
from pnas.encoder import StateSpace  # noqa: E402
from pnas.manager import NetworkManager  # noqa: E402
from pnas.model import model_fn  # noqa: E402

OPERATORS = ["3x3 sep-bconv", "5x5 sep-bconv", "1x7-7x1 bconv", "3x3 bconv"]


def rss_mb():
    """Current resident set size of this process, in MB (Linux /proc)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--children", type=int, default=50)
    parser.add_argument("--train-size", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    dataset = get_dataset(train_size=args.train_size, val_size=500, test_size=500, verbose=False)
    space = StateSpace(2, OPERATORS)
    # Alternate 1- and 2-block cells so that every child is a new graph.
    children = space.initial_children() + space.expand(space.initial_children())
    with tempfile.TemporaryDirectory() as tmp:
        manager = NetworkManager(dataset, exp_name="memory", epochs=args.epochs, weights_dir=tmp,
                                 log_dir=os.path.join(tmp, "logs"), verbose=0)
        start = rss_mb()
        samples = []
        for i in range(args.children):
            child = children[i % len(children)]
            manager.train_child(model_fn, space.parse(child), 3, [16, 24, 32], [32, 10])
            samples.append(rss_mb())
            print(f"child {i + 1:3d}: RSS {samples[-1]:8.1f} MB", flush=True)
    warm = samples[min(4, len(samples) - 1)]
    print(f"RSS before the first child {start:.1f} MB, after child 1 {samples[0]:.1f} MB, "
          f"after child {len(samples)} {samples[-1]:.1f} MB")
    print(f"growth over {len(samples)} children: {samples[-1] - samples[0]:.1f} MB "
          f"(from child 5 on: {samples[-1] - warm:.1f} MB); goal <= 100 MB")


if __name__ == "__main__":
    main()
