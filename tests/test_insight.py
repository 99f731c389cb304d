"""Tests of what a search tells its user: footprint, op budget, Spearman, ensemble, report, progress.

The footprint numbers are checked against counts made by hand; the op budget
and the Spearman bookkeeping in-process on tiny synthetic data; the report
command on records written by hand; the progress lines, summary and retrain
command on a real tiny search (2 operators, B=2, K_=2, 200 MNIST images).
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import concurrent.futures  # noqa: E402
import csv  # noqa: E402
import json  # noqa: E402
import pathlib  # noqa: E402
import re  # noqa: E402
import shlex  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import train  # noqa: E402
from pnas import footprint, report  # noqa: E402
from pnas.encoder import Encoder, RidgeSurrogate, StateSpace  # noqa: E402
from pnas.model import model_fn  # noqa: E402
from pnas.search import Search, SearchAborted, SearchPaths  # noqa: E402
from _search_helpers import keras_run_child, search_with, synthetic_dataset, tiny_config  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
TRAIN = REPO_ROOT / "train.py"
MNIST_DIR = REPO_ROOT / "data" / "mnist"
TIMEOUT_S = 300
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PLOTS = ("rewards.png", "predicted_vs_actual.png", "pareto.png")

OPS = ["3x3 bconv", "3x3 maxpool"]
SPACE = StateSpace(2, OPS)


def _is_png(path):
    data = pathlib.Path(path).read_bytes()
    return data[:8] == PNG_MAGIC and data[12:16] == b"IHDR" and len(data) > 1000


# ---------------------------------------------------------------- footprint
def _by_name(rows):
    return {r["name"]: r for r in rows}


def _kib(binary, floating):
    return (binary / 8 + floating * 4) / 1024, (binary + floating) * 4 / 1024


def test_footprint_of_one_cell_counted_by_hand():
    keras.utils.set_random_seed(0)
    model, mul_ops = model_fn([0, "3x3 bconv", 0, "3x3 bconv"], num_cells=1, num_cell_filters=[4],
                              dense_layers=[10])
    rows = footprint.layer_footprint(model)
    layers = _by_name(rows)

    # Two 3x3 convs, 1 -> 4 channels, stride 2 on the 28x28 image: 14x14x4 each.
    conv_params = 3 * 3 * 1 * 4
    conv_macs = 14 * 14 * 3 * 3 * 1 * 4
    features = 14 * 14 * (4 + 4)  # the two outputs concatenated, flattened
    for side in ("left", "right"):
        conv = layers[f"c0_b0_{side}"]
        # The image is real-valued: a binary kernel on it is a float MAC.
        assert (conv["binary_params"], conv["float_params"]) == (conv_params, 0)
        assert (conv["binary_macs"], conv["float_macs"]) == (0, conv_macs)
        assert conv["output_shape"] == (None, 14, 14, 4)
        bn = layers[f"c0_b0_{side}_bn"]
        # Larq's count: moving mean and variance per channel (gamma and beta fold into them).
        assert (bn["binary_params"], bn["float_params"], bn["binary_macs"], bn["float_macs"]) == (0, 2 * 4, 0, 0)
    dense = layers["dense0"]
    # The dense layer reads the flattened ±1 activations: binary MACs.
    assert (dense["binary_params"], dense["float_params"]) == (features * 10, 0)
    assert (dense["binary_macs"], dense["float_macs"]) == (features * 10, 0)
    assert layers["dense0_bn"]["float_params"] == 2 * 10
    for name in ("c0_b0_left_sign", "c0_b0_right_sign", "c0_b0", "flatten"):
        assert layers[name]["binary_params"] + layers[name]["float_params"] == 0
        assert layers[name]["binary_macs"] + layers[name]["float_macs"] == 0
    assert "image" not in layers

    binary = 2 * conv_params + features * 10
    floating = 2 * 2 * 4 + 2 * 10
    packed, float32 = _kib(binary, floating)
    totals = footprint.totals(rows)
    assert totals["binary_params"] == binary == 15752
    assert totals["float_params"] == floating == 36
    # Keras counts gamma and beta too: 2 per channel of the three BatchNorms.
    assert totals["binary_params"] + totals["float_params"] + floating == model.count_params()
    assert totals["packed_kib"] == pytest.approx(packed, abs=0.005)
    assert totals["float32_kib"] == pytest.approx(float32, abs=0.005)
    assert totals["binary_macs"] == features * 10
    assert totals["float_macs"] == 2 * conv_macs
    # mul_ops counts every MAC of a binary layer, whatever its input.
    assert mul_ops == totals["binary_macs"] + totals["float_macs"]
    assert footprint.summary(model) == totals

    table = footprint.format_table(rows)
    lines = table.splitlines()
    total_line = next(line for line in lines if line.startswith("total"))
    assert total_line.split() == ["total", str(binary), str(floating), str(features * 10), str(2 * conv_macs)]
    assert f"{packed:.2f} KiB with 1-bit weights packed, {float32:.2f} KiB in float32" in table
    assert f"({float32 / packed:.1f}x smaller)" in table
    assert sum(line.startswith("c0_b0_left ") for line in lines) == 1


def test_footprint_counts_as_larq_on_a_network_counted_by_hand():
    """Larq's rules (larq/models.py): BatchNorm drops beta next to moving_mean and gamma next to moving_variance."""
    from binarized.binary_layers import BinaryConv2D, BinaryDense
    from binarized.binary_ops import binary_tanh

    keras.utils.set_random_seed(0)
    x = image = keras.Input((6, 6, 1))
    x = keras.layers.Conv2D(2, 3, name="conv")(x)  # float: 3*3*1*2 kernel + 2 bias = 20; 4x4x2 out
    x = keras.layers.BatchNormalization(center=False, name="bn_no_beta")(x)  # gamma, mean, var -> mean, var: 4
    x = keras.layers.Activation(binary_tanh, name="sign")(x)
    x = BinaryConv2D(3, 3, name="bconv")(x)  # 1-bit: 3*3*2*3 = 54; 2x2x3 out
    x = keras.layers.BatchNormalization(scale=False, name="bn_no_gamma")(x)  # beta, mean, var -> mean, var: 6
    x = keras.layers.Flatten(name="flatten")(x)  # 12 real values
    x = BinaryDense(4, use_bias=True, name="bdense")(x)  # 1-bit: 12*4 = 48; float bias: 4
    x = keras.layers.BatchNormalization(name="bn")(x)  # gamma, beta, mean, var -> mean, var: 8
    model = keras.Model(image, x)
    layers = _by_name(footprint.layer_footprint(model))

    counts = {name: (r["binary_params"], r["float_params"], r["binary_macs"], r["float_macs"]) for name, r in layers.items()}
    assert counts == {
        "conv": (0, 20, 0, 4 * 4 * 3 * 3 * 1 * 2),  # a float layer: 288 float MACs
        "bn_no_beta": (0, 4, 0, 0),
        "sign": (0, 0, 0, 0),
        "bconv": (54, 0, 2 * 2 * 3 * 3 * 2 * 3, 0),  # ±1 kernel on ±1 input: 216 binary MACs
        "bn_no_gamma": (0, 6, 0, 0),
        "flatten": (0, 0, 0, 0),
        "bdense": (48, 4, 0, 48),  # ±1 kernel on real BatchNorm outputs: 48 float MACs
        "bn": (0, 8, 0, 0),
    }
    totals = footprint.summary(model)
    # 1-bit: 54 + 48 = 102; 32-bit: 20 + 4 + 6 + 4 + 8 = 42.
    # Larq's "Model size": 102 / 8 + 42 * 4 = 180.75 bytes; "Float-32 Equivalent": (102 + 42) * 4 = 576 bytes.
    assert totals == {
        "binary_params": 102,
        "float_params": 42,
        "packed_kib": round(180.75 / 1024, 2),
        "float32_kib": round(576 / 1024, 2),
        "binary_macs": 216,
        "float_macs": 288 + 48,
    }
    # Keras's own count has the dropped vectors too: gamma (2), beta (3), gamma and beta (4 + 4).
    assert model.count_params() == 102 + 42 + 2 + 3 + 8


def test_footprint_of_a_second_cell_reading_binary_activations():
    keras.utils.set_random_seed(0)
    model, mul_ops = model_fn([0, "3x3 bconv", 0, "3x3 bconv"], num_cells=2, num_cell_filters=[4, 6],
                              dense_layers=[10])
    layers = _by_name(footprint.layer_footprint(model))
    # Cell 0 as above; cell 1 reads the concatenated ±1 outputs (14x14x8) at stride 2.
    c1_macs = 7 * 7 * 3 * 3 * 8 * 6
    for side in ("left", "right"):
        assert layers[f"c0_b0_{side}"]["float_macs"] == 14 * 14 * 3 * 3 * 1 * 4
        assert layers[f"c0_b0_{side}"]["binary_macs"] == 0
        conv = layers[f"c1_b0_{side}"]
        assert conv["binary_params"] == 3 * 3 * 8 * 6
        assert (conv["binary_macs"], conv["float_macs"]) == (c1_macs, 0)
        assert layers[f"c1_b0_{side}_bn"]["float_params"] == 2 * 6
    features = 7 * 7 * 12
    assert (layers["dense0"]["binary_macs"], layers["dense0"]["float_macs"]) == (features * 10, 0)
    totals = footprint.summary(model)
    assert totals["binary_params"] == 2 * 36 + 2 * 432 + features * 10
    assert totals["float_params"] == 2 * 8 + 2 * 12 + 20
    assert totals["binary_macs"] == 2 * c1_macs + features * 10
    assert totals["float_macs"] == 2 * 14 * 14 * 9 * 4
    assert mul_ops == totals["binary_macs"] + totals["float_macs"]
    packed, float32 = _kib(totals["binary_params"], totals["float_params"])
    assert totals["packed_kib"] == pytest.approx(packed, abs=0.005)
    assert totals["float32_kib"] == pytest.approx(float32, abs=0.005)


def test_footprint_a_maxpool_of_the_image_keeps_real_values_downstream():
    keras.utils.set_random_seed(0)
    model, mul_ops = model_fn([0, "3x3 maxpool", 0, "3x3 bconv"], num_cells=2, num_cell_filters=[4, 6],
                              dense_layers=[10])
    layers = _by_name(footprint.layer_footprint(model))
    # The max-pooled image (real values) joins the ±1 conv outputs: 14x14x(1+4).
    # Everything downstream reads some real values, so its MACs are float.
    c0 = 14 * 14 * 3 * 3 * 1 * 4
    c1 = 7 * 7 * 3 * 3 * 5 * 6
    dense = 7 * 7 * (5 + 6) * 10
    assert layers["c0_b0_left"]["type"] == "MaxPooling2D"
    assert layers["c0_b0"]["output_shape"] == (None, 14, 14, 5)
    assert (layers["c0_b0_right"]["binary_macs"], layers["c0_b0_right"]["float_macs"]) == (0, c0)
    assert (layers["c1_b0_right"]["binary_macs"], layers["c1_b0_right"]["float_macs"]) == (0, c1)
    assert layers["c1_b0_right"]["binary_params"] == 3 * 3 * 5 * 6
    assert (layers["dense0"]["binary_macs"], layers["dense0"]["float_macs"]) == (0, dense)
    totals = footprint.summary(model)
    assert (totals["binary_macs"], totals["float_macs"]) == (0, c0 + c1 + dense)
    assert totals["binary_params"] == 36 + 270 + dense
    assert totals["float_params"] == 8 + 12 + 20
    assert mul_ops == c0 + c1 + dense


# ---------------------------------------------------------- in-process search
_settings = tiny_config


_dataset = synthetic_dataset


def _jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def _ranked(paths, b):
    """The children of scores_{b}.csv, best first."""
    with open(os.path.join(paths.scores_dir, f"scores_{b}.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [int(r["rank"]) for r in rows] == list(range(1, len(rows) + 1))
    return [(SPACE.from_representation_string(r["representation_string"]), float(r["predicted_reward"]))
            for r in rows]


def _expected_beam(ranked, mul_ops, budget, k):
    """Walks the ranking as the search should: (beam, skipped before the beam filled)."""
    beam, skipped = [], []
    for child in ranked:
        if len(beam) >= k:
            break
        (beam if mul_ops[child] <= budget else skipped).append(child)
    return beam, skipped


@pytest.fixture(scope="module")
def budget_search(tmp_path_factory):
    """A real tiny search whose MAX_MUL_OPS skips the costliest 1-block child."""
    root = tmp_path_factory.mktemp("budget")
    dataset = _dataset()
    probe = Search(_settings(), dataset, SearchPaths("probe", root=str(root / "probe")))
    stage1 = SPACE.initial_children()
    costs = sorted(probe.mul_ops(c) for c in stage1)
    budget = (costs[-2] + costs[-1]) // 2  # between the two costliest 1-block children
    settings = _settings(MAX_MUL_OPS=budget)
    paths = SearchPaths("tiny", root=str(root / "run"))
    trained = []
    train_child = keras_run_child(settings, dataset, paths)

    def run_child(search, child, sr_no):
        trained.append(tuple(child))
        return train_child(search, child, sr_no)

    search = search_with(run_child, settings, dataset, paths)
    records = search.run()
    return search, paths, budget, trained, records


def test_op_budget_children_over_it_are_recorded_and_not_trained(budget_search):
    search, paths, budget, trained, records = budget_search
    mul_ops = {c: search.mul_ops(c) for c in SPACE.initial_children()}
    beam1 = SPACE.initial_children()
    over1 = [c for c in beam1 if mul_ops[c] > budget]
    assert over1 == [(0, 0, 0, 0)]  # the two 3x3 convs, 29792 MACs
    ranked2 = [c for c, _ in _ranked(paths, 2)]
    assert sorted(ranked2) == sorted(SPACE.expand([c for c in beam1 if mul_ops[c] <= budget]))
    mul_ops.update({c: search.mul_ops(c) for c in ranked2})
    beam2, over2 = _expected_beam(ranked2, mul_ops, budget, k=2)
    assert over2, "the budget should skip some 2-block candidates too"
    # min(K_, candidates within the budget), the next in rank order replacing the skipped ones.
    assert len(beam2) == min(2, sum(mul_ops[c] <= budget for c in ranked2))

    assert trained == [c for c in beam1 if mul_ops[c] <= budget] + beam2
    assert [tuple(r["child"]) for r in records] == trained
    assert all(r["status"] == "ok" for r in records)
    for r in records:
        assert r["mul_ops"] == mul_ops[tuple(r["child"])] <= budget
    assert search.state.beam(2) == beam2

    lines = _jsonl(paths.records)
    assert lines[: len(records)] == records
    skipped = lines[len(records):]
    assert [(r["stage"], tuple(r["child"])) for r in skipped] == [(1, c) for c in over1] + [(2, c) for c in over2]
    for r in skipped:
        child = tuple(r["child"])
        assert r["status"] == "over_budget"
        assert r["reward"] is None
        assert r["mul_ops"] == mul_ops[child] > budget
        assert r["architecture"] == SPACE.parse(child)
        assert SPACE.from_representation_string(r["representation_string"]) == child
    # The plots and summary read the over-budget records as such.
    assert report.summary_text(lines).startswith(
        f"{len(records)} children: {len(records)} trained, 0 failed; {len(skipped)} candidates over the op budget"
    )


def test_op_budget_the_next_candidates_in_rank_order_fill_the_beam(tmp_path, monkeypatch, capsys):
    """A ranking that puts the costliest candidates first: they are skipped, the next ones trained."""

    def run_child(self, child, sr_no):
        cost = self.mul_ops(child)
        return {"reward": 0.5 - cost / 1e6, "best_epoch": 1, "val_accuracy": [0.5], "test_accuracy": 0.5,
                "mul_ops": cost, "params": 1, "footprint": {"packed_kib": 1.0}, "seconds": 0.0}

    def predict(self, children):
        return np.array([child[1::2].count(0) / 4 for child in children], np.float32)  # more convs, higher

    monkeypatch.setattr(RidgeSurrogate, "predict", predict)  # the default SURROGATE
    paths = SearchPaths("tiny", root=str(tmp_path))
    search = search_with(run_child, _settings(MAX_MUL_OPS=40000), _dataset(n_train=32, n_val=16, n_test=16), paths)
    records = search.run()

    ranked = [c for c, _ in _ranked(paths, 2)]
    mul_ops = {c: search.mul_ops(c) for c in ranked}
    within = [c for c in ranked if mul_ops[c] <= 40000]
    assert len(within) > 2  # more candidates than K_: the rank order decides
    assert [mul_ops[c] for c in ranked[:2]] == [59584, 46648]  # all convs, then 3 of 4
    assert [tuple(r["child"]) for r in records if r["stage"] == 2] == within[:2]
    over = [r for r in _jsonl(paths.records) if r["status"] == "over_budget"]
    assert [(r["stage"], tuple(r["child"]), r["mul_ops"]) for r in over] == [
        (2, c, mul_ops[c]) for c in ranked[:2]
    ]
    assert "b = 2: 2 candidates over MAX_MUL_OPS=40000 skipped" in capsys.readouterr().out


@pytest.mark.parametrize("budget, stages", [(5000, [1]), (1000, None)])
def test_op_budget_that_leaves_a_stage_empty(tmp_path, monkeypatch, capsys, budget, stages):
    """No candidate within the budget: the search ends there (or, at b = 1, says why it cannot start)."""

    def run_child(self, child, sr_no):
        return {"reward": 0.5, "best_epoch": 1, "val_accuracy": [0.5], "test_accuracy": 0.5,
                "mul_ops": self.mul_ops(child), "params": 1, "footprint": {"packed_kib": 1.0}, "seconds": 0.0}

    paths = SearchPaths("tiny", root=str(tmp_path))
    search = search_with(run_child, _settings(B=3, MAX_MUL_OPS=budget), _dataset(n_train=32, n_val=16, n_test=16),
                         paths)
    if stages is None:
        with pytest.raises(SearchAborted, match="MAX_MUL_OPS=1000"):
            search.run()
        assert all(r["status"] == "over_budget" for r in _jsonl(paths.records))
        return
    records = search.run()
    assert [r["stage"] for r in records] == stages
    assert [tuple(r["child"]) for r in records] == [(0, 1, 0, 1)]  # the two max-pools, 3920 MACs
    assert search.state.data["finished"]
    over = [r for r in _jsonl(paths.records) if r["status"] == "over_budget"]
    assert {r["stage"] for r in over} == {1, 2}
    assert "no candidate within MAX_MUL_OPS=5000" in capsys.readouterr().out


# ------------------------------------------------------------------ Spearman
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


def test_search_records_the_encoder_spearman_of_stage_2(budget_search):
    search, paths, _, _, records = budget_search
    stage2 = [r for r in records if r["stage"] == 2]
    assert len(stage2) == 2
    assert all("predicted_reward" not in r and "stage_spearman" not in r for r in records if r["stage"] == 1)
    scores = dict(_ranked(paths, 2))
    for r in stage2:
        assert r["predicted_reward"] == pytest.approx(scores[tuple(r["child"])], abs=1e-6)
    expected = report.stage_spearman(records)
    assert set(expected) == {2}
    assert search.state.data["spearman"] == {"2": expected[2]}
    assert all(r["stage_spearman"] == expected[2] for r in stage2)
    # The same in the records file a program reads back.
    assert [r for r in _jsonl(paths.records) if r["status"] == "ok"] == records
    for name in PLOTS:
        assert _is_png(os.path.join(paths.exp_log_dir, name))


# ------------------------------------------------------------------ ensemble
def test_encoder_ensemble_trains_on_different_thirds_and_averages(tmp_path):
    keras.utils.set_random_seed(0)
    children = SPACE.initial_children() + SPACE.expand(SPACE.initial_children())
    rewards = [0.1 + 0.05 * i for i in range(len(children))]  # distinct, to tell the samples apart
    assert len(children) == 9
    encoder = Encoder(SPACE, controller_cells=8, epochs=2, ensemble=3, targets="raw")
    assert len(encoder.models) == 3
    seen = []
    for i, model in enumerate(encoder.models):
        def fit(x, y, _fit=model.fit, _i=i, **kwargs):
            seen.append((_i, np.array(x), np.array(y)))
            return _fit(x, y, **kwargs)

        model.fit = fit
    loss = encoder.fit(children, rewards)
    assert np.isfinite(loss)
    assert [i for i, _, _ in seen] == [0, 1, 2]
    x_all = encoder._batch(children)
    left_out = []
    for i, x, y in seen:
        assert len(y) == 6  # 2/3 of the 9 samples
        kept = [rewards.index(pytest.approx(v)) for v in y]
        np.testing.assert_array_equal(x, x_all[kept])
        left_out.append(sorted(set(range(9)) - set(kept)))
    # Each sample is left out by exactly one member: three different subsets.
    assert sorted(sum(left_out, [])) == list(range(9))
    assert len({tuple(s) for s in left_out}) == 3

    members = np.stack([m.predict(x_all, verbose=0)[:, 0] for m in encoder.models])
    predicted = encoder.predict(children)
    assert predicted.shape == (9,)
    np.testing.assert_allclose(predicted, members.mean(axis=0), rtol=1e-6, atol=1e-7)
    assert np.ptp(members, axis=0).max() > 1e-4  # the members really differ

    path = str(tmp_path / "enc" / "encoder.weights.h5")
    encoder.save_weights(path)
    assert sorted(os.listdir(tmp_path / "enc")) == [f"encoder.{i}.weights.h5" for i in range(3)]
    keras.utils.set_random_seed(1)
    fresh = Encoder(SPACE, controller_cells=8, epochs=2, ensemble=3, targets="raw")
    assert not np.allclose(fresh.predict(children), predicted, atol=1e-5)
    fresh.load_weights(path)
    np.testing.assert_allclose(fresh.predict(children), predicted, rtol=1e-6, atol=1e-7)


# -------------------------------------------------------------------- report
def _report(root, name, env=None):
    return subprocess.run(
        [sys.executable, "-m", "pnas.report", name, "--root", str(root)],
        cwd=root, capture_output=True, text=True, timeout=TIMEOUT_S,
        env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
    )


def _ok_record(sr_no, stage, child, reward, mul_ops, predicted=None):
    record = {
        "sr_no": sr_no, "stage": stage, "child": list(child), "architecture": SPACE.parse(child),
        "representation_string": SPACE.representation_string(child), "status": "ok",
        "reward": reward, "test_accuracy": reward - 0.01, "mul_ops": mul_ops,
        # Binary MACs below mul_ops: the first layer's MACs on the real-valued image are not binary.
        "footprint": {"packed_kib": mul_ops / 10000, "float32_kib": mul_ops / 300, "binary_macs": mul_ops - 1000},
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
        assert _is_png(out / name), name
    summary = (out / "summary.txt").read_text()
    assert result.stdout == summary + f"Plots written to {tmp_path / 'logs' / 'hand'}/\n"
    lines = summary.splitlines()
    assert lines[0] == "7 children: 6 trained, 1 failed; 1 candidate over the op budget (MAX_MUL_OPS) skipped"
    # Stage 2: predictions 0.7, 0.6, 0.5 against rewards 0.90, 0.85, 0.50 (the failed child left out).
    assert lines[1] == "Encoder Spearman rank correlation at b = 2: 1.000"
    assert lines[2] == "Top 5 architectures:"
    rows = lines[4:9]
    assert [int(row.split()[0]) for row in rows] == [4, 5, 1, 2, 7]  # by reward; sr_no 3 (0.40) left out
    best = records[3]
    assert lines[3].split()[3:5] == ["bin.", "MACs"]
    assert rows[0].split()[:5] == ["4", "0.9000", "0.8900", "32712", "3.37"]  # binary MACs, not mul_ops
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


def test_pareto_front_on_a_hand_made_set():
    points = [(100, 0.5), (200, 0.4), (200, 0.6), (300, 0.6), (400, 0.9), (50, 0.1), (500, 0.8), (50, 0.05)]
    records = [{"footprint": {"binary_macs": m}, "reward": r} for m, r in points]
    front = report.pareto_front(records)
    assert [(report.binary_macs(r), r["reward"]) for r in front] == [(50, 0.1), (100, 0.5), (200, 0.6), (400, 0.9)]
    assert report.pareto_front([]) == []


# ----------------------------------------------- a real search, as a user runs it
NAME = "insight"
CLI_TINY = [
    f"--operators={OPS!r}", "--B=2", "--K_=2", "--MAX_EPOCHS=1", "--TRAIN_SIZE=200", "--NUM_CELLS=1",
    "--NUM_CELL_FILTERS=[4]", "--DENSE_LAYERS=[10]", "--RNN_TRAINING_EPOCHS=2", f"--EXPERIMENT_NAME={NAME}",
]
PROGRESS = re.compile(
    r"^\[b (\d)/2 \| child (\d+)/(\d+) \| #(\d+) of ~5 \| elapsed \d+:\d\d:\d\d \| "
    r"ETA (\?|\d+:\d\d:\d\d) \| best (-|\d\.\d{4})\] (\[.*\])$",
    flags=re.M,
)


def _env():
    return dict(os.environ, MNIST_DATA_DIR=str(MNIST_DIR), MNIST_MIRRORS="http://127.0.0.1:9/",
                PYTHONPATH=str(REPO_ROOT), TF_CPP_MIN_LOG_LEVEL="3")


def _run(argv, cwd):
    return subprocess.run(argv, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=TIMEOUT_S)


def _ok(result):
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def cli_search(tmp_path_factory):
    """A tiny search run by train.py (VERBOSE=0), then its retrain command at VERBOSE 0 and 2."""
    from mnist.download_mnist import MnistUnavailableError, ensure_mnist

    try:
        ensure_mnist(MNIST_DIR)
    except MnistUnavailableError as exc:
        pytest.skip(f"MNIST is not available: {exc}")
    folder = tmp_path_factory.mktemp("cli")
    search = _ok(_run([sys.executable, str(TRAIN), *CLI_TINY, "--VERBOSE=0"], folder))
    command = [line for line in search.stdout.splitlines() if line.startswith("python train.py -ta True")]
    assert len(command) == 1, search.stdout[-3000:]
    argv = shlex.split(command[0])
    assert argv[:2] == ["python", "train.py"]
    retrain = [sys.executable, str(TRAIN), *argv[2:], "--NUM_EPOCHS=1", "--TRAIN_SIZE=200"]
    verbose_folder = tmp_path_factory.mktemp("cli_verbose")
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        quiet = pool.submit(_run, [*retrain, "--VERBOSE=0"], folder)
        loud = pool.submit(_run, [*retrain, "--VERBOSE=2"], verbose_folder)
        return folder, search, command[0], quiet.result(), loud.result()


def test_search_prints_progress_for_every_child(cli_search):
    folder, search, _, _, _ = cli_search
    records = _jsonl(folder / "architectures" / f"{NAME}.jsonl")
    assert len(records) == 5
    progress = PROGRESS.findall(search.stdout)
    assert [(int(b), int(i), int(n), int(sr)) for b, i, n, sr, *_ in progress] == [
        (1, 1, 3, 1), (1, 2, 3, 2), (1, 3, 3, 3), (2, 1, 2, 4), (2, 2, 2, 5)
    ]
    assert "b 1/2" in search.stdout and "b 2/2" in search.stdout
    etas = [eta for *_, eta, _, _ in progress]
    assert etas[0] == "?" and all(eta != "?" for eta in etas[1:])
    bests = [best for *_, best, _ in progress]
    assert bests[0] == "-"
    for k, best in enumerate(bests[1:], start=1):
        assert best == f"{max(r['reward'] for r in records[:k]):.4f}"
    assert [arch for *_, arch in progress] == [str(r["architecture"]) for r in records]
    assert "Encoder Spearman rank correlation at b = 2: " in search.stdout


def test_search_ends_with_the_summary_and_the_plots(cli_search):
    folder, search, command, _, _ = cli_search
    records = _jsonl(folder / "architectures" / f"{NAME}.jsonl")
    summary = (folder / "logs" / NAME / "summary.txt").read_text()
    assert summary in search.stdout
    assert "Top 5 architectures:" in summary
    best = max(records, key=lambda r: r["reward"])
    assert command in summary
    assert command.endswith(f'--REPRESENTATION_STRING="{best["representation_string"]}"')
    assert f"--EXPERIMENT_NAME={NAME}" in command and '--NUM_CELL_FILTERS="[4]"' in command
    for name in PLOTS:
        assert _is_png(folder / "logs" / NAME / name), name


def test_the_printed_retrain_command_runs(cli_search):
    _, _, _, quiet, loud = cli_search
    best_line = "Training architecture "
    _ok(quiet)
    _ok(loud)
    assert best_line in quiet.stdout
    assert re.search(r"^Best validation accuracy 0\.\d{4} at epoch 1$", quiet.stdout, flags=re.M)
    total = re.search(r"^total +\d+ +\d+ +(\d+) +(\d+)$", quiet.stdout, flags=re.M)  # the footprint table
    assert total
    # One figure per name: the binary MACs line repeats the table's 1-bit MACs; mul_ops is their sum with
    # the 32-bit ones (every MAC of a binary-weight layer, the original's count).
    binary, floating = int(total[1]), int(total[2])
    assert (f"Binary MACs (binary inputs and weights, as Larq counts) {binary}, 32-bit MACs {floating}, "
            f"mul_ops {binary + floating}, ") in quiet.stdout


def test_verbose_sets_the_keras_epoch_lines(cli_search):
    _, search, _, quiet, loud = cli_search
    assert "val_accuracy" not in search.stdout
    assert "val_accuracy" not in quiet.stdout
    assert re.search(r"^\d+/\d+ - .* - loss: .* - val_accuracy: \d\.\d{4}$", loud.stdout, flags=re.M)
