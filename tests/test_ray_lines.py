"""Ray's own lines on a dead worker or node become one warning of ours (`WithoutRayWorkerDeaths`).

No Ray here: the lines are written as Ray's driver writes them (the line,
then its newline), and the node check a `RayRunner` sets is a stand-in that
says which node it found gone. tests/test_ray_cluster.py loses a real node.
"""

import io
import logging

import pytest

from pnas.runners import WithoutRayWorkerDeaths

RETRY = ("\x1b[33m(raylet)\x1b[0m Task _train_on_ray failed. There are 1 retries remaining, so the task will be "
         "retried. Error: The worker died unexpectedly while executing this task.")
DEAD = "(raylet) A worker died or was killed while executing a task by an unexpected system error."
TERMINATED = "(raylet, ip=10.0.0.2) Raylet is terminated. Termination is unexpected. Possible reasons include: ..."
MARKED = ("(raylet) The node with node id: 5f1e0c and address: 10.0.0.2 and node name: 10.0.0.2 has been marked "
          "dead because the detector has missed too many heartbeats from it.")


def _write(stream, *lines):
    for line in lines:
        stream.write(line)
        stream.write("\n")


@pytest.fixture
def warnings(caplog):
    caplog.set_level(logging.WARNING, logger="pnas.runners")
    return lambda: [r.getMessage() for r in caplog.records]


def test_other_lines_pass_and_ray_lines_on_deaths_do_not():
    out = io.StringIO()
    stream = WithoutRayWorkerDeaths(out)
    _write(stream, "[b 1/2 | child 1/3] [0, '3x3 bconv']", DEAD, TERMINATED, "(raylet) no node has 2 CPUs")
    assert out.getvalue() == "[b 1/2 | child 1/3] [0, '3x3 bconv']\n(raylet) no node has 2 CPUs\n"
    assert stream.dropped == 2


def test_a_retried_worker_death_on_a_live_node_is_one_warning(warnings):
    stream = WithoutRayWorkerDeaths(io.StringIO())
    asked = []
    stream.find_lost_nodes = lambda: asked.append(1)
    _write(stream, DEAD, RETRY, RETRY + " [repeated 2x across cluster]")
    assert warnings() == ["A Ray worker died in a child's task; Ray runs it again (1 retries left)"]
    assert len(asked) == 2  # each death line but the merged one asks the nodes


def test_a_lost_node_is_reported_when_its_worker_dies_and_once(warnings):
    stream = WithoutRayWorkerDeaths(io.StringIO())

    def find_lost_nodes():  # what RayRunner.find_lost_nodes does when a raylet no longer answers
        stream.node_lost("5f1e0c", "10.0.0.2")

    stream.find_lost_nodes = find_lost_nodes
    _write(stream, TERMINATED, DEAD, RETRY, RETRY, MARKED)
    # Its children's deaths are the node's; the head's "marked dead", seconds later, names the same node.
    assert warnings() == ["Lost the Ray node at 10.0.0.2; Ray runs its children again on the other nodes "
                          "(RAY_MAX_RETRIES)"]


def test_without_a_runner_the_heads_line_still_reports_the_node(warnings):
    stream = WithoutRayWorkerDeaths(io.StringIO())
    _write(stream, RETRY, MARKED, MARKED)
    assert warnings() == [
        "A Ray worker died in a child's task; Ray runs it again (1 retries left)",
        "Lost the Ray node at 10.0.0.2; Ray runs its children again on the other nodes (RAY_MAX_RETRIES)",
    ]


def test_a_worker_death_long_after_a_lost_node_is_its_own(warnings, monkeypatch):
    stream = WithoutRayWorkerDeaths(io.StringIO())
    _write(stream, MARKED)
    monkeypatch.setattr(stream, "_last_loss", stream._last_loss - WithoutRayWorkerDeaths.NODE_LOSS_S)
    _write(stream, RETRY)
    assert warnings()[1:] == ["A Ray worker died in a child's task; Ray runs it again (1 retries left)"]
