"""Running children: one interface, `run(jobs)`, three backends.

A runner trains the children of a list of `ChildJob`s (`pnas.jobs`) and yields
one `Outcome` per job as soon as that job is done, in the order they finish.
The search records each outcome as it comes, so a search killed at any point
loses only the children in training, and resumes with the others. Each job
carries its seed, so every backend trains the same child with the same numbers:

- `InlineRunner`: in the search's own process, one child at a time.
- `ProcessRunner`: in worker processes on this machine (`pnas.worker`), each
  replaced after a few children because TensorFlow leaks memory per model;
  several side by side, each with its share of the CPU cores.
- `RayRunner`: as Ray tasks, on a local Ray or on a cluster.

A child that raises, or whose worker dies, is an outcome with an `error`:
it fails that child, never the run.
"""

import collections
import io
import logging
import multiprocessing.connection
import os
import re
import socket
import sys
import tempfile
import threading
import time

from binarized.quiet import import_keras_quietly, tensorflow_environment
from mnist.files import WriteFailed
from pnas.config import expected_cost
from pnas.jobs import ChildJob, Outcome, limit_threads, manager_train, raise_write_failed, run_job, write_failed_reply
from pnas.worker import ChildWorker

__all__ = [
    "ChildJob", "InlineRunner", "KerasTrainer", "Outcome", "ProcessRunner", "RayRunner", "Runner", "RunnerLost",
    "RunnerUnavailable", "make_runner", "run_job", "start_order",
]

logger = logging.getLogger(__name__)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class RunnerUnavailable(RuntimeError):
    """The runner cannot start (e.g. no Ray cluster at the address); the message says what to do."""


class RunnerLost(RunnerUnavailable):
    """The runner went away mid-search (e.g. the Ray head stopped); finished children are saved."""


class Runner:
    """The interface: `run(jobs, on_start)` yields an `Outcome` per job, as each job finishes."""

    #: Children trained at the same time (the search numbers its output lines when > 1).
    parallel = 1

    def run(self, jobs, on_start=None):
        """Trains `jobs`; yields each one's outcome as soon as it is done (in any order).

        Args:
            jobs: `ChildJob`s.
            on_start: Called with each job as it starts.
        """
        raise NotImplementedError

    def close(self):
        """Releases the runner's processes or cluster connection."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class InlineRunner(Runner):
    """Trains each job in this process with `train(job) -> result dict` (through `run_job`)."""

    def __init__(self, train):
        self.train = train

    def run(self, jobs, on_start=None):
        for job in jobs:
            if on_start:
                on_start(job)
            yield run_job(job, self.train)


class KerasTrainer:
    """`train(job)` of the inline runner: a `NetworkManager` in this process."""

    def __init__(self, dataset, child_config, manager_kwargs):
        from pnas.manager import NetworkManager

        self.child = child_config
        self.manager = NetworkManager(dataset, **manager_kwargs)

    def __call__(self, job):
        train = manager_train(self.manager, self.child.train_kwargs(job.actions, "child", job.log_name))
        return train(job)


def available_cores():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# Children at a stage's end that side-by-side workers start costliest first (times the workers).
TAIL_PER_WORKER = 4


def start_order(jobs, parallel):
    """The order in which `parallel` workers start `jobs`: the beam's, with its tail costliest first.

    A stage waits for its last child. Side by side, the last `TAIL_PER_WORKER`
    jobs per worker start longest processing time first
    (`pnas.config.expected_cost`), so that the workers end the stage together
    rather than one waiting for the other's last, long child. The rest keep the
    beam's order: every outcome is recorded as it finishes, but the
    architectures log shows a stage's children up to the first one not yet
    finished (`pnas.records.format_architectures`), so children finishing
    in beam order keep that log current. One worker keeps the order.
    """
    jobs = list(jobs)
    if parallel <= 1:
        return jobs
    split = max(0, len(jobs) - TAIL_PER_WORKER * parallel)
    return jobs[:split] + sorted(jobs[split:], key=lambda job: -expected_cost(job.actions))


class ProcessRunner(Runner):
    """Trains jobs in `parallel` replaceable worker processes (`pnas.worker.ChildWorker`).

    Side by side, each worker runs its ops on its share of the CPU cores,
    and a stage's last jobs start costliest first (`start_order`).
    Each outcome comes as its worker answers; a job's seed is its own, so the
    results differ from one-by-one training only by the threads' arithmetic.
    A full disk in a worker (`WriteFailed`) is raised here, and stops the search.
    """

    def __init__(self, dataset, child_config, manager_kwargs, parallel=1, children_per_process=10):
        self.child = child_config
        self.parallel = parallel
        threads = max(1, available_cores() // parallel) if parallel > 1 else None
        self.workers = [ChildWorker(dataset, manager_kwargs, children_per_process, threads) for _ in range(parallel)]

    def run(self, jobs, on_start=None):
        todo = collections.deque(start_order(jobs, self.parallel))
        running = {}  # worker -> job
        while todo or running:
            for slot, worker in enumerate(self.workers):
                if todo and worker not in running:
                    job = todo.popleft()
                    if on_start:
                        on_start(job)
                    # One weights file per worker: side by side they must not share one.
                    name = "child" if slot == 0 else f"child{slot}"
                    # Side by side, each epoch line names its child.
                    label = f"#{job.sr_no}" if self.parallel > 1 else None
                    worker.submit(job, self.child.train_kwargs(job.actions, name, job.log_name, label))
                    running[worker] = job
            ready = multiprocessing.connection.wait([w.conn for w in running])
            for worker in [w for w in running if w.conn in ready]:
                del running[worker]
                yield worker.result()

    def close(self):
        for worker in self.workers:
            worker.close()


# --------------------------------------------------------------------- Ray
_RAY_PROCESS = {}  # per Ray worker process: its scratch folder, and whether its threads are set
HEAD_TIMEOUT_S = 2  # seconds between checks that the Ray head answers, while children train


def _train_on_ray(dataset, manager_kwargs, threads, job, train_kwargs):
    """A Ray task: trains one child (`run_job`); returns its `Outcome`.

    The child's own exceptions come back as failed outcomes, so that the
    search records them as it records a failing child of the other runners;
    a full disk comes back as a `write_failed_reply`, which stops the search
    as it does in the other runners (not retried, not the child's failure);
    a task that raises to Ray is a worker or node that died.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import_keras_quietly()
    from pnas.manager import NetworkManager

    if "scratch" not in _RAY_PROCESS:
        if threads:
            limit_threads(threads)
        # The weights of the child in training, on this node; nothing reads them back.
        _RAY_PROCESS["scratch"] = tempfile.mkdtemp(prefix="pnas_ray_")
    manager = NetworkManager(dataset, **dict(manager_kwargs, weights_dir=_RAY_PROCESS["scratch"]))
    try:
        return run_job(job, manager_train(manager, train_kwargs))
    except WriteFailed as exc:
        return write_failed_reply(exc)


def _unavailable(address, reason):
    return RunnerUnavailable(
        f"cannot connect to a Ray cluster at RAY_ADDRESS={address!r} ({reason}); start one with "
        "`ray start --head`, or run with --RAY_ADDRESS=None for a Ray on this machine only"
    )


def check_ray_address(address, timeout_s=5):
    """Raises `RunnerUnavailable` unless something listens at a 'host:port' address.

    `ray.init` keeps retrying an address where nothing answers (for more
    than ten minutes, measured), so a wrong address is caught here first.
    """
    if address is None or address == "auto":
        return
    host, _, port = address.split("://")[-1].rpartition(":")
    if not host or not port.isdigit():
        raise _unavailable(address, "expected 'auto' or 'host:port'")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise _unavailable(address, f"nothing answers at {host}:{port}: {exc.strerror or exc}") from None


# What Ray's driver prints for a worker that dies in a task (from its error channel, whatever
# log_to_driver says), colours and all: "(raylet) A worker died or was killed while executing ...",
# and, when the task has retries left, "(raylet) Task _train_on_ray failed. There are 1 retries
# remaining, so the task will be retried. Error: ..." (several lines in one write). A node's
# death: "(raylet) Raylet is terminated. ..." with the last 20 lines of its log, and "(raylet) The
# node with node id: ... and address: 10.0.0.2 and node name: ... has been marked dead ...".
RAY_WORKER_DEATH = re.compile(
    r"^(\x1b\[[0-9;]*m)*\(raylet(, ip=[^)]*)?\)(\x1b\[[0-9;]*m)* "
    r"(?P<what>A worker died or was killed|Task _train_on_ray failed\. There are (?P<retries>\d+) retries remaining"
    r"|Raylet is terminated\.|The node with node id: (?P<node_id>\S+) and address: (?P<node>\S+) .*has been marked dead)"
)
LOST_NODE = "Lost the Ray node at %s; Ray runs its children again on the other nodes (RAY_MAX_RETRIES)"


class WithoutRayWorkerDeaths(io.TextIOBase):
    """A text stream that passes everything to `stream` but Ray's own lines on a worker's death.

    The runner reports a dead worker itself, in one line: a node that died as
    "Lost the Ray node at ADDRESS" (`node_lost`, once per node), a death that
    Ray retries as the warning "a Ray worker died in a child's task; Ray runs
    it again", and a death past the retries with the child it ran
    (`RayRunner._outcome`). Ray's own lines say the same at length, several
    per death. Ray prints them with `print(line, file=sys.stdout)` from a
    thread of its own: the line, then its newline, in two writes, which are
    dropped together (per thread). Every other line of Ray's (e.g. a task
    that no node has the resources for) still shows. Ray merges repeated
    lines ("[repeated 2x across cluster]"), so a retried death can go
    without its warning.

    Ray's line for a dead node comes only once its head has missed the
    node's heartbeats (seconds later), and not at all once this process has
    left Ray. So a worker's death calls `find_lost_nodes` (set by the
    runner), which asks each node at once: a node found gone is reported
    then. Its children's deaths are that loss's: Ray's lines on them come
    within seconds, so no worker-died warning follows a lost node for
    `NODE_LOSS_S`.
    """

    NODE_LOSS_S = 60

    def __init__(self, stream):
        super().__init__()
        self.stream = stream
        self.dropped = 0
        self.find_lost_nodes = None  # () -> None, warns of lost nodes; set while a RayRunner runs
        self._dropping = threading.local()
        self._lost = set()  # the node ids reported
        self._last_loss = None  # time.monotonic() of the last
        self._lock = threading.Lock()

    def node_lost(self, node_id, address):
        """Warns of a lost node, once per `node_id` (from whichever thread sees it first)."""
        with self._lock:
            if node_id in self._lost:
                return
            self._lost.add(node_id)
            self._last_loss = time.monotonic()
        logger.warning(LOST_NODE, address)

    def write(self, text):
        if getattr(self._dropping, "newline", False) and text == "\n":
            self._dropping.newline = False
            return len(text)
        death = RAY_WORKER_DEATH.match(text)
        if not death:
            return self.stream.write(text)
        self._dropping.newline = True
        self.dropped += 1
        if "[repeated" in text:
            return len(text)
        if death.group("node") is not None:
            self.node_lost(death.group("node_id"), death.group("node"))
        else:  # a worker's death or a raylet's: its node's, perhaps
            if self.find_lost_nodes:
                self.find_lost_nodes()
            recent_loss = self._last_loss is not None and time.monotonic() - self._last_loss < self.NODE_LOSS_S
            if death.group("retries") is not None and not recent_loss:
                logger.warning("A Ray worker died in a child's task; Ray runs it again (%s retries left)",
                               death.group("retries"))
        return len(text)

    def flush(self):
        self.stream.flush()

    def writable(self):
        return True

    def __getattr__(self, name):  # encoding, fileno, isatty, ...: the wrapped stream's
        return getattr(self.stream, name)


def hide_ray_worker_deaths():
    """Puts `WithoutRayWorkerDeaths` in front of `sys.stdout` (once); returns it.

    It stays for the rest of the process: Ray's line can come after the
    search has recorded the child, until `ray.shutdown`.
    """
    if not isinstance(sys.stdout, WithoutRayWorkerDeaths):
        sys.stdout = WithoutRayWorkerDeaths(sys.stdout)
    return sys.stdout


def connect_ray(address):
    """Joins the Ray cluster at `address` ('auto', 'host:port'), or starts a local Ray (None).

    Returns:
        True when this call started or joined Ray (and `ray.shutdown` is
        ours), False when this process was connected already.

    Raises:
        RunnerUnavailable: Ray is not installed, or no cluster answers at `address`.
    """
    try:
        import ray
    except ImportError:
        raise RunnerUnavailable(
            "RUNNER='ray' needs the ray package: pip install -r requirements.txt"
        ) from None
    if ray.is_initialized():
        return False
    check_ray_address(address)
    try:
        ray.init(
            address=address,
            include_dashboard=False,
            log_to_driver=False,  # the workers' TensorFlow and Keras output stays in Ray's log files
            logging_level=logging.ERROR,
            configure_logging=True,
        )
    except Exception as exc:  # Ray raises ConnectionError, RuntimeError or ValueError by case
        raise _unavailable(address, f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}") from None
    return True


class RayRunner(Runner):
    """Trains each job as a Ray task, on a local Ray or a cluster.

    The dataset goes to the cluster once (`ray.put`). Each task asks for
    `ray_cpus_per_child` CPUs and `ray_gpus_per_child` GPUs, runs its ops on
    that many threads, and its worker process is replaced after
    `children_per_process` tasks (`max_calls`; after every task on a GPU).
    As many tasks run at once as the cluster has resources for; each
    outcome comes as its task ends.

    A worker or node that dies is retried `ray_max_retries` times, then its
    child is failed. Child weights and TensorBoard logs stay out: a task
    writes its weights to a scratch folder on its node.
    """

    def __init__(self, dataset, child_config, manager_kwargs, runner_config):
        self.owns_ray = connect_ray(runner_config.ray_address)
        self.stdout = hide_ray_worker_deaths()
        import ray

        self.ray = ray
        self.child = child_config
        cpus, gpus = runner_config.ray_cpus_per_child, runner_config.ray_gpus_per_child
        self.threads = max(1, int(cpus)) if cpus else None
        self.manager_kwargs = dict(manager_kwargs, log_dir=None)
        self.dataset_ref = ray.put(list(dataset))
        # TensorFlow binds a process to the GPUs it saw first, while Ray may give
        # the next task of that process another one: a GPU child gets a fresh process.
        max_calls = 1 if gpus else runner_config.children_per_process
        env = {
            # The repository is at the same path on every node (docs/cluster.md); the node's own
            # PYTHONPATH follows it (Ray expands ${...} on the node).
            "PYTHONPATH": REPO_ROOT + os.pathsep + "${PYTHONPATH}",
            **tensorflow_environment(),
            "TF_FORCE_GPU_ALLOW_GROWTH": "true",  # children sharing a GPU (RAY_GPUS_PER_CHILD < 1)
        }
        self.remote = ray.remote(
            num_cpus=cpus,
            num_gpus=gpus,
            max_calls=max_calls,
            max_retries=runner_config.ray_max_retries,
            runtime_env={"env_vars": env},
        )(_train_on_ray)
        self.gcs_address = ray.get_runtime_context().gcs_address
        self.lost = False
        self._nodes_lock = threading.Lock()
        self.nodes = {}  # node id -> (address, raylet port), of the nodes alive when last asked
        self.update_nodes()
        self.stdout.find_lost_nodes = self.find_lost_nodes
        resources = ray.cluster_resources()
        slots = [resources.get("CPU", 1) / cpus] if cpus else []
        if gpus:
            slots.append(resources.get("GPU", 0) / gpus)
        self.parallel = max(1, int(min(slots))) if slots else 1
        logger.info("Ray: %s, %d children at a time", resources, self.parallel)

    def check_head(self):
        """Raises `RunnerLost` when the cluster's head (its GCS) no longer answers.

        Ray itself waits 60 s for a lost head, then ends the process with
        lines of its own; the search stops at once with one line instead.
        """
        host, _, port = self.gcs_address.rpartition(":")
        try:
            socket.create_connection((host, int(port)), timeout=HEAD_TIMEOUT_S).close()
        except OSError as exc:
            self.lost = True
            raise RunnerLost(
                f"lost the Ray cluster: its head at {self.gcs_address} stopped answering "
                f"({exc.strerror or exc}); every finished child is saved: restart the cluster and rerun "
                "the same command, or rerun with --RUNNER='processes' to resume on this machine"
            ) from None

    def update_nodes(self):
        """Reads the cluster's nodes from its head; warns of a node it has marked dead since."""
        alive = {
            n["NodeID"]: (n["NodeManagerAddress"], n["NodeManagerPort"]) for n in self.ray.nodes() if n["Alive"]
        }
        with self._nodes_lock:
            gone = {node: self.nodes[node] for node in set(self.nodes) - set(alive)}
            self.nodes = alive
        for node, (address, _) in gone.items():
            self.stdout.node_lost(node, address)

    def find_lost_nodes(self):
        """Asks each node's raylet whether it answers; warns of those that do not (a node's loss
        shows at once, while the head takes seconds to mark it dead)."""
        with self._nodes_lock:
            nodes = dict(self.nodes)
        for node, (address, port) in nodes.items():
            try:
                socket.create_connection((address, port), timeout=HEAD_TIMEOUT_S).close()
            except OSError:
                with self._nodes_lock:
                    self.nodes.pop(node, None)
                self.stdout.node_lost(node, address)

    def _outcome(self, job, ref):
        try:
            return raise_write_failed(self.ray.get(ref))
        except self.ray.exceptions.RayError as exc:  # the task's worker or node died, even after retries
            self.check_head()  # a child is not failed for the loss of the whole cluster
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            logger.warning("Child #%d: its Ray worker died (%s)", job.sr_no, type(exc).__name__)
            return Outcome(job, error=f"WorkerDied: {type(exc).__name__}: {first}", trace=str(exc))

    def run(self, jobs, on_start=None):
        todo = collections.deque(jobs)
        running = {}  # ref -> job, in submission order
        try:
            while todo or running:
                while todo and len(running) < self.parallel:
                    job = todo.popleft()
                    if on_start:
                        on_start(job)
                    ref = self.remote.remote(
                        self.dataset_ref, self.manager_kwargs, self.threads, job,
                        self.child.train_kwargs(
                            job.actions, "child", job.log_name, f"#{job.sr_no}" if self.parallel > 1 else None
                        ),
                    )
                    running[ref] = job
                ready, _ = self.ray.wait(list(running), num_returns=1, timeout=HEAD_TIMEOUT_S)
                if not ready:
                    self.check_head()
                    self.update_nodes()
                for ref in ready:
                    yield self._outcome(running.pop(ref), ref)
        finally:
            for ref in running if not self.lost else ():  # the search stopped early: free the cluster
                self.ray.cancel(ref, force=True)

    def close(self):
        self.stdout.find_lost_nodes = None
        # With the head lost, ray.shutdown would wait for it.
        if self.owns_ray and self.ray.is_initialized() and not self.lost:
            self.ray.shutdown()


def make_runner(config, dataset, paths, train_fn=None):
    """The runner of `config.runner` (a `SearchConfig`), or an inline one around `train_fn(job)`.

    Raises:
        RunnerUnavailable: RUNNER='ray' and no Ray cluster can be reached.
    """
    if train_fn is not None:
        return InlineRunner(train_fn)
    r = config.runner
    manager_kwargs = config.child.manager_kwargs(paths.exp_weights_dir, paths.exp_log_dir)
    if r.kind == "ray":
        return RayRunner(dataset, config.child, manager_kwargs, r)
    if r.kind == "inline" or r.children_per_process == 0:
        return InlineRunner(KerasTrainer(dataset, config.child, manager_kwargs))
    return ProcessRunner(dataset, config.child, manager_kwargs, r.parallel_children, r.children_per_process)
