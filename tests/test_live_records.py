"""Side by side, every finished child is recorded at once: a SIGKILL loses only the children in training.

The measure of issue 36: a search with two workers is killed (SIGKILL to its
whole process group) once 5 two-block children have printed their epoch line.
By then at least 3 of their reward lines were printed; the rerun trains at most
the other 2 of them again; and the finished records list the architectures of
a straight run, in its order.
"""

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from conftest import TRAIN, assert_ok, cli_env, read_jsonl, run_train

pytestmark = pytest.mark.slow  # three train.py searches of 12 children

ARGS = [
    "--B=2", "--K_=6", "--operators=['3x3 bconv', '3x3 maxpool', '3x3 avgpool']", "--PARALLEL_CHILDREN=2",
    "--TRAIN_SIZE=1000", "--MAX_EPOCHS=1", "--VERBOSE=2", "--TEST_CHILDREN=False", "--NUM_CELLS=1",
    "--NUM_CELL_FILTERS=[8]", "--DENSE_LAYERS=[10]", "--SURROGATE=ridge", "--EXPERIMENT_NAME=live",
    "--FINAL_TOP=0",  # the final stage is tested in test_final_stage.py and test_train_cli.py
]
STAGE_2 = "---- B= 2: 6 children ----"


def _numbers(kind, text):
    """The child numbers of the `  #N epoch` or `  #N reward` lines of stage 2 in `text`, in order."""
    stage_2 = text.split(STAGE_2, 1)[1] if STAGE_2 in text else ""
    return [int(n) for n in re.findall(rf"^  #(\d+) {kind} ", stage_2, flags=re.M)]


def _started(text):
    """The child numbers of the progress lines (one per child started) of stage 2."""
    return [int(n) for n in re.findall(r"^\[b 2/2 \| child \d+/\d+ \| #(\d+) of", text, flags=re.M)]


def test_a_side_by_side_search_killed_mid_stage_keeps_every_finished_child(mnist_dir, tmp_path):
    (tmp_path / "straight").mkdir()
    straight = assert_ok(run_train(tmp_path / "straight", *ARGS))
    assert len(_numbers("reward", straight.stdout)) == 6

    cut = tmp_path / "cut"
    cut.mkdir()
    out_path = cut / "first.out"
    with open(out_path, "w") as out:
        proc = subprocess.Popen([sys.executable, str(TRAIN), *ARGS], cwd=cut, env=cli_env(), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 600
            while len(_numbers("epoch", out_path.read_text())) < 5:
                assert proc.poll() is None, out_path.read_text()[-3000:]
                assert time.monotonic() < deadline, "no 5 two-block epoch lines after 600 s"
                time.sleep(0.02)
            os.killpg(proc.pid, signal.SIGKILL)  # the search and its two workers at once
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    first = out_path.read_text()
    epochs = set(_numbers("epoch", first))
    rewards = set(_numbers("reward", first))
    assert len(epochs) >= 5 and len(rewards & epochs) >= 3, first[-3000:]
    recorded = {r["sr_no"] for r in read_jsonl(cut / "architectures" / "live.jsonl")}
    assert rewards <= recorded  # a reward line is printed once its child is recorded

    rerun = assert_ok(run_train(cut, *ARGS))
    retrained = set(_started(rerun.stdout))
    assert not retrained & recorded  # no recorded child trains again
    assert len(retrained & epochs) <= 2, (sorted(epochs), sorted(rewards), sorted(retrained))
    assert f"Resuming: {len(recorded)} children already trained." in rerun.stdout

    final = read_jsonl(cut / "architectures" / "live.jsonl")
    whole = read_jsonl(tmp_path / "straight" / "architectures" / "live.jsonl")
    assert [(r["sr_no"], r["architecture"]) for r in final] == [(r["sr_no"], r["architecture"]) for r in whole]
    assert [r["sr_no"] for r in final] == list(range(1, 13))
