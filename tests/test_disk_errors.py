"""A full disk or an I/O error (pnas/files.py): the file keeps its previous content, the search stops, a rerun resumes.

The failure is simulated by patching the write: `os.fsync` of the temporary
file (every state, log and JSON write ends in it), or Keras's `save_weights`.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import errno  # noqa: E402
import json  # noqa: E402
import pathlib  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402

from pnas.files import WriteFailed, atomic_path, write_atomic  # noqa: E402
from pnas.search import SearchPaths  # noqa: E402
from conftest import cli_env, fake_result as _fake_result, flow_config, search_with, synthetic_dataset, tiny_config  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _full_disk(monkeypatch, code):
    """Makes every `os.fsync` fail with `code`."""

    def fsync(fd):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "fsync", fsync)


@pytest.mark.parametrize("code, name", [(errno.ENOSPC, "ENOSPC"), (errno.EIO, "EIO")])
def test_a_failed_write_leaves_the_previous_file_and_names_the_file_and_cause(tmp_path, monkeypatch, code, name):
    path = tmp_path / "state.json"
    write_atomic(path, "previous")
    _full_disk(monkeypatch, code)
    with pytest.raises(WriteFailed) as failed:
        write_atomic(path, "new")
    assert str(failed.value) == f"cannot write {path}: {os.strerror(code)} ({name})"
    assert failed.value.errno == code and failed.value.filename == str(path)
    assert path.read_text() == "previous"
    assert sorted(os.listdir(tmp_path)) == ["state.json"]  # no temporary file left


def test_other_os_errors_are_not_disk_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        with atomic_path(tmp_path / "x"):
            open(os.path.join(tmp_path, "missing", "y")).close()
    with pytest.raises(OSError) as other:
        with atomic_path(tmp_path / "x"):
            raise OSError(errno.EACCES, "Permission denied")
    assert not isinstance(other.value, WriteFailed)




def _files(root, temporary=False):
    """Every file under `root` with its bytes; the temporary files of writes in progress only if `temporary`.

    The LSTM encoder's TensorBoard summaries are left out: TensorBoard appends to them from its
    own thread, names them by time and process, and the search never reads them back. So is the
    search state's `worker_time`, wall-clock seconds that differ from run to run.
    """
    return {str(p.relative_to(root)): _without_worker_time(p) for p in sorted(pathlib.Path(root).rglob("*"))
            if p.is_file() and (temporary or ".tmp" not in p.name) and not p.name.startswith("events.out.tfevents.")}


def _without_worker_time(path):
    if path.name != "search_state.json":
        return path.read_bytes()
    state = json.loads(path.read_bytes())
    state.pop("worker_time", None)
    return json.dumps(state).encode()


def _search(root, trained, config=None):
    def run_child(search, child, sr_no):
        trained.append(sr_no)
        return _fake_result(child)

    return search_with(run_child, config or flow_config(), synthetic_dataset(), SearchPaths("tiny", root=str(root)),
                       plots=False)


def _written_paths(monkeypatch, config, root):
    """Runs a whole (simulated) search that fails no write; returns the file of every `os.fsync`, in order.

    Each is the file the write lands on, without its temporary name's `.tmp<pid>`.
    """
    paths = []
    real = os.fsync

    def fsync(fd):
        paths.append(re.sub(r"\.tmp\d+", "", os.readlink(f"/proc/self/fd/{fd}"), count=1))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    _search(root, [], config).run()
    monkeypatch.setattr(os, "fsync", real)
    return paths


def _fail_then_resume(monkeypatch, config, root, fail_at, reference):
    """The `fail_at`-th write (1-based) fails with ENOSPC; then, with space freed, a rerun finishes the search."""
    trained = []
    snapshots = []
    real = os.fsync

    def fsync(fd):
        snapshots.append(_files(root))  # the files as they are before this write lands
        if len(snapshots) == fail_at:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(WriteFailed, match=r"cannot write .*: No space left on device \(ENOSPC\)"):
        _search(root, trained, config).run()
    # Every file, the one that failed included, is as it was before the failed write.
    assert _files(root, temporary=True) == snapshots[-1], fail_at
    monkeypatch.setattr(os, "fsync", real)  # space freed
    _search(root, trained, config).run()
    assert _files(root) == reference, fail_at
    # At most the child whose record was being written trains again.
    assert len(trained) - len(set(trained)) <= 1, (fail_at, trained)
    assert set(trained) == {1, 2, 3, 4, 5}, (fail_at, trained)


@pytest.mark.slow  # a whole (simulated) search per write: about 20 s with the ridge
def test_a_full_disk_at_any_write_stops_the_search_and_a_rerun_resumes(tmp_path, monkeypatch):
    """Every write of a whole (simulated) search fails once in turn: nothing is lost, nothing trained twice."""
    config = flow_config()
    written = _written_paths(monkeypatch, config, tmp_path / "reference")
    reference = _files(tmp_path / "reference")
    assert len(written) > 10 and any(p.endswith(".ridge.json") for p in written)
    for fail_at in range(1, len(written) + 1):
        _fail_then_resume(monkeypatch, config, tmp_path / f"fail{fail_at}", fail_at, reference)


@pytest.mark.slow  # an LSTM's searches: about 30 s
def test_a_full_disk_at_the_lstm_encoders_own_writes_stops_the_search_and_a_rerun_resumes(tmp_path, monkeypatch):
    """The test above ranks by the ridge; the LSTM writes other files (Keras weights, reward units): each fails once."""
    import keras

    real_save = keras.Model.save_weights

    def save_weights(self, filepath, *args, **kwargs):  # Keras does not fsync: its write ends in one here
        real_save(self, filepath, *args, **kwargs)
        with open(filepath, "rb") as f:
            os.fsync(f.fileno())

    monkeypatch.setattr(keras.Model, "save_weights", save_weights)
    config = tiny_config(SURROGATE="lstm")
    written = _written_paths(monkeypatch, config, tmp_path / "reference")
    reference = _files(tmp_path / "reference")
    # The first and the last save of the encoder's weights and of its reward units (1-based write numbers).
    fail_ats = set()
    for end in (".weights.h5", ".units.json"):
        saves = [i + 1 for i, p in enumerate(written) if "encoder" in p and p.endswith(end)]
        fail_ats |= {saves[0], saves[-1]} if saves else set()
    assert len(fail_ats) == 4, written
    for fail_at in sorted(fail_ats):
        _fail_then_resume(monkeypatch, config, tmp_path / f"fail{fail_at}", fail_at, reference)


# --------------------------------------------------------------- train.py
TINY = [
    "--operators=['3x3 bconv', '3x3 maxpool']", "--B=2", "--K_=2", "--MAX_EPOCHS=1", "--TRAIN_SIZE=200",
    "--NUM_CELLS=1", "--NUM_CELL_FILTERS=[4]", "--DENSE_LAYERS=[10]", "--RNN_TRAINING_EPOCHS=2", "--VERBOSE=0",
    "--EXPERIMENT_NAME=tiny", "--RUNNER='inline'", "--FINAL_TOP=0",
]
# train.py's main() with Keras's save_weights failing from its `fail_at`-th call on (the disk stays full).
FULL_DISK_RUN = """
import errno, os, sys
from pnas.worker import import_keras_quietly
import_keras_quietly()  # as train.py does: TensorFlow's start-up lines stay off stderr
import keras, train
real, calls = keras.Model.save_weights, [0]
def save_weights(self, *args, **kwargs):
    calls[0] += 1
    if calls[0] >= int(sys.argv[1]):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return real(self, *args, **kwargs)
keras.Model.save_weights = save_weights
train.main(sys.argv[2:])
"""




def _records(root):
    return [json.loads(line) for line in (root / "architectures" / "tiny.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_train_py_stops_on_a_full_disk_with_one_line_and_exit_1_then_resumes(tmp_path):
    """The third child's weights cannot be written: exit 1, the two children before are kept."""
    run = [sys.executable, "-c", FULL_DISK_RUN, "3", *TINY]
    full = subprocess.run(run, cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=600)
    assert full.returncode == 1, full.stdout[-3000:] + full.stderr[-3000:]
    lines = full.stderr.strip().splitlines()
    assert len(lines) == 1, full.stderr
    line = lines[0]
    weights = os.path.join("weights", "tiny", "child.weights.h5")
    assert re.fullmatch(
        rf"error: cannot write (\./)?{re.escape(weights)}: No space left on device \(ENOSPC\); "
        "free space or fix the disk, then rerun the same command to resume", line), line
    kept = _records(tmp_path)
    assert [(r["sr_no"], r["status"]) for r in kept] == [(1, "ok"), (2, "ok")]
    assert (tmp_path / weights).exists()  # the second child's weights, untouched
    resumed = subprocess.run([sys.executable, str(REPO_ROOT / "train.py"), *TINY], cwd=tmp_path, env=cli_env(),
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "Resuming: 2 children already trained." in resumed.stdout
    final = _records(tmp_path)
    assert [(r["sr_no"], r["status"]) for r in final] == [(i, "ok") for i in range(1, 6)]
    assert final[:2] == kept


# Worker processes and Ray tasks write the children's weights in processes of their own, which a
# monkeypatch here does not reach: tests/full_disk_hook/sitecustomize.py fills the disk there.
FULL_DISK_HOOK = REPO_ROOT / "tests" / "full_disk_hook"


@pytest.mark.slow
@pytest.mark.parametrize("runner", ["processes", "ray"])
def test_a_full_disk_in_a_worker_or_a_ray_task_stops_the_search_with_one_line_then_resumes(tmp_path, runner):
    """The third child's weights cannot be written where it trains: exit 1 naming the file, and a rerun resumes."""
    args = [*(a for a in TINY if not a.startswith("--RUNNER=")), f"--RUNNER={runner!r}", "--CHILDREN_PER_PROCESS=10", "--RAY_MAX_RETRIES=1"]
    env = cli_env(PYTHONPATH=f"{REPO_ROOT}{os.pathsep}{FULL_DISK_HOOK}",
                  PNAS_TEST_FULL_DISK_COUNTER=str(tmp_path / "writes"), PNAS_TEST_FULL_DISK_AT="3",
                  RAY_AUTH_MODE="disabled")
    full = subprocess.run([sys.executable, str(REPO_ROOT / "train.py"), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert full.returncode == 1, full.stdout[-3000:] + full.stderr[-3000:]
    assert (tmp_path / "writes").read_text() == "xxx"  # the hook ran where the children trained, once a child
    lines = [line for line in full.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, full.stderr
    # A worker writes under the experiment's weights; a Ray task in a scratch folder on its node.
    assert re.fullmatch(
        r"error: cannot write \S*child\d*\.weights\.h5: No space left on device \(ENOSPC\); "
        "free space or fix the disk, then rerun the same command to resume", lines[0]), lines[0]
    kept = _records(tmp_path)
    # The children whose weights were written and whose outcome had come back, and no child failed
    # for the disk. (On Ray two train side by side: which of the first three finished first varies,
    # and the other, its weights written, may still be in flight when the full disk stops the search.)
    assert 1 <= len(kept) <= 2 and {r["sr_no"] for r in kept} <= {1, 2, 3}, kept
    assert runner == "ray" or len(kept) == 2
    assert all(r["status"] == "ok" for r in kept)
    resumed = subprocess.run([sys.executable, str(REPO_ROOT / "train.py"), *args], cwd=tmp_path,
                             env=cli_env(RAY_AUTH_MODE="disabled"), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"Resuming: {len(kept)} children already trained." in resumed.stdout
    final = _records(tmp_path)
    assert [(r["sr_no"], r["status"]) for r in final] == [(i, "ok") for i in range(1, 6)]
    assert [r for r in final if r["sr_no"] in {k["sr_no"] for k in kept}] == kept
