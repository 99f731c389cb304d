"""A lost node on a real Ray cluster: a head and two worker nodes on this machine (`ray.cluster_utils.Cluster`).

Each node is a real raylet with its own worker processes. The search runs on
the cluster from this process; a worker node is removed (`remove_node`: its
raylet and workers killed) while a child trains on it. Ray reruns that child
on the other node (`RAY_MAX_RETRIES`), the search finishes, and its records
are those of a straight run. The figures it prints are in docs/cluster.md.
"""

import json
import os
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest  # noqa: E402

from pnas.search import Search, SearchPaths  # noqa: E402
from conftest import synthetic_dataset, tiny_config  # noqa: E402

ray = pytest.importorskip("ray")
cluster_utils = pytest.importorskip("ray.cluster_utils")

pytestmark = pytest.mark.slow  # three raylets and a search on them: minutes

COMPARED = ("sr_no", "stage", "child", "status", "reward", "best_epoch", "val_accuracy", "mul_ops")


def _parent(pid):
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def _training_on(raylet_pids):
    """{raylet pid: [its worker processes running a child]} (Ray titles a worker after its task)."""
    found = {pid: [] for pid in raylet_pids}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if not f.read().startswith(b"ray::_train_on_ray"):
                    continue
            parent = _parent(entry)
        except OSError:
            continue
        if parent in found:
            found[parent].append(int(entry))
    return found


class _NodeRemover:
    """A thread that removes the first worker node seen training a child, `delay_s` after it started."""

    def __init__(self, cluster, delay_s=2.0):
        self.cluster, self.delay_s = cluster, delay_s
        self.removed_at = self.task_pid = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        raylets = {node.all_processes["raylet"][0].process.pid: node for node in self.cluster.worker_nodes}
        while not self._stop.is_set():
            for raylet, tasks in _training_on(raylets).items():
                if tasks:
                    time.sleep(self.delay_s)  # well inside the child's training (its imports alone take seconds)
                    if not os.path.exists(f"/proc/{tasks[0]}"):
                        break  # it ended first: wait for the next one
                    self.task_pid = tasks[0]
                    self.cluster.remove_node(raylets[raylet], allow_graceful=False)
                    self.removed_at = time.monotonic()
                    return
            time.sleep(0.05)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _records(paths):
    with open(paths.records) as f:
        return [json.loads(line) for line in f]


@pytest.fixture
def cluster():
    """A head with no CPUs (the driver's node: no child trains there) and two worker nodes of 1 CPU."""
    if ray.is_initialized():
        ray.shutdown()
    cluster = cluster_utils.Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    for _ in range(2):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    try:
        yield cluster
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()


def test_a_node_lost_while_its_child_trains_reruns_that_child_on_another(cluster, tmp_path, capsys, caplog):
    settings = dict(B=2, RAY_CPUS_PER_CHILD=1, RAY_MAX_RETRIES=1, MAX_CONSECUTIVE_FAILURES=1, TEST_CHILDREN=False)
    straight = SearchPaths("tiny", root=str(tmp_path / "straight"))
    Search(tiny_config(RUNNER="inline", **settings), synthetic_dataset(), straight, plots=False).run()

    paths = SearchPaths("tiny", root=str(tmp_path / "cluster"))
    config = tiny_config(RUNNER="ray", RAY_ADDRESS=cluster.address, **settings)
    started = time.monotonic()
    search = Search(config, synthetic_dataset(), paths, plots=False)
    assert search.runner.parallel == 2  # one child per worker node
    with _NodeRemover(cluster) as remover, caplog.at_level("WARNING", logger="pnas.runners"):
        records = search.run()  # MAX_CONSECUTIVE_FAILURES=1: a failed child would stop it
        ended = time.monotonic()
        # Reported while the search ran: the head marks the node dead only seconds later, perhaps after
        # the search has left Ray (and then Ray's line never comes), so the runner asks the nodes itself.
        messages = list(caplog.messages)
    assert remover.removed_at is not None, "no child was seen training on a worker node"
    assert len(cluster.worker_nodes) == 1
    assert all(r["status"] == "ok" for r in records)
    whole = _records(straight)
    assert [(r["sr_no"], r["child"]) for r in records] == [(r["sr_no"], r["child"]) for r in whole]
    for a, b in zip(records, whole):
        for key in COMPARED:  # the same seeds: one thread per child against the inline run's
            assert a[key] == pytest.approx(b[key], abs=0.05), (a["sr_no"], key)
    assert _records(paths) == records
    # One line of ours for the lost node (none for its child's death), none of Ray's ("Raylet is
    # terminated" and its log's tail).
    lost = [m for m in messages if m.startswith("Lost the Ray node at ")]
    assert len(lost) == 1 and lost[0].endswith("; Ray runs its children again on the other nodes (RAY_MAX_RETRIES)"), \
        messages
    assert not [m for m in messages if m.startswith("A Ray worker died")], messages
    out = capsys.readouterr().out
    assert "(raylet)" not in out, out
    with capsys.disabled():
        print(f"cluster search: {ended - started:.1f} s; node removed {remover.removed_at - started:.1f} s in, "
              f"{ended - remover.removed_at:.1f} s before the end; {len(records)} children")
