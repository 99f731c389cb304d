"""Child training speed of this checkout against another, run alternately.

It runs `bench/child_throughput.py` of another checkout (for example an
older commit in a git worktree: `git worktree add ../base bb7f56f`) and of
this one, one after the other, `--rounds` times, each as a fresh process
with the same arguments, and prints the median images/s of each and their
ratio. Alternating spreads the machine's slow and fast moments over both.

    python bench/ab_throughput.py --base ../base [--rounds 3] [--train-size 10000]

Each checkout runs with its own defaults, environment variables included.
"""

import argparse
import os
import re
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROW = re.compile(r"^(B=\d)\s+(\d+)\s+(\d+)\s+([\d.]+)\s*$")


def run(checkout, train_size, epochs):
    """`{child: (binary img/s, float img/s)}` of one run of the checkout's throughput bench."""
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    script = os.path.join(checkout, "bench", "child_throughput.py")
    out = subprocess.run([sys.executable, script, "--train-size", str(train_size), "--epochs", str(epochs)],
                         capture_output=True, text=True, env=env, cwd=checkout)
    if out.returncode:
        sys.exit(f"error: {script} failed:\n{out.stderr[-2000:]}")
    rows = {}
    for line in out.stdout.splitlines():
        match = ROW.match(line)
        if match:
            rows[match[1]] = (float(match[2]), float(match[3]))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the other checkout (its bench/child_throughput.py runs)")
    parser.add_argument("--rounds", type=int, default=3, help="alternations (default 3)")
    parser.add_argument("--train-size", type=int, default=10000, help="images per timed epoch (default 10000)")
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    if not os.path.isfile(os.path.join(args.base, "bench", "child_throughput.py")):
        parser.error(f"--base {args.base} has no bench/child_throughput.py")
    results = {"base": [], "this": []}
    for r in range(args.rounds):
        for name, checkout in (("base", args.base), ("this", ROOT)):
            results[name].append(run(checkout, args.train_size, args.epochs))
            rows = "  ".join(f"{c} {b:.0f}/{f:.0f}" for c, (b, f) in results[name][-1].items())
            print(f"round {r + 1} {name:4}  binary/float img/s: {rows}", flush=True)
    print(f"{'child':6} {'base binary':>11} {'this binary':>11} {'speed-up':>8} {'base float':>10} "
          f"{'this float':>10} {'this bin/float':>14}")
    for child in results["this"][0]:
        median = {name: [statistics.median(run[child][i] for run in runs) for i in (0, 1)]
                  for name, runs in results.items()}
        (bb, bf), (tb, tf) = median["base"], median["this"]
        print(f"{child:6} {bb:11.0f} {tb:11.0f} {tb / bb:7.2f}x {bf:10.0f} {tf:10.0f} {tb / tf:14.2f}")


if __name__ == "__main__":
    main()
