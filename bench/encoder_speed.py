"""How fast the encoder trains: one step per call, several steps per call, and XLA.

The encoder trains one child per gradient step (the original's recipe), so a
step's fixed cost (a call into TensorFlow, the callbacks) outweighs its
arithmetic. For the b <= 2 cells of the default space (65 children,
`RNN_TRAINING_EPOCHS` passes), it times a fresh encoder's `fit`, compilation
included, in three configurations, alternated `--repeats` times in one
process, and prints seconds per fit, the ratio to Keras's CPU defaults, and
whether they rank the three-block cells alike:

- Keras's defaults on a CPU: no XLA, one step per call;
- `Encoder`'s default: no XLA, `Encoder.STEPS_PER_EXECUTION` steps per call;
- `Encoder(jit_compile=True)`: the same with XLA.

    python bench/encoder_speed.py [--repeats 3]
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="fits of each configuration, alternated")
    return parser.parse_args(argv)


if __name__ == "__main__":
    ARGS = parse_args()  # --help and a bad flag answer before TensorFlow is imported (about 7 s)

from binarized.quiet import import_keras_quietly  # noqa: E402

import_keras_quietly()  # TensorFlow's start-up lines stay off the terminal

import keras  # noqa: E402
import numpy as np  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

import train  # noqa: E402
from pnas.encoder import Encoder, StateSpace  # noqa: E402
from pnas.space_table import all_cells  # noqa: E402


class OneStepPerCall(Encoder):
    STEPS_PER_EXECUTION = 1


CONFIGS = {
    "keras defaults (no XLA, 1 step per call)": (OneStepPerCall, False),
    f"Encoder default (no XLA, {Encoder.STEPS_PER_EXECUTION} steps per call)": (Encoder, False),
    f"jit_compile=True (XLA, {Encoder.STEPS_PER_EXECUTION} steps per call)": (Encoder, True),
}


def fit_seconds(cls, jit_compile, children, rewards, targets):
    keras.backend.clear_session(free_memory=True)
    keras.utils.set_random_seed(0)
    encoder = cls(StateSpace(3, train.operators), epochs=train.RNN_TRAINING_EPOCHS, jit_compile=jit_compile)
    start = time.perf_counter()
    encoder.fit(children, rewards)
    seconds = time.perf_counter() - start
    return seconds, encoder.steps, encoder.predict(targets)


def main(args):
    cells = all_cells(StateSpace(3, train.operators), 3)
    children = cells[1] + cells[2]
    rng = np.random.default_rng(0)
    rewards = 0.78 + 0.06 * rng.random(len(children))  # the proxy's range of rewards
    times = {name: [] for name in CONFIGS}
    predictions = {}
    for _ in range(args.repeats):
        for name, (cls, jit) in CONFIGS.items():
            seconds, steps, predictions[name] = fit_seconds(cls, jit, children, rewards, cells[3])
            times[name].append(seconds)
    print(f"encoder fit of {len(children)} children, {steps} steps of batch 1, compilation included "
          f"(median of {args.repeats}):")
    base_name = next(iter(CONFIGS))
    base = np.median(times[base_name])
    for name in CONFIGS:
        t = np.median(times[name])
        rho = spearmanr(predictions[base_name], predictions[name]).statistic
        print(f"  {name:<48} {t:6.2f} s  {1000 * t / steps:5.1f} ms/step  {base / t:4.2f}x  "
              f"ranks the 220 three-block cells as the defaults do: Spearman {rho:.3f}")


if __name__ == "__main__":
    main(ARGS)
