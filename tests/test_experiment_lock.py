"""One search per experiment (pnas/lock.py, train.py): a second one is refused, a killed one leaves no lock."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import json  # noqa: E402
import pathlib  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import pytest  # noqa: E402

from pnas.lock import ExperimentInUse, FolderLock  # noqa: E402
from conftest import cli_env  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
TRAIN = REPO_ROOT / "train.py"
TINY = [
    "--operators=['3x3 bconv', '3x3 maxpool']", "--B=2", "--K_=2", "--MAX_EPOCHS=1", "--TRAIN_SIZE=200",
    "--NUM_CELLS=1", "--NUM_CELL_FILTERS=[4]", "--DENSE_LAYERS=[10]", "--RNN_TRAINING_EPOCHS=2", "--VERBOSE=0",
    "--EXPERIMENT_NAME=tiny", "--FINAL_TOP=0",
]
# Holds a FolderLock until killed; prints its pid once it holds it.
HOLDER = (
    "import os, sys, time\n"
    "from pnas.lock import FolderLock\n"
    "lock = FolderLock(sys.argv[1]).acquire()\n"
    "print(os.getpid(), flush=True)\n"
    "time.sleep(600)\n"
)




def _snapshot(folder):
    """Every file under `folder` with its bytes and modification time."""
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(pathlib.Path(folder).rglob("*")) if p.is_file()
    }


def _hold(folder, cwd):
    """A process holding the lock of `folder`; returns it once it holds the lock."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], cwd=cwd, env=cli_env(),
                            stdout=subprocess.PIPE, text=True)
    assert int(proc.stdout.readline()) == proc.pid
    return proc


def test_a_second_lock_is_refused_with_pid_and_host_until_the_first_is_released(tmp_path):
    first = FolderLock(tmp_path / "logs" / "x", "the experiment 'x'").acquire()
    second = FolderLock(tmp_path / "logs" / "x", "the experiment 'x'")
    assert second.held_by_other() == (str(os.getpid()), socket.gethostname())
    with pytest.raises(ExperimentInUse) as refused:
        second.acquire()
    assert str(refused.value).startswith(
        f"the experiment 'x' is in use by process {os.getpid()} on host {socket.gethostname()}"
    )
    first.release()
    assert second.held_by_other() is None
    with second:
        assert (tmp_path / "logs" / "x" / ".lock").read_text() == f"{os.getpid()} {socket.gethostname()}\n"


def test_the_probe_creates_nothing(tmp_path):
    assert FolderLock(tmp_path / "logs" / "x").held_by_other() is None
    assert list(tmp_path.iterdir()) == []


def test_a_lock_is_released_when_its_process_is_killed(tmp_path):
    holder = _hold(tmp_path / "logs" / "x", tmp_path)
    lock = FolderLock(tmp_path / "logs" / "x")
    try:
        assert lock.held_by_other() == (str(holder.pid), socket.gethostname())
        with pytest.raises(ExperimentInUse):
            lock.acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert lock.held_by_other() is None
    lock.acquire()  # the kernel dropped the dead process's lock: no stale lock is left
    lock.release()


@pytest.mark.slow
@pytest.mark.parametrize("ta, folder", [([], "logs/tiny"), (["-ta", "True"], "weights/tiny")])
def test_train_py_is_refused_while_another_process_holds_the_lock(tmp_path, ta, folder):
    holder = _hold(tmp_path / folder, tmp_path)
    try:
        before = _snapshot(tmp_path)
        start = time.monotonic()
        result = subprocess.run([sys.executable, str(TRAIN), *TINY, *ta], cwd=tmp_path, env=cli_env(),
                                capture_output=True, text=True, timeout=120)
        seconds = time.monotonic() - start
        assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert f"is in use by process {holder.pid} on host {socket.gethostname()}" in lines[0]
        assert lines[0].startswith("error: ")
        # Refused before the settings are even printed (and Keras imported): nothing written.
        assert result.stdout == ""
        assert _snapshot(tmp_path) == before
        print(f"refused in {seconds:.2f} s")
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.slow
def test_two_searches_of_one_name_the_second_refused_the_first_unharmed(tmp_path):
    records = tmp_path / "architectures" / "tiny.jsonl"
    with open(tmp_path / "first.out", "w") as out:
        first = subprocess.Popen([sys.executable, str(TRAIN), *TINY], cwd=tmp_path, env=cli_env(), stdout=out,
                                 stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 900  # generous: a shared 2-core machine can be slow
            while not (records.exists() and records.read_text().strip()):
                assert first.poll() is None, (tmp_path / "first.out").read_text()[-3000:]
                assert time.monotonic() < deadline, "the first search recorded no child in 900 s"
                time.sleep(0.05)
            second = subprocess.run([sys.executable, str(TRAIN), *TINY], cwd=tmp_path, env=cli_env(),
                                    capture_output=True, text=True, timeout=120)
            assert first.poll() is None, "the first search ended before the second started"
            assert first.wait(timeout=600) == 0, (tmp_path / "first.out").read_text()[-3000:]
        finally:
            first.kill()
            first.wait()
    assert second.returncode == 2
    assert second.stdout == ""
    [line] = second.stderr.strip().splitlines()
    assert f"the experiment 'tiny' is in use by process {first.pid} on host {socket.gethostname()}" in line
    final = [json.loads(line) for line in records.read_text().splitlines()]
    assert [r["sr_no"] for r in final] == [1, 2, 3, 4, 5]
    assert all(r["status"] == "ok" for r in final)
    assert "Search finished: 5 children" in (tmp_path / "first.out").read_text()
