"""The Ray runner (pnas/runners.py): the same search as inline, failures, resume after kill -9.

One local Ray (2 CPUs) is shared by every test of this module.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import json  # noqa: E402
import logging  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from pnas.runners import InlineRunner, RayRunner, RunnerUnavailable, check_ray_address  # noqa: E402
from pnas.search import Search, SearchAborted, SearchPaths  # noqa: E402
from conftest import REPO_ROOT, TRAIN, cli_env, synthetic_dataset, tiny_config  # noqa: E402

ray = pytest.importorskip("ray")

# Every test here starts Ray or joins it.
pytestmark = pytest.mark.slow

COMPARED = ("sr_no", "stage", "child", "status", "reward", "best_epoch", "val_accuracy", "test_accuracy", "mul_ops")

# A log line of Ray's C++ core: "[2026-12-02 09:50:26,050 E 11601 11630] task_manager.cc:1545: ..."
RAY_CORE_LINE = re.compile(r"^\[\d{4}-\d\d-\d\d [\d:,]+ [DIWEF] \d+ \d+\] \S+\.cc:\d+: ")


@pytest.fixture(scope="module")
def local_ray():
    """A Ray of 2 CPUs on this machine; yields its address, for other processes to join."""
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def _records(paths):
    with open(paths.records) as f:
        return [json.loads(line) for line in f]


def _search(root, runner, dataset=None, **overrides):
    config = tiny_config(RUNNER=runner, RAY_CPUS_PER_CHILD=2, **overrides)
    paths = SearchPaths("tiny", root=str(root))
    return Search(config, synthetic_dataset() if dataset is None else dataset, paths, plots=False), paths


def test_a_ray_search_gives_the_records_of_an_inline_search(local_ray, tmp_path):
    """B = 2: the same children, in the same order, with the same seeds and numbers."""
    runs = {}
    for runner in ("inline", "ray"):
        search, paths = _search(tmp_path / runner, runner)
        assert isinstance(search.runner, RayRunner if runner == "ray" else InlineRunner)
        search.run()
        runs[runner] = _records(paths)
    inline, on_ray = runs["inline"], runs["ray"]
    assert [r["sr_no"] for r in on_ray] == [1, 2, 3, 4, 5]
    assert [r["stage"] for r in on_ray] == [1, 1, 1, 2, 2]
    assert all(r["status"] == "ok" for r in inline + on_ray)
    for a, b in zip(inline, on_ray):
        for key in COMPARED:
            assert a[key] == pytest.approx(b[key], abs=1e-6), key
    # The Ray runner leaves the local Ray it joined running, for the next search.
    assert ray.is_initialized()


def test_a_ray_task_that_raises_is_recorded_as_failed(local_ray, tmp_path):
    dataset = synthetic_dataset()
    dataset[0] = np.full_like(dataset[0], np.nan)  # every child's loss diverges
    search, paths = _search(tmp_path, "ray", dataset, B=1, MAX_CONSECUTIVE_FAILURES=2)
    with pytest.raises(SearchAborted, match="2 children failed in a row"):
        search.run()
    records = _records(paths)
    assert [(r["sr_no"], r["status"], r["reward"]) for r in records] == [(1, "failed", 0.0), (2, "failed", 0.0)]
    assert all(r["error"].startswith("ChildTrainingError: loss became nan") for r in records)
    assert all("Traceback" in r["traceback"] for r in records)


class _KillsTheWorker:
    """Unpickling it ends the process at once, as a segfault or the OOM killer would."""

    def __reduce__(self):
        return os._exit, (3,)


def test_a_ray_worker_that_dies_fails_its_child_not_the_search(local_ray, tmp_path, caplog, capsys):
    import time

    dataset = synthetic_dataset()
    dataset.append(_KillsTheWorker())  # every task's worker dies as it receives the dataset
    search, paths = _search(tmp_path, "ray", dataset, B=1, MAX_CONSECUTIVE_FAILURES=10, RAY_MAX_RETRIES=1)
    with caplog.at_level(logging.WARNING, logger="pnas.runners"):
        records = search.run()  # no exception: the search goes on past each dead worker
    assert [(r["sr_no"], r["status"]) for r in records] == [(1, "failed"), (2, "failed"), (3, "failed")]
    assert all(r["error"].startswith("WorkerDied: WorkerCrashedError") for r in records)
    # One line of ours per death: past its retries, with its child (Ray's retry messages, each
    # replaced by a warning of ours, come later, from Ray's thread)...
    assert [m for m in caplog.messages if m.startswith("Child #")] == [
        f"Child #{n}: its Ray worker died (WorkerCrashedError)" for n in (1, 2, 3)
    ]
    # ... and none of Ray's: its "(raylet) A worker died ..." lines (6 deaths: 2 tries of 3 children;
    # Ray merges repeated lines, so fewer) come from a thread of its own, after their child may be
    # recorded: wait for the first to have been dropped.
    deadline = time.monotonic() + 120
    while search.runner.stdout.dropped < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert search.runner.stdout.dropped >= 1
    out = capsys.readouterr().out
    assert "(raylet)" not in out and "A worker died" not in out
    assert out.count("FAILED: WorkerDied: WorkerCrashedError") == 3


def test_nothing_listening_at_the_address_is_runner_unavailable(local_ray):
    # Port 9 (discard) on loopback: nothing listens, and ray.init would retry for minutes.
    with pytest.raises(RunnerUnavailable, match=r"RAY_ADDRESS='127.0.0.1:9'.*ray start --head"):
        check_ray_address("127.0.0.1:9")
    with pytest.raises(RunnerUnavailable, match="expected 'auto' or 'host:port'"):
        check_ray_address("somewhere")
    check_ray_address(local_ray)  # a running Ray answers
    check_ray_address("auto")  # left to Ray, which says at once when it finds no cluster


# ------------------------------------------------------------------ resume
TINY = [
    "--operators=['3x3 bconv', '3x3 maxpool']", "--B=1", "--K_=2", "--MAX_EPOCHS=1", "--TRAIN_SIZE=200",
    "--NUM_CELLS=1", "--NUM_CELL_FILTERS=[4]", "--DENSE_LAYERS=[10]", "--RNN_TRAINING_EPOCHS=2", "--VERBOSE=0",
    "--EXPERIMENT_NAME=tiny", "--RUNNER='ray'", "--FINAL_TOP=0",
]


def test_a_ray_search_killed_with_sigkill_resumes_without_retraining(local_ray, mnist_dir, tmp_path):
    """train.py on the shared Ray, killed after 2 children, then rerun to the end."""
    command = [sys.executable, str(TRAIN), *TINY, f"--RAY_ADDRESS={local_ray!r}"]
    records = tmp_path / "architectures" / "tiny.jsonl"
    with open(tmp_path / "first.out", "w") as out:
        proc = subprocess.Popen(command, cwd=tmp_path, env=cli_env(), stdout=out, stderr=subprocess.STDOUT)
        try:
            import time

            deadline = time.monotonic() + 300
            while not (records.exists() and len(records.read_text().splitlines()) >= 2):
                assert proc.poll() is None, (tmp_path / "first.out").read_text()[-3000:]
                assert time.monotonic() < deadline, "no 2 records after 300 s"
                time.sleep(0.05)
        finally:
            proc.kill()
            proc.wait()
    first = [json.loads(line) for line in records.read_text().splitlines()]
    killed_after = len(first)
    result = subprocess.run(command, cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"Resuming: {killed_after} children already trained." in result.stdout
    final = [json.loads(line) for line in records.read_text().splitlines()]
    assert [r["sr_no"] for r in final] == [1, 2, 3]
    assert len({tuple(r["child"]) for r in final}) == 3
    # The records before the kill were kept, not retrained. Side by side, children finish in any
    # order (#3 before #2 on a loaded machine); the stage's end writes them in the beam's.
    kept = {r["sr_no"] for r in first}
    assert [r for r in final if r["sr_no"] in kept] == sorted(first, key=lambda r: r["sr_no"])
    # Only the children after the kill were trained: one progress line each.
    assert result.stdout.count("[b ") == 3 - killed_after
    assert "Traceback" not in result.stdout + result.stderr


# ------------------------------------------------------------------ faults
def _train_tasks():
    """Process ids of the Ray workers running a child now (Ray titles them after the task)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    cmdline = f.read()
            except OSError:
                continue
            if cmdline.startswith(b"ray::_train_on_ray"):
                pids.append(int(entry))
    return pids


class _WorkerKiller:
    """A thread that SIGKILLs the Ray worker of each running child as it starts, `kills` times."""

    def __init__(self, kills):
        import threading

        self.kills, self.killed = kills, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        import signal
        import time

        while not self._stop.is_set() and len(self.killed) < self.kills:
            for pid in _train_tasks():
                if pid not in self.killed and len(self.killed) < self.kills:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        continue
                    self.killed.append(pid)
            time.sleep(0.01)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


@pytest.mark.slow
@pytest.mark.parametrize("retries", [1, 0])
def test_a_killed_ray_worker_is_retried_then_its_child_failed_and_the_search_goes_on(local_ray, tmp_path, retries):
    """The first child's worker is killed at every attempt (1 + RAY_MAX_RETRIES); the others train."""
    search, paths = _search(tmp_path, "ray", B=1, RAY_MAX_RETRIES=retries, MAX_CONSECUTIVE_FAILURES=2)
    with _WorkerKiller(kills=1 + retries) as killer:
        records = search.run()
    assert len(set(killer.killed)) == 1 + retries  # one worker per attempt, each killed as it ran the child
    assert [(r["sr_no"], r["status"]) for r in records] == [(1, "failed"), (2, "ok"), (3, "ok")]
    assert records[0]["error"].startswith("WorkerDied: ")
    assert _records(paths) == records


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pids_with(text):
    """Process ids whose command line holds `text` (here: the temporary folder of a Ray head we started)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if text.encode() in f.read():
                        pids.append(int(entry))
            except OSError:
                continue
    return pids


@pytest.mark.slow
def test_a_lost_ray_head_stops_the_search_with_one_line_and_processes_resume_it(tmp_path):
    """A head of its own (`ray start --head`), stopped by SIGKILL after the first record."""
    import signal
    import tempfile
    import time

    from mnist.download_mnist import MnistUnavailableError, ensure_mnist

    try:
        ensure_mnist(REPO_ROOT / "data" / "mnist")
    except MnistUnavailableError as exc:
        pytest.skip(f"MNIST is not available: {exc}")
    # Short: Ray's socket paths under it must stay within the 107 characters of a Unix socket.
    ray_dir = tempfile.mkdtemp(prefix="pnas_head_")
    port = _free_port()
    env = dict(cli_env(), RAY_AUTH_MODE="disabled")
    started = subprocess.run(
        [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", f"--port={port}", "--num-cpus=2",
         "--include-dashboard=false", f"--temp-dir={ray_dir}", "--disable-usage-stats"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    try:
        assert started.returncode == 0, started.stdout[-2000:] + started.stderr[-2000:]
        args = [*TINY, "--RAY_CPUS_PER_CHILD=2"]  # B = 1: 3 children
        command = [sys.executable, str(REPO_ROOT / "train.py"), *args, f"--RAY_ADDRESS='127.0.0.1:{port}'"]
        records = tmp_path / "architectures" / "tiny.jsonl"
        proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        deadline = time.monotonic() + 900  # generous: a shared 2-core machine can be slow
        while not (records.exists() and records.read_text().strip()):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no record after 900 s"
            time.sleep(0.05)
        for pid in _pids_with(ray_dir):  # the head: its GCS, raylet and workers
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        out, err = proc.communicate(timeout=120)
    finally:
        for pid in _pids_with(ray_dir):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert proc.returncode == 1, out[-2000:] + err[-2000:]
    # Ray's core, in the search's process, may log a line of its own from its threads as the head
    # goes (e.g. "[date E pid tid] task_manager.cc:1545: Failed to push error to driver ..."):
    # Ray's, not the search's; the search's own stderr is the one line.
    lines = [line for line in err.strip().splitlines() if not RAY_CORE_LINE.match(line)]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: lost the Ray cluster: its head at ") and f":{port} stopped answering" in lines[0]
    assert "--RUNNER='processes'" in lines[0]
    kept = [json.loads(line) for line in records.read_text().splitlines()]
    assert kept and all(r["status"] == "ok" for r in kept)  # no child failed for the lost head
    # On this machine's worker processes, the search goes on from the records.
    on_this_machine = [a for a in args if not a.startswith("--RUNNER=")]  # a name given twice is refused
    resumed = subprocess.run([sys.executable, str(REPO_ROOT / "train.py"), *on_this_machine, "--RUNNER='processes'"],
                             cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=1200)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"Resuming: {len(kept)} children already trained." in resumed.stdout
    assert resumed.stdout.count("[b ") == 3 - len(kept)  # no finished child trained again
    final = [json.loads(line) for line in records.read_text().splitlines()]
    assert [r["sr_no"] for r in final] == [1, 2, 3]
    assert final[:len(kept)] == kept
