"""Tests of the PNAS cell space: input_lookback_depth=-1 (the previous cell's input) end to end.

Input values follow the original: -1 the previous cell's input, 0 the cell
input, k >= 1 block k; the one-hot index of value v is v - input_lookback_depth.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import itertools  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from conftest import random_child, raw_children, synthetic_batch  # noqa: E402
from pnas.encoder import Encoder, RepresentationError, StateSpace, tokens  # noqa: E402
from pnas.model import OPERATORS, model_fn  # noqa: E402

DEFAULT_OPS = ["3x3 sep-bconv", "5x5 sep-bconv", "1x7-7x1 bconv", "3x3 bconv"]
TWO_OPS = ["3x3 bconv", "3x3 maxpool"]


# ------------------------------------------------------------ brute force
def _network_key(child):
    """A complete invariant of the network a child describes, by brute force.

    The smallest flat tuple over every relabelling of the blocks (inputs
    renumbered, whether or not a block then reads a later one) and every
    swap of each block's operands: two children get the same key exactly
    when their cells are the same graph. Written independently of
    `StateSpace.canonical` (no operand sorting, no order validity).
    """
    blocks = [child[i : i + 4] for i in range(0, len(child), 4)]
    best = None
    for order in itertools.permutations(range(len(blocks))):
        new_of = {old: new for new, old in enumerate(order)}
        relabelled = []
        for old in order:
            in1, op1, in2, op2 = blocks[old]
            in1, in2 = (k if k <= 0 else new_of[k - 1] + 1 for k in (in1, in2))
            relabelled.append(((in1, op1, in2, op2), (in2, op2, in1, op1)))
        for variant in itertools.product(*relabelled):
            flat = sum(variant, ())
            if best is None or flat < best:
                best = flat
    return best


def _random_relabelling(space, child, rng):
    """The child with its blocks in a random allowed order and random operand swaps."""
    blocks = [child[i : i + 4] for i in range(0, len(child), 4)]
    while True:
        order = rng.permutation(len(blocks))
        new_of = {int(old): new for new, old in enumerate(order)}
        out = []
        for position, old in enumerate(order):
            in1, op1, in2, op2 = blocks[old]
            in1, in2 = (k if k <= 0 else new_of[k - 1] + 1 for k in (in1, in2))
            if rng.random() < 0.5:
                in1, op1, in2, op2 = in2, op2, in1, op1
            out.append((in1, op1, in2, op2))
        if all(b[0] in space.block_inputs(p) and b[2] in space.block_inputs(p) for p, b in enumerate(out)):
            return sum(out, ())


# ------------------------------------------------------------------- space
def test_inputs_are_numbered_as_in_the_original():
    space = StateSpace(3, DEFAULT_OPS, -1, None)
    # The original: input values range(input_lookback_depth, B); -1 = H_{c-1}.
    assert space.input_values == [-1, 0, 1, 2]
    assert space.input_size == 4 and space.op_size == 4
    assert space.block_inputs(0) == [-1, 0]
    assert space.block_inputs(2) == [-1, 0, 1, 2]
    assert StateSpace(3, DEFAULT_OPS, -1, 1).block_inputs(2) == [-1, 0, 1]
    assert StateSpace(3, DEFAULT_OPS, -1, 0).block_inputs(2) == [-1, 0]
    assert StateSpace(3, DEFAULT_OPS, 0, None).block_inputs(2) == [0, 1, 2]


@pytest.mark.parametrize(
    "lookback, lookforward, operators, blocks",
    [
        (-1, 0, TWO_OPS, 3),
        (-1, 1, TWO_OPS, 3),
        (-1, None, TWO_OPS, 3),
        (0, None, TWO_OPS, 3),
        (-1, None, DEFAULT_OPS, 2),
    ],
)
def test_expansion_is_one_child_per_distinct_network(lookback, lookforward, operators, blocks):
    space = StateSpace(blocks, operators, lookback, lookforward)
    children = space.initial_children()
    for b in range(1, blocks + 1):
        if b > 1:
            children = space.expand(children)
        raw = raw_children(space, b)
        keys = {c: _network_key(c) for c in raw}
        canonical = {c: space.canonical(c) for c in raw}
        # Same canonical form exactly when same network...
        pairs = {(canonical[c], keys[c]) for c in raw}
        assert len(pairs) == len(set(canonical.values())) == len(set(keys.values()))
        # ...and the expansion holds each network once, in canonical form.
        assert len(children) == len(set(children))
        assert set(children) == set(canonical.values())
        assert space.stage_sizes(None)[b - 1] == len(set(keys.values()))


def test_counts_of_the_default_operators_with_lookback():
    # Flat cells (lookforward 0): a block is a multiset of 2 of the 2 * 4
    # operands, C(9, 2) = 36, and a cell a multiset of blocks: C(37, 2), C(38, 3).
    assert StateSpace(3, DEFAULT_OPS, -1, 0).stage_sizes(None) == [36, 666, 8436]
    # With lookforward None, 2 blocks: the 666 flat pairs plus 36 first blocks
    # times the 78 - 36 = 42 second blocks that read block 1.
    assert StateSpace(2, DEFAULT_OPS, -1, None).stage_sizes(None) == [36, 666 + 36 * 42]


@pytest.mark.parametrize("lookback, lookforward, total", [(-1, None, 292), (0, 0, 193), (-1, 0, 292)])
def test_print_total_models_counts_the_stages_of_the_search(lookback, lookforward, total, capsys):
    space = StateSpace(3, DEFAULT_OPS, lookback, lookforward)
    assert space.print_total_models(128) == total
    out = capsys.readouterr().out
    first = 36 if lookback else 10
    assert f"Children trained at b = 1: {first}" in out
    assert "Children trained at b = 3: 128" in out
    assert f"Total number of children to train: {total}" in out


def test_print_state_space_names_the_previous_cell_input(capsys):
    StateSpace(3, DEFAULT_OPS, -1, None).print_state_space()
    out = capsys.readouterr().out
    assert "Block inputs: block 1 [-1, 0], block 2 [-1, 0, 1], block 3 [-1, 0, 1, 2] (-1 = previous cell's input" in out
    assert "Input lookback depth: -1" in out and "Input lookforward depth: None" in out
    # train.py's lookforward 0: no block reads another, though 1 is an input value of the space.
    StateSpace(2, DEFAULT_OPS).print_state_space()
    assert "Block inputs: block 1 [0], block 2 [0] (0 = cell input" in capsys.readouterr().out


@pytest.mark.parametrize("lookforward", [0, 1, None])
def test_canonical_is_idempotent_and_invariant_under_allowed_reorders(lookforward):
    space = StateSpace(4, DEFAULT_OPS, -1, lookforward)
    rng = np.random.default_rng(0)
    for _ in range(150):
        child = random_child(space, rng, int(rng.integers(1, 5)))
        form = space.canonical(child)
        assert space.canonical(form) == form
        assert _network_key(form) == _network_key(child)
        for _ in range(3):
            assert space.canonical(_random_relabelling(space, child, rng)) == form


def test_canonical_keeps_the_two_cell_inputs_apart_and_sorts_them_first():
    space = StateSpace(3, DEFAULT_OPS, -1, None)
    assert space.canonical((0, 1, -1, 1)) == (-1, 1, 0, 1)
    assert space.canonical((-1, 0, -1, 0)) != space.canonical((0, 0, 0, 0))
    # Flat blocks reading -1 or 0 are sorted; the -1 block comes first.
    assert space.canonical((0, 2, 0, 2, -1, 3, 0, 0)) == (-1, 3, 0, 0, 0, 2, 0, 2)
    # A block that reads block 1 keeps block 1 before it, whatever sorts first.
    child = (0, 3, 0, 3, -1, 0, 1, 2)
    assert space.canonical(child) == child
    # Two equal blocks, the third reading both or one of them twice: different networks.
    both, one = (0, 1, 0, 1, 0, 1, 0, 1, 1, 0, 2, 0), (0, 1, 0, 1, 0, 1, 0, 1, 1, 0, 1, 0)
    assert space.canonical(both) != space.canonical(one)
    assert space.canonical(one) == space.canonical((0, 1, 0, 1, 0, 1, 0, 1, 2, 0, 2, 0))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"input_lookback_depth": -2},
        {"input_lookback_depth": 1},
        {"input_lookback_depth": True},
        {"input_lookback_depth": -1.0},
        {"input_lookforward_depth": -1},
        {"input_lookforward_depth": True},
    ],
)
def test_unsupported_depths_raise(kwargs):
    name, value = next(iter(kwargs.items()))
    with pytest.raises(ValueError, match=name):
        StateSpace(3, DEFAULT_OPS, **kwargs)


# ---------------------------------------------------------------- encoding
def test_representation_string_of_a_lookback_child():
    space = StateSpace(3, DEFAULT_OPS, -1, None)
    child = (-1, 0, 0, 3, 1, 2, -1, 1)
    text = space.representation_string(child)
    assert text == (
        "[[1. 0. 0. 0.]] [[1. 0. 0. 0.]] [[0. 2. 0. 0.]] [[0. 0. 0. 4.]] "
        "[[0. 0. 3. 0.]] [[0. 0. 3. 0.]] [[1. 0. 0. 0.]] [[0. 2. 0. 0.]]"
    )
    assert space.from_representation_string(text) == child
    assert space.decode(space.encode(child)) == child
    assert space.parse(child) == [-1, "3x3 sep-bconv", 0, "3x3 bconv", 1, "1x7-7x1 bconv", -1, "5x5 sep-bconv"]
    assert space.unparse(space.parse(child)) == child


@pytest.mark.parametrize("lookforward", [0, 1, None])
def test_encodings_round_trip_for_random_lookback_children(lookforward):
    space = StateSpace(3, DEFAULT_OPS, -1, lookforward)
    rng = np.random.default_rng(1)
    for _ in range(50):
        child = random_child(space, rng, int(rng.integers(1, 4)))
        arrays = space.encode(child)
        assert all(a.shape == (1, 4) for a in arrays)  # B + 1 inputs, 4 operators
        for i, (array, value) in enumerate(zip(arrays, child)):
            index = value + 1 if i % 2 == 0 else value
            assert array[0, index] == index + 1 and np.count_nonzero(array) == 1
        assert space.decode(arrays) == child
        assert space.from_representation_string(space.representation_string(child)) == child


@pytest.mark.parametrize(
    "lookforward, text",
    [
        (None, "[[1. 0. 0.]] [[1. 0. 0. 0.]] [[1. 0. 0.]] [[1. 0. 0. 0.]]"),  # lookback-0 size
        (None, "[[0. 0. 3. 0.]] [[1. 0. 0. 0.]] [[1. 0. 0. 0.]] [[1. 0. 0. 0.]]"),  # block 1 reads itself
        (0, "[[1. 0. 0. 0.]] [[1. 0. 0. 0.]] [[1. 0. 0. 0.]] [[1. 0. 0. 0.]] "
            "[[0. 0. 3. 0.]] [[1. 0. 0. 0.]] [[1. 0. 0. 0.]] [[1. 0. 0. 0.]]"),  # block 2 reads block 1
    ],
)
def test_bad_lookback_representation_strings_raise(lookforward, text):
    with pytest.raises(RepresentationError):
        StateSpace(3, DEFAULT_OPS, -1, lookforward).from_representation_string(text)


def test_lookback_strings_do_not_fit_a_lookback_0_space():
    text = StateSpace(3, DEFAULT_OPS, -1, None).representation_string((-1, 0, 0, 0))
    with pytest.raises(RepresentationError, match="size 3"):
        StateSpace(3, DEFAULT_OPS).from_representation_string(text)


def test_tokens_number_inputs_by_one_hot_index_and_the_encoder_vocab_grows():
    space = StateSpace(3, DEFAULT_OPS, -1, None)
    # -1 -> 1, 0 -> 2, block k -> k + 2; operator j -> 4 + j + 1. Token 0 is padding only.
    assert tokens(space, (-1, 0, 0, 3, 2, 1, 1, 2)) == [1, 5, 2, 8, 4, 6, 3, 7]
    assert tokens(StateSpace(3, DEFAULT_OPS), (0, 0, 2, 3)) == [1, 4, 3, 7]
    keras.utils.set_random_seed(0)
    encoder = Encoder(space, controller_cells=4, epochs=1)
    embedding = encoder.models[0].layers[0]
    assert embedding.input_dim == space.input_size + space.op_size + 1 == 9
    children = space.initial_children()[:3] + space.expand(space.initial_children()[:1])[-3:]
    assert max(max(tokens(space, c)) for c in children) == 8
    # An out-of-range token would fail the embedding lookup.
    assert np.all(np.isfinite(encoder.predict(children)))


# ------------------------------------------------------------------- model
@pytest.mark.parametrize("op", list(OPERATORS))
def test_every_operator_on_every_input_builds_trains_and_round_trips(op):
    keras.utils.set_random_seed(0)
    space = StateSpace(2, list(OPERATORS), -1, None)
    # `op` reads the previous cell's input, the cell input and block 1's output.
    child = space.canonical(space.unparse([-1, op, 0, op, 1, op, -1, op]))
    assert sorted(child[0::2]) == [-1, -1, 0, 1]
    text = space.representation_string(child)
    actions = space.parse(space.from_representation_string(text))
    assert space.unparse(actions) == child
    model, mul_ops = model_fn(actions, num_cells=3, num_cell_filters=[2, 3, 2], dense_layers=[10])
    assert model.output_shape == (None, 10)
    assert mul_ops > 0
    x, y = synthetic_batch(4)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="squared_hinge", run_eagerly=True)
    before = [w.copy() for w in model.get_weights()]
    assert np.isfinite(model.train_on_batch(x, y))
    after = model.get_weights()
    assert all(np.all(np.isfinite(w)) for w in after)
    assert any(not np.array_equal(a, b) for a, b in zip(before, after))


def test_previous_cell_input_is_reduced_to_the_cell_input_resolution():
    actions = [-1, "3x3 maxpool", 0, "3x3 bconv"]
    model, _ = model_fn(actions, num_cells=4, num_cell_filters=[4, 5, 6, 7], dense_layers=[10])
    shapes = {layer.name: layer.output.shape for layer in model.layers}
    # Cell 0 has no previous cell: input -1 is the image itself, unreduced.
    assert not any(name.startswith("c0_previous") for name in shapes)
    # Cell c reads the input of cell c - 1 (28, 14, 7) at the size of its own (14, 7, 4),
    # with 2 * ceil(F / 2) channels; 7 -> 4 needs the zero row of the shifted path.
    assert shapes["c1_previous_sign"] == (None, 14, 14, 6)
    assert shapes["c2_previous_sign"] == (None, 7, 7, 6)
    assert shapes["c3_previous_sign"] == (None, 4, 4, 8)
    # The max pooling of the reduced input keeps its channels next to the conv's.
    assert shapes["c3_b0"] == (None, 2, 2, 8 + 7)


def test_factorized_reduction_reads_even_and_odd_pixels():
    from pnas.model import _factorized_reduction, _Layers

    layers = _Layers(float_twin=True)
    inputs = keras.Input((7, 7, 1))
    reduced = _factorized_reduction(inputs, 2, "r", layers)
    model = keras.Model(inputs, reduced)
    for name in ("r_even", "r_odd"):
        model.get_layer(name).set_weights([np.ones((1, 1, 1, 1), np.float32)])
    before_bn = keras.Model(inputs, model.get_layer("r").output)
    x = np.arange(49, dtype=np.float32).reshape(1, 7, 7, 1)
    out = keras.ops.convert_to_numpy(before_bn(x))
    np.testing.assert_array_equal(out[0, :, :, 0], x[0, ::2, ::2, 0])
    odd = np.zeros((4, 4), np.float32)
    odd[:3, :3] = x[0, 1::2, 1::2, 0]  # the last row and column are the zero padding
    np.testing.assert_array_equal(out[0, :, :, 1], odd)


def test_mul_ops_count_the_reduction():
    F1, F2 = 4, 6
    cell1 = 2 * 14 * 14 * 3 * 3 * 1 * F1  # both operators read the image
    reduction = 2 * 14 * 14 * 1 * 1 * 1 * 3  # two 1x1 convs of ceil(6 / 2) filters on the image
    cell2 = 7 * 7 * 3 * 3 * 6 * F2 + 7 * 7 * 3 * 3 * (2 * F1) * F2
    dense = 7 * 7 * (2 * F2) * 10
    _, mul_ops = model_fn(
        [-1, "3x3 bconv", 0, "3x3 bconv"], num_cells=2, num_cell_filters=[F1, F2], dense_layers=[10]
    )
    assert mul_ops == cell1 + reduction + cell2 + dense == 58212


# ---------------------------------------------------------------- settings
def test_train_settings_accept_lookback_and_unlimited_lookforward():
    import train

    from pnas.config import SearchConfig

    assert train.INPUT_LOOKBACK_DEPTH == 0 and train.INPUT_LOOKFORWARD_DEPTH == 0
    _, settings, overridden = train.parse_args(["--INPUT_LOOKBACK_DEPTH=-1", "--INPUT_LOOKFORWARD_DEPTH=None"])
    assert settings["INPUT_LOOKBACK_DEPTH"] == -1 and settings["INPUT_LOOKFORWARD_DEPTH"] is None
    assert "--INPUT_LOOKBACK_DEPTH=-1" in train.retrain_args(settings, overridden)
    config = SearchConfig.from_settings(settings).identity_dict()
    assert config["INPUT_LOOKBACK_DEPTH"] == -1 and config["INPUT_LOOKFORWARD_DEPTH"] is None


@pytest.mark.parametrize("override", ["--INPUT_LOOKBACK_DEPTH=-2", "--INPUT_LOOKBACK_DEPTH=1",
                                      "--INPUT_LOOKFORWARD_DEPTH=-1"])
def test_bad_depth_settings_fail_with_one_line(override, capsys):
    import train

    with pytest.raises(SystemExit) as info:
        train.parse_args([override])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and override[2:].split("=")[0] in err
