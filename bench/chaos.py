"""Chaos run: a small search killed with SIGKILL again and again gives the search run straight through.

It runs a small `train.py` search (B=2, 2 operators, K_=2, a few hundred
images, one epoch, the ridge surrogate) once straight through. Then it runs
the same search in another folder, killing it with SIGKILL at N seeded
random moments and resuming after each, until it ends. Half the kills (by
the seed's draw) land inside a write: the chaos runs slow every write down
(`pnas.files.WRITE_DELAY_ENV`) and are killed while a temporary file exists;
the others land a random time after a write, in training or between a
child's end and its record. It compares the two searches: the same
children, in the same order, with the same statuses and the same rewards
(SEED on a CPU), and a byte-identical architectures log. It prints the kills
one per line, then exactly:

    chaos kills=N children=M identical=True

(kills is the number made: fewer than N only if the search ended first.)

    python bench/chaos.py [--kills 10] [--seed 0] [--train-size 300] [--write-delay 0.3]
"""

import argparse
import json
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from pnas.files import WRITE_DELAY_ENV  # noqa: E402

NAME = "chaos"
# What must be equal in the two searches' records (not the seconds each child took).
COMPARED = ("sr_no", "stage", "child", "status", "reward", "best_epoch", "val_accuracy", "test_accuracy", "mul_ops")


def settings(train_size):
    return [
        "--operators=['3x3 bconv', '3x3 maxpool']", "--B=2", "--K_=2", "--MAX_EPOCHS=1",
        f"--TRAIN_SIZE={train_size}", "--NUM_CELLS=1", "--NUM_CELL_FILTERS=[4]", "--DENSE_LAYERS=[10]",
        "--SURROGATE='ridge'", "--VERBOSE=0", "--RUNNER='inline'", f"--EXPERIMENT_NAME={NAME}", "--FINAL_TOP=0",
    ]


def environment(write_delay=None):
    env = dict(os.environ)
    env.update(MNIST_DATA_DIR=os.environ.get("MNIST_DATA_DIR", str(REPO_ROOT / "data" / "mnist")),
               PYTHONPATH=str(REPO_ROOT), TF_CPP_MIN_LOG_LEVEL="3")
    env.pop(WRITE_DELAY_ENV, None)
    if write_delay:
        env[WRITE_DELAY_ENV] = str(write_delay)
    return env


def start(folder, args, env):
    out = open(folder / "runs.out", "a")
    return subprocess.Popen([sys.executable, str(REPO_ROOT / "train.py"), *args], cwd=folder, env=env,
                            stdout=out, stderr=subprocess.STDOUT), out


def temporaries(folder):
    """The temporary files of writes in progress (pnas.files.atomic_path names them `*.tmp{pid}*`)."""
    return {p for p in folder.rglob("*.tmp*") if p.name != "runs.out"}


def kill_at(proc, folder, writes, inside, extra_s):
    """Kills `proc` at its `writes`-th write: inside it, or `extra_s` after it ended.

    Returns:
        What the kill interrupted (a line), or None when the search ended first.
    """
    seen, stale = 0, temporaries(folder)  # earlier kills' leftovers are not this run's writes
    current = None
    while proc.poll() is None:
        now = temporaries(folder) - stale
        if now and current is None:
            current = now.pop()
            seen += 1
            if inside and seen == writes:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return f"inside the write of {current.name.split('.tmp')[0]}"
        elif current is not None and not current.exists():
            current = None
            if not inside and seen == writes:
                deadline = time.monotonic() + extra_s
                while proc.poll() is None and time.monotonic() < deadline:
                    time.sleep(0.01)
                if proc.poll() is not None:
                    return None
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return f"{extra_s:.2f} s after write {writes}"
        time.sleep(0.01)
    return None


def records(folder):
    path = folder / "architectures" / f"{NAME}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def compare(reference, chaos):
    """The differences between the two searches (an empty list when identical)."""
    diffs = []
    ref, got = records(reference), records(chaos)
    if len(ref) != len(got):
        diffs.append(f"{len(ref)} children straight through, {len(got)} with kills")
    for a, b in zip(ref, got):
        for key in COMPARED:
            if a.get(key) != b.get(key):
                diffs.append(f"child #{a.get('sr_no')}: {key} {a.get(key)!r} != {b.get(key)!r}")
    log = f"architectures/{NAME}.txt"
    if (reference / log).read_bytes() != (chaos / log).read_bytes():
        diffs.append(f"{log} differs")
    return diffs


def run(kills, seed, train_size, write_delay, root):
    args = settings(train_size)
    reference, chaos = root / "straight", root / "killed"
    reference.mkdir()
    chaos.mkdir()
    proc, out = start(reference, args, environment())
    code = proc.wait()
    out.close()
    if code != 0:
        raise SystemExit(f"error: the straight run failed (exit {code}); see {reference / 'runs.out'}")
    rng = np.random.default_rng(seed)
    made = 0
    while made < kills:
        inside = bool(rng.integers(0, 2))
        writes = int(rng.integers(1, 5))
        extra_s = float(rng.uniform(0, 2))
        proc, out = start(chaos, args, environment(write_delay))
        what = kill_at(proc, chaos, writes, inside, extra_s)
        out.close()
        if what is None:
            if proc.wait() != 0:
                raise SystemExit(f"error: a resumed run failed (exit {proc.returncode}); see {chaos / 'runs.out'}")
            break
        made += 1
        print(f"kill {made}: {what}", flush=True)
    else:
        proc, out = start(chaos, args, environment(write_delay))
        code = proc.wait()
        out.close()
        if code != 0:
            raise SystemExit(f"error: the last resumed run failed (exit {code}); see {chaos / 'runs.out'}")
    diffs = compare(reference, chaos)
    for line in diffs:
        print(f"  {line}")
    return made, len(records(chaos)), not diffs


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=10, help="SIGKILLs of the second run (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    parser.add_argument("--train-size", type=int, default=300, help="MNIST training images of the search")
    parser.add_argument("--write-delay", type=float, default=0.3, help="seconds each write of the killed runs takes")
    parser.add_argument("--keep", help="run in this (new) folder and keep it, instead of a temporary one")
    args = parser.parse_args(argv)
    if args.keep:
        root = pathlib.Path(args.keep)
        root.mkdir(parents=True)
        made, children, identical = run(args.kills, args.seed, args.train_size, args.write_delay, root)
    else:
        with tempfile.TemporaryDirectory(prefix="chaos_") as tmp:
            made, children, identical = run(args.kills, args.seed, args.train_size, args.write_delay,
                                            pathlib.Path(tmp))
    print(f"chaos kills={made} children={children} identical={identical}")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
