"""Tests for pnas/encoder.py: the search space, its encodings and the LSTM surrogate."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import csv  # noqa: E402
import itertools  # noqa: E402

import numpy as np  # noqa: E402
import keras  # noqa: E402
import pytest  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from conftest import random_child, raw_children  # noqa: E402
from pnas.encoder import (  # noqa: E402
    Encoder, RepresentationError, RidgeSurrogate, StateSpace, new_surrogate, op_counts,
)

# The operators of train.py, which the original research code's logs were written with.
DEFAULT_OPS = ["3x3 sep-bconv", "5x5 sep-bconv", "1x7-7x1 bconv", "3x3 bconv"]
TWO_OPS = ["3x3 bconv", "3x3 maxpool"]


# ------------------------------------------------------------------- counts
def test_default_space_trains_193_children_with_beam_128(capsys):
    space = StateSpace(3, DEFAULT_OPS)
    assert space.stage_sizes(128) == [10, 55, 128]
    assert space.print_total_models(128) == 193
    assert "Total number of children to train: 193" in capsys.readouterr().out


def test_default_space_without_beam_has_220_distinct_three_block_cells():
    # With every block reading the cell input, a cell is a multiset of 3 blocks
    # out of the 10 distinct blocks: C(10 + 2, 3) = 220.
    assert StateSpace(3, DEFAULT_OPS).stage_sizes(None) == [10, 55, 220]


def test_two_operators_give_three_initial_children():
    space = StateSpace(2, TWO_OPS)
    assert space.initial_children() == [(0, 0, 0, 0), (0, 0, 0, 1), (0, 1, 0, 1)]


def _network(child):
    """An order-free description of a cell: the multiset of its blocks as expressions.

    Faithful while at most one block can be read (input_lookforward_depth <= 1):
    then no two readable blocks can have the same expression.
    """
    expressions = []
    for i in range(0, len(child), 4):
        in1, op1, in2, op2 = child[i : i + 4]
        operands = [(op, "x" if k == 0 else expressions[k - 1]) for k, op in ((in1, op1), (in2, op2))]
        expressions.append(tuple(sorted(operands, key=repr)))
    return tuple(sorted(expressions, key=repr))


@pytest.mark.parametrize("lookforward, operators", [(0, DEFAULT_OPS), (1, DEFAULT_OPS), (2, DEFAULT_OPS[:3])])
def test_expand_yields_exactly_the_distinct_canonical_children(lookforward, operators):
    space = StateSpace(3, operators, input_lookforward_depth=lookforward)
    children = space.initial_children()
    for blocks in (2, 3):
        children = space.expand(children)
        assert len(set(children)) == len(children)
        assert all(space.canonical(c) == c for c in children)
        raw = raw_children(space, blocks)
        # Brute force: the canonical forms of every raw child of this size...
        assert set(children) == {space.canonical(c) for c in raw}
        if lookforward <= 1:
            # ...are one per distinct network.
            assert len(children) == len({_network(c) for c in raw})


def test_lookforward_expansion_reaches_cells_whose_read_block_is_not_the_smallest():
    space = StateSpace(3, DEFAULT_OPS, input_lookforward_depth=1)
    # Block 3 reads block 1 = (0, 0, 0, 1); block 2 = (0, 0, 0, 0) sorts before it,
    # so the 2-block prefix is not in canonical (sorted) order.
    child = (0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 0)
    assert space.canonical(child) == child
    assert child in space.expand(space.expand(space.initial_children()))


def test_canonical_identifies_reorderings_of_blocks_that_no_block_reads():
    space = StateSpace(3, DEFAULT_OPS, input_lookforward_depth=1)
    reads_first = (1, 2, 0, 0)  # reads block 1
    forms = {
        space.canonical((0, 3, 0, 3) + reads_first + (0, 1, 0, 1)),
        space.canonical((0, 3, 0, 3) + (0, 1, 0, 1) + reads_first),
    }
    assert len(forms) == 1


def test_canonical_treats_swapped_operands_as_equal():
    space = StateSpace(3, DEFAULT_OPS)
    assert space.canonical((0, 3, 0, 0)) == space.canonical((0, 0, 0, 3)) == (0, 0, 0, 3)


def test_canonical_treats_permuted_flat_blocks_as_equal():
    space = StateSpace(3, DEFAULT_OPS)
    blocks = [(0, 3, 0, 1), (0, 2, 0, 2), (0, 0, 0, 3)]
    forms = {space.canonical(sum(p, ())) for p in itertools.permutations(blocks)}
    assert forms == {(0, 0, 0, 3, 0, 1, 0, 3, 0, 2, 0, 2)}


def test_canonical_keeps_the_order_of_blocks_that_read_block_outputs():
    space = StateSpace(2, DEFAULT_OPS, input_lookforward_depth=1)
    # Block 2 reads block 1's output: swapping the blocks would change the network.
    child = (0, 1, 0, 1, 1, 0, 0, 0)
    assert space.canonical(child) == (0, 1, 0, 1, 0, 0, 1, 0)
    # Sorted, the blocks would read as a different network.
    assert space.canonical(child) != (0, 0, 1, 0, 0, 1, 0, 1)
    # Flat cells are still sorted under the same depth.
    assert space.canonical((0, 1, 0, 1, 0, 0, 0, 0)) == (0, 0, 0, 0, 0, 1, 0, 1)


# ----------------------------------------------------------------- encoding
@pytest.mark.parametrize("lookforward", [0, 1])
def test_encodings_round_trip_for_random_children(lookforward):
    space = StateSpace(3, DEFAULT_OPS, input_lookforward_depth=lookforward)
    rng = np.random.default_rng(0)
    for _ in range(50):
        child = random_child(space, rng, int(rng.integers(1, 4)))
        arrays = space.encode(child)
        assert [a.shape for a in arrays] == [(1, 3) if i % 2 == 0 else (1, 4) for i in range(len(child))]
        assert all(a[0, v] == v + 1 and np.count_nonzero(a) == 1 for a, v in zip(arrays, child))
        assert space.decode(arrays) == child
        assert space.unparse(space.parse(child)) == child
        text = space.representation_string(child)
        assert space.from_representation_string(text) == child
        assert space.from_representation_string(f'"{text}"') == child


def test_original_representation_strings_decode():
    space = StateSpace(3, DEFAULT_OPS)
    child = space.from_representation_string("[[1. 0. 0.]] [[0. 0. 0. 4.]] [[1. 0. 0.]] [[1. 0. 0. 0.]]")
    assert space.parse(child) == [0, "3x3 bconv", 0, "3x3 sep-bconv"]
    child = space.from_representation_string("[[1. 0. 0.]] [[1. 0. 0. 0.]] [[1. 0. 0.]] [[1. 0. 0. 0.]]")
    assert space.parse(child) == [0, "3x3 sep-bconv", 0, "3x3 sep-bconv"]


def test_representation_string_prints_index_plus_one():
    space = StateSpace(3, DEFAULT_OPS)
    assert space.representation_string((0, 2, 0, 3)) == "[[1. 0. 0.]] [[0. 0. 3. 0.]] [[1. 0. 0.]] [[0. 0. 0. 4.]]"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "garbage",
        "[[1. 0. 0.]] [[1. 0. 0. 0.]] [[1. 0. 0.]] [[1. 0. 0. 0.]] trailing",
        "[[1. 0. 0.]] [[1. 0. 0. 0.]] [[1. 0. 0.]]",  # 3 arrays: not a whole block
        " ".join(["[[1. 0. 0.]] [[1. 0. 0. 0.]]"] * 8),  # 4 blocks > B = 3
        "[[1. 0.]] [[1. 0. 0. 0.]] [[1. 0.]] [[1. 0. 0. 0.]]",  # inputs of size 2, not B = 3
        "[[1. 0. 0.]] [[1. 0. 0.]] [[1. 0. 0.]] [[1. 0. 0.]]",  # operators of size 3, not 4
        "[[0. 0. 0.]] [[1. 0. 0. 0.]] [[1. 0. 0.]] [[1. 0. 0. 0.]]",  # no non-zero entry
        "[[1. 2. 0.]] [[1. 0. 0. 0.]] [[1. 0. 0.]] [[1. 0. 0. 0.]]",  # two non-zero entries
        "[[a b c]] [[1. 0. 0. 0.]] [[1. 0. 0.]] [[1. 0. 0. 0.]]",
        "[[0. 2. 0.]] [[1. 0. 0. 0.]] [[1. 0. 0.]] [[1. 0. 0. 0.]]",  # block 1 reads block 1
    ],
)
def test_bad_representation_strings_raise(text):
    space = StateSpace(3, DEFAULT_OPS)
    with pytest.raises(RepresentationError):
        space.from_representation_string(text)


# ------------------------------------------------------------------ encoder
def _synthetic_reward(child):
    """Mostly the fraction of operators that are op 0, plus smaller terms."""
    ops = np.array(child[1::2])
    return 0.1 + 0.6 * np.mean(ops == 0) + 0.2 * np.mean(ops == 1) + 0.02 * len(child) / 4


@pytest.mark.slow  # 20 epochs of the LSTM encoder
def test_encoder_learns_to_rank_a_synthetic_reward():
    import keras

    keras.utils.set_random_seed(0)
    space = StateSpace(2, DEFAULT_OPS)
    one_block = space.initial_children()
    two_block = space.expand(one_block)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(two_block))
    held_out = [two_block[i] for i in order[:15]]
    train = one_block + [two_block[i] for i in order[15:]]
    encoder = Encoder(space, controller_cells=16, epochs=20, learning_rate=3e-2)
    encoder.fit(train, [_synthetic_reward(c) for c in train])
    predicted = encoder.predict(held_out)
    rho = spearmanr(predicted, [_synthetic_reward(c) for c in held_out]).statistic
    assert rho > 0.8, (rho, predicted)


def test_predict_is_one_batched_call_and_masks_padding(monkeypatch):
    import keras

    keras.utils.set_random_seed(0)
    space = StateSpace(3, DEFAULT_OPS)
    encoder = Encoder(space, controller_cells=8, epochs=1)
    # Children of 1, 2 and 3 blocks in one batch: the shorter ones are padded.
    children = space.initial_children()[:4] + space.expand(space.initial_children()[:2])[:4]
    children += space.expand(children[4:6])[:4]
    alone = np.array([encoder.predict([c])[0] for c in children])
    model = encoder.models[0]
    calls = []
    original = model.predict

    def recording_predict(x, **kwargs):
        calls.append((np.asarray(x).shape, kwargs.get("batch_size")))
        return original(x, **kwargs)

    monkeypatch.setattr(model, "predict", recording_predict)
    together = encoder.predict(children, batch_size=5)
    assert calls == [((len(children), 12), 5)]
    np.testing.assert_allclose(together, alone, atol=1e-6)


def test_rank_orders_by_prediction_and_keeps_ties_stable():
    keras.utils.set_random_seed(0)
    space = StateSpace(3, DEFAULT_OPS)
    encoder = Encoder(space, controller_cells=8, epochs=2)
    parents = space.initial_children()
    encoder.fit(parents, [_synthetic_reward(c) for c in parents])
    candidates = space.expand(parents)
    predicted = encoder.predict(candidates)

    ranked = encoder.rank(candidates)

    assert sorted(c for c, _ in ranked) == sorted(candidates)
    scores = [s for _, s in ranked]
    assert scores == sorted(scores, reverse=True)
    assert dict(ranked) == pytest.approx(dict(zip(candidates, map(float, predicted))), abs=1e-6)
    # Equal predictions keep the candidates' order (a reproducible beam).
    encoder.predict = lambda children: np.zeros(len(children), np.float32)
    assert [c for c, _ in encoder.rank(candidates)] == candidates


def test_top_k_keeps_k_best_and_skips_rejected_children(tmp_path):
    from pnas.records import write_scores
    from pnas.search import top_k

    space = StateSpace(2, DEFAULT_OPS)
    candidates = space.expand(space.initial_children())
    ranked = [(c, 1.0 - i / 100) for i, c in enumerate(candidates)]
    beam, scores = top_k(ranked, 3)
    assert beam == candidates[:3] and scores == [1.0, 0.99, 0.98]
    beam, _ = top_k(ranked, 4, accept=lambda c: 3 not in c[1::2])
    assert beam == [c for c in candidates if 3 not in c[1::2]][:4]
    assert top_k(ranked, None)[0] == candidates

    path = tmp_path / "scores_2.csv"
    write_scores(str(path), space, ranked)
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["rank"]) for r in rows] == list(range(1, 56))
    assert [space.from_representation_string(r["representation_string"]) for r in rows] == candidates
    assert rows[0]["architecture"] == str(space.parse(candidates[0]))
    assert rows[1]["predicted_reward"] == "0.990000"
    # A ridge estimate beyond a reward's range is written clipped; the rank keeps the order.
    write_scores(str(path), space, [(candidates[0], 1.054), (candidates[1], 1.01), (candidates[2], -0.2)])
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["rank"], r["predicted_reward"]) for r in rows] == [("1", "1.000000"), ("2", "1.000000"), ("3", "0.000000")]


@pytest.mark.slow  # trains the LSTM encoder to fit its targets
@pytest.mark.parametrize(
    "targets, rewards",
    [("standardize", [0.80, 0.82, 0.86]), ("scaled", [0.975, 0.978, 0.985])],  # 'scaled' near 1, where 'raw' saturates
)
def test_standardized_targets_predict_in_reward_units_and_restore(tmp_path, targets, rewards):
    keras.utils.set_random_seed(0)
    space = StateSpace(2, ["3x3 bconv", "3x3 maxpool"])
    children = space.initial_children()
    path = str(tmp_path / "encoder.weights.h5")
    encoder = Encoder(space, controller_cells=8, epochs=30, learning_rate=1e-2, targets=targets)
    encoder.fit(children, rewards)
    encoder.save_weights(path)
    # The reward units are one of its files, so that copies of the weights (restore) take them along.
    assert encoder.weight_files(path) == [path, str(tmp_path / "encoder.units.json")]
    assert encoder.has_weights(path)
    assert encoder.target_mean == pytest.approx(np.mean(rewards))
    predicted = encoder.predict(children)
    assert np.all((predicted > min(rewards) - 0.1) & (predicted < max(rewards) + 0.1))  # rewards, not z-scores
    assert np.argmax(predicted) == 2
    if targets == "scaled":
        # The sigmoid's outputs sit about its middle, whatever the rewards' level.
        outputs = encoder.models[0].predict(encoder._batch(children), verbose=0)[:, 0]
        assert np.all((outputs > 0.2) & (outputs < 0.8)) and np.ptp(outputs) > 0.05
    keras.utils.set_random_seed(1)
    restored = Encoder(space, controller_cells=8, epochs=30, targets=targets)
    restored.load_weights(path)
    np.testing.assert_allclose(restored.predict(children), predicted, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="targets"):
        Encoder(space, targets="zscore")


def test_op_counts_count_each_operand_and_the_blocks():
    space = StateSpace(3, DEFAULT_OPS, input_lookback_depth=-1, input_lookforward_depth=None)
    child = (-1, 2, 0, 2, 1, 0, -1, 3)  # block 1 reads the cell inputs, block 2 block 1 and input -1
    x = op_counts(space, child)
    assert x.shape == (space.input_size * space.op_size + 1,)
    assert x[space.input_index(-1) * space.op_size + 2] == 1
    assert x[space.input_index(0) * space.op_size + 2] == 1
    assert x[space.input_index(1) * space.op_size + 0] == 1
    assert x[space.input_index(-1) * space.op_size + 3] == 1
    assert x.sum() == 4 + 2 and x[-1] == 2


def test_ridge_surrogate_ranks_unseen_cells_of_an_additive_reward(tmp_path):
    # A reward that is a sum over operands, as the ridge models it: trained on
    # the cells of <= 2 blocks it must order the unseen three-block cells.
    space = StateSpace(3, DEFAULT_OPS)
    value = {0: 0.03, 1: 0.01, 2: -0.01, 3: 0.0}
    reward = lambda c: 0.7 + sum(value[op] for op in c[1::2])  # noqa: E731
    cells = {1: space.initial_children()}
    cells[2] = space.expand(cells[1])
    cells[3] = space.expand(cells[2])
    ridge = new_surrogate(space, "ridge")
    assert isinstance(ridge, RidgeSurrogate) and ridge.steps is None
    loss = ridge.fit(cells[1] + cells[2], [reward(c) for c in cells[1] + cells[2]])
    assert loss < 1e-4
    rho = spearmanr(ridge.predict(cells[3]), [reward(c) for c in cells[3]]).statistic
    assert rho > 0.99
    assert ridge.rank(cells[3])[0][0] == (0, 0, 0, 0) * 3

    path = str(tmp_path / "encoder.weights.h5")
    ridge.save_weights(path)
    assert ridge.has_weights(path) and ridge.weight_files(path) == [str(tmp_path / "encoder.ridge.json")]
    restored = RidgeSurrogate(space)
    restored.load_weights(path)
    np.testing.assert_allclose(restored.predict(cells[3]), ridge.predict(cells[3]))
    with pytest.raises(ValueError, match="coefficients"):
        RidgeSurrogate(StateSpace(3, DEFAULT_OPS[:2])).load_weights(path)
    with pytest.raises(ValueError, match="kind"):
        new_surrogate(space, "tree")


def test_equivalent_forms_are_every_order_of_the_same_network():
    space = StateSpace(3, DEFAULT_OPS)
    child = (0, 0, 0, 1, 0, 2, 0, 3, 0, 1, 0, 2)  # three distinct blocks, each with distinct operands
    forms = space.equivalent_forms(child)
    assert len(forms) == len(set(forms)) == 6 * 2**3  # block orders x operand swaps
    assert forms[0] == space.canonical(child)
    assert {space.canonical(f) for f in forms} == {space.canonical(child)}
    assert space.equivalent_forms((0, 1, 0, 1)) == [(0, 1, 0, 1)]  # a block of two equal operands
    # Blocks that read other blocks keep their order; only operands swap, and the inputs follow.
    reads = StateSpace(3, DEFAULT_OPS, input_lookforward_depth=None)
    wired = (0, 0, 0, 1, 1, 2, 0, 3)
    assert set(reads.equivalent_forms(wired)) == {
        (0, 0, 0, 1, 0, 3, 1, 2), (0, 0, 0, 1, 1, 2, 0, 3), (0, 1, 0, 0, 0, 3, 1, 2), (0, 1, 0, 0, 1, 2, 0, 3),
    }


@pytest.mark.parametrize("readout", ["last", "mean"])
def test_an_augmented_encoder_predicts_one_value_per_network(readout):
    keras.utils.set_random_seed(0)
    space = StateSpace(3, DEFAULT_OPS)
    one = space.initial_children()
    two = space.expand(one)
    encoder = Encoder(space, controller_cells=8, epochs=2, augment=True, readout=readout)
    steps_before = encoder.steps
    encoder.fit(one + two[:10], [_synthetic_reward(c) for c in one + two[:10]])
    assert encoder.steps - steps_before == 2 * 20  # one form per child per epoch, batch 1
    child = (0, 2, 0, 1, 0, 0, 0, 3, 0, 1, 0, 2)
    forms = space.equivalent_forms(child)
    predicted = encoder.predict([forms[0], forms[7], forms[-1]])
    np.testing.assert_allclose(predicted, predicted[0], rtol=1e-6)


def test_the_mean_readout_averages_the_unpadded_outputs_only():
    keras.utils.set_random_seed(0)
    space = StateSpace(3, DEFAULT_OPS)
    encoder = Encoder(space, controller_cells=8, epochs=1, readout="mean", targets="standardize")
    children = space.initial_children()[:3] + space.expand(space.initial_children()[:1])[:3]
    together = encoder.predict(children)
    alone = np.array([encoder.predict([c])[0] for c in children])
    np.testing.assert_allclose(together, alone, atol=1e-6)
    # By hand: the mean of the LSTM's outputs over a 2-block cell's 8 tokens, through the Dense layer.
    model = encoder.models[0]
    embedding, lstm, pooling, dense = model.layers
    x = encoder._batch(children[3:4])[:, :8]
    outputs = np.asarray(lstm(embedding(x)))
    kernel, bias = (np.asarray(w) for w in dense.get_weights())
    np.testing.assert_allclose(together[3], (outputs.mean(axis=1) @ kernel + bias)[0, 0], rtol=1e-5)
    with pytest.raises(ValueError, match="readout"):
        Encoder(space, readout="max")
@pytest.mark.slow  # trains three LSTM encoders
def test_encoder_ensemble_trains_on_different_thirds_and_averages(tmp_path):
    space = StateSpace(2, TWO_OPS)
    keras.utils.set_random_seed(0)
    children = space.initial_children() + space.expand(space.initial_children())
    rewards = [0.1 + 0.05 * i for i in range(len(children))]  # distinct, to tell the samples apart
    assert len(children) == 9
    encoder = Encoder(space, controller_cells=8, epochs=2, ensemble=3, targets="raw")
    assert len(encoder.models) == 3
    seen = []
    for i, model in enumerate(encoder.models):
        def fit(x, y=None, _fit=model.fit, _i=i, **kwargs):
            if y is None:  # a tf.data pipeline of (x, y) batches (pnas.pipeline), shuffled as one
                batches = list(x.as_numpy_iterator())
                seen.append((_i, np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])))
            else:
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
    fresh = Encoder(space, controller_cells=8, epochs=2, ensemble=3, targets="raw")
    assert not np.allclose(fresh.predict(children), predicted, atol=1e-5)
    fresh.load_weights(path)
    np.testing.assert_allclose(fresh.predict(children), predicted, rtol=1e-6, atol=1e-7)
