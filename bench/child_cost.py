"""Where a proxy child's time goes, phase by phase.

It trains a B=1 and a B=3 child as the proxy search trains them (5,000
images, one epoch, batch 128, `TEST_CHILDREN = True`, TensorBoard logs), each
in a fresh worker process started as the search starts its workers, and
prints the seconds of each phase:

    worker start    spawning the worker, importing Keras and the package
    build           the model (`NetworkManager.build`)
    compile         the optimizer and its slots (`NetworkManager.compile`)
    trace           the first train step, less one ordinary step
    partial batch   the last, partial batch, less its share of an ordinary step
    epoch           every train step but the trace and the partial batch's excess
    fit other       the rest of `fit`: data pipeline, callbacks, TensorBoard
    calibration     BatchNorm calibration (`calibrate_batchnorm`)
    validation      `evaluate` on the validation images (its trace included)
    test            `evaluate` on the test images
    footprint       the per-layer footprint
    saving          the best epoch's weights file
    other           the rest of `train_child` (seeding, clean-up)

Each child trains `--repeats` times in its worker: the first pays the
worker's one-off costs, the next ones show a warm worker.

    python bench/child_cost.py [--repeats 2] [--train-size 5000] [--code PATH]

`--code` runs the workers on another checkout of this package (for example
an older commit in a git worktree), so that one script measures both.
"""

import argparse
import collections
import multiprocessing
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILDREN = {
    "B=1": [0, "3x3 sep-bconv", 0, "3x3 bconv"],
    "B=3": [0, "3x3 sep-bconv", 0, "5x5 sep-bconv", 0, "1x7-7x1 bconv", 0, "3x3 bconv",
            0, "3x3 bconv", 0, "3x3 sep-bconv"],
}
PHASES = ["worker start", "build", "compile", "trace", "partial batch", "epoch", "fit other", "calibration",
          "validation", "test", "footprint", "saving", "other"]
BATCH = 128


class _Clock:
    """Adds up the seconds of named phases; `wrap` times a function into one."""

    def __init__(self):
        self.seconds = collections.defaultdict(float)
        self.current = []

    def wrap(self, owner, name, phase):
        inner = getattr(owner, name)

        def timed(*args, **kwargs):
            label = phase(*args) if callable(phase) else phase
            self.current.append(label)
            start = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.seconds[label] += time.perf_counter() - start
                self.current.pop()

        setattr(owner, name, timed)


def _instrument(clock, batches):
    """Times the phases of `NetworkManager.train_child` (see the module docstring)."""
    import keras

    import pnas.footprint
    import pnas.manager

    class BatchTimes(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            self.start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            batches.append(time.perf_counter() - self.start)

    manager = pnas.manager.NetworkManager
    clock.wrap(manager, "build", "build")
    clock.wrap(manager, "compile", "compile")
    clock.wrap(manager, "fit", "fit")
    clock.wrap(pnas.manager, "calibrate_batchnorm", "calibration")
    clock.wrap(pnas.manager, "_save_weights_atomic", "saving")
    clock.wrap(pnas.footprint, "layer_footprint", "footprint")
    clock.wrap(keras.Model, "evaluate", lambda *a: "validation" if "fit" in clock.current else "test")
    fit = keras.Model.fit

    def fit_with_batch_times(self, *args, callbacks=None, **kwargs):
        return fit(self, *args, callbacks=list(callbacks or []) + [BatchTimes()], **kwargs)

    keras.Model.fit = fit_with_batch_times


def _phases(clock, batches, total, n_train):
    """The phase table of one child from its clock and its batch times."""
    s = dict(clock.seconds)
    step = statistics.median(batches[1:-1]) if len(batches) > 2 else batches[0]
    partial = n_train % BATCH
    out = {
        "build": s.get("build", 0.0),
        "compile": s.get("compile", 0.0),
        "trace": batches[0] - step,
        "partial batch": max(0.0, batches[-1] - step * partial / BATCH) if partial else 0.0,
        "calibration": s.get("calibration", 0.0),
        "validation": s.get("validation", 0.0),
        "test": s.get("test", 0.0),
        "footprint": s.get("footprint", 0.0),
        "saving": s.get("saving", 0.0),
    }
    out["epoch"] = sum(batches) - out["trace"] - out["partial batch"]
    out["fit other"] = s["fit"] - sum(batches) - out["calibration"] - out["validation"] - out["saving"]
    out["other"] = total - sum(out.values())
    return out


def _worker(conn, code, started, actions, repeats, folder):
    """A worker as `pnas.worker` starts one; trains `actions` `repeats` times and sends each phase table."""
    sys.path.insert(0, code)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        from binarized.quiet import import_keras_quietly
    except ImportError:  # an older checkout
        import_keras_quietly = None
    if import_keras_quietly:
        import_keras_quietly()
    import keras

    from pnas.manager import NetworkManager
    from pnas.model import model_fn

    manager_kwargs, train_kwargs = _child_settings(folder)
    dataset = conn.recv()
    manager = NetworkManager(dataset, **manager_kwargs)
    start_seconds = time.time() - started
    clock, batches = _Clock(), []
    _instrument(clock, batches)
    for r in range(repeats):
        clock.seconds.clear()
        batches.clear()
        begin = time.perf_counter()
        keras.utils.set_random_seed(r)
        result = manager.train_child(model_fn, **train_kwargs(actions, f"child{r}"))
        table = _phases(clock, batches, time.perf_counter() - begin, len(dataset[0]))
        table["worker start"] = start_seconds if r == 0 else 0.0
        conn.send((table, result["reward"]))
    conn.close()


def _child_settings(folder):
    """train.py's child settings at the proxy budget: `NetworkManager` kwargs, and `train_child` kwargs by actions.

    Older checkouts (`--code`) name the experiment in `manager_kwargs`; both forms are read.
    """
    import dataclasses
    import inspect

    from pnas.config import ChildConfig

    child = dataclasses.replace(ChildConfig(), epochs=1, batchsize=BATCH, verbose=0, evaluate_test=True)
    if "exp_name" in inspect.signature(child.manager_kwargs).parameters:
        manager_kwargs = child.manager_kwargs("cost", folder, folder)
    else:
        manager_kwargs = child.manager_kwargs(folder, folder)
    return manager_kwargs, lambda actions, name: child.train_kwargs(actions, name=name, log_name=name)


def measure(code, actions, repeats, dataset, folder):
    """Phase tables (dicts) and rewards of `repeats` trainings of `actions` in one fresh worker."""
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    started = time.time()
    process = context.Process(target=_worker, args=(theirs, code, started, actions, repeats, folder), daemon=True)
    process.start()
    theirs.close()
    ours.send(dataset)
    tables = [ours.recv() for _ in range(repeats)]
    process.join()
    return tables


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2, help="trainings of each child in its worker (default 2)")
    parser.add_argument("--train-size", type=int, default=5000, help="training images (default 5000, the proxy's)")
    parser.add_argument("--children", default="B=1,B=3", help="comma-separated, of " + ", ".join(CHILDREN))
    parser.add_argument("--code", default=ROOT, help="the checkout the workers import (default: this one)")
    args = parser.parse_args()
    if args.repeats < 1 or args.train_size < 1:
        parser.error("--repeats and --train-size must be positive")
    unknown = [c for c in args.children.split(",") if c not in CHILDREN]
    if unknown:
        parser.error(f"unknown child {unknown}; choose from {', '.join(CHILDREN)}")

    sys.path.insert(0, ROOT)
    from mnist.mnist_data import get_dataset

    dataset = get_dataset(train_size=args.train_size)
    code = os.path.abspath(args.code)
    print(f"code {code}, {os.cpu_count()} CPUs, {args.train_size} images x 1 epoch, batch {BATCH}")
    columns = {}
    for name in args.children.split(","):
        with tempfile.TemporaryDirectory() as folder:
            for r, (table, reward) in enumerate(measure(code, CHILDREN[name], args.repeats, dataset, folder)):
                columns[f"{name} {'first' if r == 0 else f'next{r}'}"] = (table, reward)
    print(f"{'phase (s)':14}" + "".join(f"{c:>12}" for c in columns))
    for phase in PHASES:
        print(f"{phase:14}" + "".join(f"{t[phase]:12.2f}" for t, _ in columns.values()))
    print(f"{'total':14}" + "".join(f"{sum(t.values()):12.2f}" for t, _ in columns.values()))
    print(f"{'reward':14}" + "".join(f"{r:12.4f}" for _, r in columns.values()))


if __name__ == "__main__":
    main()
