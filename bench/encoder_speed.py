"""How fast the encoder trains: Keras's CPU defaults against XLA with several steps per call.

The encoder trains one child per gradient step (the original's recipe), so a
step's fixed cost (a call into TensorFlow, the callbacks) outweighs its
arithmetic. For the b <= 2 cells of the default space (65 children,
`RNN_TRAINING_EPOCHS` passes), it times `Encoder.fit` from a fresh encoder,
compilation included, in both configurations, alternating them `--repeats`
times in one process, and prints seconds per fit, the ratio, and whether the
two rank the three-block cells alike.

    python bench/encoder_speed.py [--repeats 3]
"""

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

import train  # noqa: E402
from pnas.encoder import Encoder, StateSpace  # noqa: E402
from pnas.space_table import all_cells  # noqa: E402


class KerasDefaults(Encoder):
    """The encoder as Keras compiles it by default on a CPU: no XLA, one step per call."""

    STEPS_PER_EXECUTION = 1


def fit_seconds(cls, jit_compile, children, rewards, targets):
    keras.backend.clear_session(free_memory=True)
    keras.utils.set_random_seed(0)
    encoder = cls(StateSpace(3, train.operators), epochs=train.RNN_TRAINING_EPOCHS, jit_compile=jit_compile)
    start = time.perf_counter()
    encoder.fit(children, rewards)
    seconds = time.perf_counter() - start
    return seconds, encoder.steps, encoder.predict(targets)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="fits of each configuration, alternated")
    args = parser.parse_args()
    cells = all_cells(StateSpace(3, train.operators), 3)
    children = cells[1] + cells[2]
    rng = np.random.default_rng(0)
    rewards = 0.78 + 0.06 * rng.random(len(children))  # the proxy's range of rewards
    times = {"defaults": [], "xla": []}
    for _ in range(args.repeats):
        t0, steps, p0 = fit_seconds(KerasDefaults, False, children, rewards, cells[3])
        t1, _, p1 = fit_seconds(Encoder, True, children, rewards, cells[3])
        times["defaults"].append(t0)
        times["xla"].append(t1)
    d, x = np.median(times["defaults"]), np.median(times["xla"])
    print(f"encoder fit of {len(children)} children, {steps} steps of batch 1 (median of {args.repeats}):")
    print(f"  keras defaults (no XLA, 1 step per call): {d:.2f} s ({1000 * d / steps:.1f} ms/step)")
    print(f"  XLA, {Encoder.STEPS_PER_EXECUTION} steps per call:           {x:.2f} s ({1000 * x / steps:.1f} ms/step)")
    print(f"  speed-up {d / x:.2f}x; rank agreement of their 220 three-block predictions: "
          f"Spearman {spearmanr(p0, p1).statistic:.3f}")


if __name__ == "__main__":
    main()
