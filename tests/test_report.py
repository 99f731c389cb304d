"""pnas/report.py: Spearman, the Pareto front, and the report command on records written by hand."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import json  # noqa: E402
import shlex  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402

from conftest import PLOTS, REPO_ROOT, is_png, run_command  # noqa: E402
from pnas import report  # noqa: E402
from pnas.encoder import StateSpace  # noqa: E402

SPACE = StateSpace(2, ["3x3 bconv", "3x3 maxpool"])


def test_spearman_on_constructed_cases():
    predicted = [0.1, 0.25, 0.3, 0.42, 0.5]
    assert report.spearman(predicted, [0.2, 0.3, 0.5, 0.7, 0.9]) == pytest.approx(1.0)
    assert report.spearman(predicted, [0.9, 0.7, 0.5, 0.3, 0.2]) == pytest.approx(-1.0)
    # Ranks (1 2 3 4 5) against (2 1 4 3 5): sum d^2 = 4, rho = 1 - 24 / 120.
    assert report.spearman(predicted, [0.3, 0.2, 0.7, 0.5, 0.9]) == pytest.approx(0.8)
    permuted = [0.3, 0.1, 0.2, 0.6, 0.4, 0.5]  # ranks 3 1 2 6 4 5: sum d^2 = 12
    predicted6 = [0.05, 0.1, 0.15, 0.2, 0.25, 0.3]
    assert report.spearman(predicted6, permuted) == pytest.approx(1 - 6 * 12 / (6 * 35))
    assert report.spearman([0.4, 0.4, 0.4], [0.1, 0.2, 0.3]) is None
    assert report.spearman([0.1, 0.2, 0.3], [0.5, 0.5, 0.5]) is None
    assert report.spearman([0.1], [0.2]) is None


def _record(sr_no, stage, reward, predicted=None, status="ok"):
    record = {"sr_no": sr_no, "stage": stage, "status": status, "reward": reward}
    if predicted is not None:
        record["predicted_reward"] = predicted
    return record


def test_stage_spearman_on_constructed_records():
    records = [_record(i, 1, 0.1 * i) for i in range(1, 4)]  # stage 1: no predictions
    records += [_record(4, 2, 0.2, 0.1), _record(5, 2, 0.4, 0.2), _record(6, 2, 0.6, 0.3)]
    records += [_record(7, 2, 0.0, 0.9, status="failed")]  # would break the order; not counted
    records += [_record(8, 3, 0.6, 0.1), _record(9, 3, 0.5, 0.2), _record(10, 3, 0.1, 0.3)]
    actual = [0.3, 0.1, 0.2, 0.6, 0.4, 0.5]
    records += [_record(11 + i, 4, a, 0.1 * (i + 1)) for i, a in enumerate(actual)]
    records += [_record(17, 5, 0.3, 0.5), _record(18, 5, 0.4, 0.5)]
    records += [{"stage": 5, "status": "over_budget", "reward": None, "mul_ops": 10**9}]
    rho = report.stage_spearman(records)
    assert set(rho) == {2, 3, 4, 5}
    assert rho[2] == pytest.approx(1.0)
    assert rho[3] == pytest.approx(-1.0)
    # Ranks (1 2 3 4 5 6) against (3 1 2 6 4 5): sum d^2 = 12, rho = 1 - 6 * 12 / (6 * 35).
    assert rho[4] == pytest.approx(1 - 6 * 12 / 210)
    assert rho[5] is None


def _report(root, name):
    return run_command([sys.executable, "-m", "pnas.report", name, "--root", str(root)], root,
                       env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))


def _ok_record(sr_no, stage, child, reward, mul_ops, predicted=None):
    record = {
        "sr_no": sr_no, "stage": stage, "child": list(child), "architecture": SPACE.parse(child),
        "representation_string": SPACE.representation_string(child), "status": "ok",
        "reward": reward, "test_accuracy": reward - 0.01, "mul_ops": mul_ops,
        # Binary MACs below mul_ops: the first layer's MACs on the real-valued image are not binary.
        "footprint": {"packed_kib": mul_ops / 10000, "float32_kib": mul_ops / 300, "binary_macs": mul_ops - 1000,
                      "float_macs": 1000, "ops": round(1000 + (mul_ops - 1000) / 64)},
    }
    if predicted is not None:
        record["predicted_reward"] = predicted
    return record


def _hand_records():
    c1 = SPACE.initial_children()  # (0,0,0,0), (0,0,0,1), (0,1,0,1)
    c2 = SPACE.expand(c1)
    records = [
        _ok_record(1, 1, c1[0], 0.80, 29792),
        _ok_record(2, 1, c1[1], 0.70, 16856),
        _ok_record(3, 1, c1[2], 0.40, 3920),
        _ok_record(4, 2, c2[2], 0.90, 33712, predicted=0.7),
        _ok_record(5, 2, c2[3], 0.85, 33712, predicted=0.6),
        {"sr_no": 6, "stage": 2, "child": list(c2[4]), "architecture": SPACE.parse(c2[4]),
         "representation_string": SPACE.representation_string(c2[4]), "status": "failed", "reward": 0.0,
         "error": "RuntimeError: boom", "traceback": "...", "predicted_reward": 0.9},
        _ok_record(7, 2, c2[5], 0.50, 7840, predicted=0.5),
        {"stage": 2, "child": list(c2[0]), "architecture": SPACE.parse(c2[0]),
         "representation_string": SPACE.representation_string(c2[0]), "status": "over_budget",
         "reward": None, "mul_ops": 59584},
    ]
    return records


def test_report_regenerates_the_plots_and_summary_from_the_records(tmp_path):
    records = _hand_records()
    (tmp_path / "architectures").mkdir()
    (tmp_path / "architectures" / "hand.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "logs" / "hand"
    out.mkdir(parents=True)
    retrain = ["--B=2", "--operators=\"['3x3 bconv', '3x3 maxpool']\"", "--NUM_CELLS=1"]
    (out / "settings.json").write_text(json.dumps({"B": 2}))
    (out / "retrain_args.json").write_text(json.dumps(retrain))
    for name in (*PLOTS, "summary.txt"):
        (out / name).write_bytes(b"stale")  # older outputs, to be replaced

    result = _report(tmp_path, "hand")
    assert result.returncode == 0, result.stderr[-3000:]
    for name in PLOTS:
        assert is_png(out / name), name
    summary = (out / "summary.txt").read_text()
    assert result.stdout == summary + f"Plots written to {tmp_path / 'logs' / 'hand'}/\n"
    lines = summary.splitlines()
    assert lines[0] == "7 children: 6 trained, 1 failed; 1 candidate over the op budget (MAX_MUL_OPS, MAX_OPS) skipped"
    # Stage 2: predictions 0.7, 0.6, 0.5 against rewards 0.90, 0.85, 0.50 (the failed child left out).
    assert lines[1] == "Encoder Spearman rank correlation at b = 2: 1.000"
    assert lines[2] == "Top 5 architectures:"
    rows = lines[4:9]
    assert [int(row.split()[0]) for row in rows] == [4, 5, 1, 2, 7]  # by reward; sr_no 3 (0.40) left out
    best = records[3]
    assert lines[3].split()[3:8] == ["bin.", "MACs", "32b", "MACs", "OPs"]
    # Binary MACs, 32-bit MACs and OPs (1000 + 32712 / 64), not mul_ops.
    assert rows[0].split()[:7] == ["4", "0.9000", "0.8900", "32712", "1000", "1511", "3.37"]
    assert rows[0].endswith(str(best["architecture"]))
    assert lines[9] == "Retrain the best:"
    assert lines[10] == (
        "python train.py -ta True --B=2 --operators=\"['3x3 bconv', '3x3 maxpool']\" --NUM_CELLS=1 "
        f'--REPRESENTATION_STRING="{best["representation_string"]}"'
    )
    assert len(lines) == 11
    # The command parses as a shell would, back to the best child.
    argv = shlex.split(lines[10])
    assert argv[-1] == f"--REPRESENTATION_STRING={best['representation_string']}"
    assert SPACE.from_representation_string(argv[-1].split("=", 1)[1]) == tuple(best["child"])
    assert "--operators=['3x3 bconv', '3x3 maxpool']" in argv


def test_report_of_a_missing_search_exits_2_with_one_error_line(tmp_path):
    result = _report(tmp_path, "nothing")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "nothing.jsonl" in lines[0]
    assert result.stdout == ""
    assert os.listdir(tmp_path) == []


def test_the_summary_calls_the_ridge_ridge_and_the_lstm_encoder():
    records = _hand_records()
    assert "\nRidge Spearman rank correlation at b = 2: 1.000\n" in report.summary_text(records, surrogate="ridge")
    assert "\nEncoder Spearman rank correlation at b = 2: 1.000\n" in report.summary_text(records, surrogate="lstm")


def test_pareto_front_on_a_hand_made_set():
    points = [(100, 0.5), (200, 0.4), (200, 0.6), (300, 0.6), (400, 0.9), (50, 0.1), (500, 0.8), (50, 0.05)]
    # The cost is OPs: binary MACs alone would put the first (all float work) cheapest.
    records = [{"footprint": {"binary_macs": 0, "ops": m}, "reward": r} for m, r in points]
    records.append({"footprint": {"binary_macs": 0, "ops": 10**6}, "reward": 0.95})
    front = report.pareto_front(records)
    assert [(report.ops(r), r["reward"]) for r in front] == [
        (50, 0.1), (100, 0.5), (200, 0.6), (400, 0.9), (10**6, 0.95)
    ]
    assert report.pareto_front([]) == []
    assert report.cost_text(records[0]) == "binary MACs 0, 32-bit MACs -, OPs 100"
