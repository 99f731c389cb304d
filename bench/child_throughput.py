"""Training throughput of binary children against their float twins.

For a B=1 and a B=3 child (default operators, original cell settings), it
trains the binary network and its float twin (same topology, float
Conv/Dense and tanh in place of binarization) for one epoch on the 55,000
MNIST training images after a warm-up, and prints images/s and the
binary/float ratio. Both run in the same process, one after the other, fed
as the search feeds a child (`pnas.pipeline.fit_arguments`).

    python bench/child_throughput.py [--epochs 1] [--train-size 55000] [--repeats 1]
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--train-size", type=int, default=55000)
    parser.add_argument("--repeats", type=int, default=1, help="alternate binary/float runs this many times")
    return parser.parse_args(argv)


if __name__ == "__main__":
    ARGS = parse_args()  # --help and a bad flag answer before TensorFlow is imported (about 7 s)

from binarized.quiet import import_keras_quietly  # noqa: E402

import_keras_quietly()  # TensorFlow's start-up lines stay off the terminal

import keras  # noqa: E402
import numpy as np  # noqa: E402

from mnist.mnist_data import get_dataset  # noqa: E402
from pnas.manager import compile_child  # noqa: E402
from pnas.model import model_fn  # noqa: E402
from pnas.pipeline import fit_arguments  # noqa: E402

CHILDREN = {
    "B=1": [0, "3x3 sep-bconv", 0, "3x3 bconv"],
    "B=3": [0, "3x3 sep-bconv", 0, "5x5 sep-bconv", 0, "1x7-7x1 bconv", 0, "3x3 bconv",
            0, "3x3 bconv", 0, "3x3 sep-bconv"],
}
NUM_CELLS, NUM_CELL_FILTERS, DENSE_LAYERS, BATCH = 3, [16, 24, 32], [32, 10], 128


def images_per_second(actions, float_twin, x, y, epochs):
    keras.backend.clear_session(free_memory=True)
    keras.utils.set_random_seed(0)
    model, _ = model_fn(actions, NUM_CELLS, NUM_CELL_FILTERS, DENSE_LAYERS, float_twin=float_twin)
    compile_child(model, epochs, len(x), BATCH)
    # Warm-up: traces the train step for full and partial batches.
    warm = 10 * BATCH + len(x) % BATCH
    model.fit(**fit_arguments(x[:warm], y[:warm], BATCH), epochs=1, verbose=0)
    start = time.perf_counter()
    model.fit(**fit_arguments(x, y, BATCH), epochs=epochs, verbose=0)
    return epochs * len(x) / (time.perf_counter() - start)


def main(args):
    x, y = get_dataset(train_size=args.train_size, verbose=False)[:2]
    print(f"keras {keras.__version__}, backend {keras.backend.backend()}, {os.cpu_count()} CPUs, "
          f"{len(x)} images x {args.epochs} epoch(s), batch {BATCH}")
    print(f"{'child':6} {'binary img/s':>13} {'float img/s':>12} {'ratio':>6}")
    for name, actions in CHILDREN.items():
        binary, floating = [], []
        for _ in range(args.repeats):
            binary.append(images_per_second(actions, False, x, y, args.epochs))
            floating.append(images_per_second(actions, True, x, y, args.epochs))
        b, f = np.median(binary), np.median(floating)
        print(f"{name:6} {b:13.0f} {f:12.0f} {b / f:6.2f}")


if __name__ == "__main__":
    main(ARGS)
