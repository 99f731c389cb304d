"""The README's quick start, timed: this checkout against others, alternated.

Each run is the quick-start command of the README (its settings below, and
any `--setting=value` given after `--`), started from an empty folder that
holds links to the checkout's package, so that nothing is cached between
runs (the MNIST files come from `$MNIST_DATA_DIR`); a setting that an older checkout's
train.py lacks (e.g. `--FINAL_TOP` before the final stage) is left out for it, and the script
says so. Runs alternate between
the checkouts, `--repeats` rounds, and the script prints each run's wall
time and the best reward its summary names, then each checkout's median:

    python bench/quick_start.py [--code ../base] [--repeats 2] [-- --FINAL_TOP=0]

The machines are noisy: compare checkouts only within one run of this script.
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK_START = ["--EXPERIMENT_NAME=quickstart", "--K_=8", "--MAX_EPOCHS=1", "--TRAIN_SIZE=5000", "--PARALLEL_CHILDREN=2"]
PACKAGE = ["binarized", "mnist", "pnas", "train.py"]


def known(code, settings):
    """The `--NAME=value` settings that the train.py of checkout `code` defines (an older one may lack some)."""
    with open(os.path.join(code, "train.py")) as f:
        source = f.read()
    return [s for s in settings if re.search(rf"^{re.escape(s.lstrip('-').split('=')[0])}\s*=", source, re.M)]


def run_once(code, settings):
    """Runs the quick start of checkout `code` in a fresh folder; returns (seconds, best reward)."""
    with tempfile.TemporaryDirectory(prefix="quick_start_") as folder:
        for name in PACKAGE:
            os.symlink(os.path.join(code, name), os.path.join(folder, name))
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
        start = time.perf_counter()
        result = subprocess.run([sys.executable, "train.py", *QUICK_START, *settings], cwd=folder, env=env,
                                capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if result.returncode != 0:
            sys.exit(f"error: the quick start of {code} failed (exit code {result.returncode}):\n"
                     + result.stdout[-2000:] + result.stderr[-2000:])
        summary = os.path.join(folder, "logs", "quickstart", "summary.txt")
        best = None
        if os.path.exists(summary):
            with open(summary) as f:
                rows = re.findall(r"^\s+\d+\s+(0\.\d{4})\s", f.read(), re.MULTILINE)
            best = rows[0] if rows else None
    return seconds, best


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--code", action="append", default=[],
                        help="another checkout to time (e.g. a git worktree of an older commit); repeatable")
    parser.add_argument("--repeats", type=int, default=2, help="rounds of alternation (default 2)")
    args, settings = parser.parse_known_args(argv)
    settings = [s for s in settings if s != "--"]
    codes = [ROOT] + [os.path.abspath(c) for c in args.code]
    for code in codes:
        if not os.path.exists(os.path.join(code, "train.py")):
            parser.error(f"--code {code}: no train.py there; give the root of a checkout of this package")
    times = {code: [] for code in codes}
    print(f"command: python train.py {' '.join(QUICK_START + settings)}")
    for code in codes:
        left = [s for s in settings if s not in known(code, settings)]
        if left:
            print(f"  {code} has no {', '.join(left)}: it runs without")
    print(f"{'checkout':<40} {'round':>5} {'seconds':>8} {'best reward':>12}")
    for round_ in range(1, args.repeats + 1):
        for code in codes if round_ % 2 else codes[::-1]:
            seconds, best = run_once(code, known(code, settings))
            times[code].append(seconds)
            print(f"{code:<40} {round_:>5} {seconds:>8.1f} {best or '-':>12}", flush=True)
    print("medians:")
    for code in codes:
        median = statistics.median(times[code])
        print(f"  {code:<40} {median:>8.1f} s  ({int(median // 60)} min {median % 60:.0f} s)")
    if len(codes) > 1:
        for code in codes[1:]:
            print(f"  {code} / this checkout: {statistics.median(times[code]) / statistics.median(times[ROOT]):.2f}x")


if __name__ == "__main__":
    main()
