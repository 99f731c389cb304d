"""Tests for pnas/model.py: every operator builds and trains, and the MAC count."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from conftest import synthetic_batch  # noqa: E402
from pnas.model import OPERATORS, check_operators, model_fn  # noqa: E402


def test_there_are_ten_operators():
    assert len(OPERATORS) == 10


@pytest.mark.parametrize("op", list(OPERATORS))
def test_every_operator_builds_and_trains_one_step(op):
    keras.utils.set_random_seed(0)
    # Block 1 applies `op` to the cell input (stride 2); block 2 applies it to
    # block 1's output (stride 1), as input_lookforward_depth >= 1 allows.
    actions = [0, op, 0, op, 1, op, 0, "3x3 bconv"]
    model, mul_ops = model_fn(actions, num_cells=2, num_cell_filters=[4, 6], dense_layers=[8, 10])
    assert model.output_shape == (None, 10)
    assert isinstance(mul_ops, int) and mul_ops > 0
    x, y = synthetic_batch(8)
    # Eagerly: one step does not repay tracing a graph (the search tests cover graph mode).
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="squared_hinge", run_eagerly=True)
    before = [w.copy() for w in model.get_weights()]
    loss = model.train_on_batch(x, y)
    assert np.isfinite(loss)
    after = model.get_weights()
    assert all(np.all(np.isfinite(w)) for w in after)
    assert any(not np.array_equal(a, b) for a, b in zip(before, after))
    assert np.all(np.isfinite(keras.ops.convert_to_numpy(model(x, training=False))))


def test_the_float_twin_evaluates_in_a_graph():
    """BatchNorm then tanh: with oneDNN, TensorFlow 2.21's remapper fused them into a kernel it lacks
    ("Fusion is not implemented: [FusedBatchNorm,Tanh]") at the twin's first `predict`."""
    keras.utils.set_random_seed(0)
    model, _ = model_fn([0, "5x5 sep-bconv", 0, "1x7-7x1 bconv"], num_cells=2, num_cell_filters=[4, 6],
                        dense_layers=[10], float_twin=True)
    x, _ = synthetic_batch(8)
    predicted = model.predict(x, verbose=0)
    np.testing.assert_allclose(predicted, keras.ops.convert_to_numpy(model(x, training=False)), atol=1e-5)


def test_unknown_operator_raises_listing_the_valid_ones():
    with pytest.raises(ValueError) as info:
        model_fn([0, "9x9 magic", 0, "3x3 bconv"], num_cells=1, num_cell_filters=[4], dense_layers=[10])
    message = str(info.value)
    assert "9x9 magic" in message
    assert all(op in message for op in OPERATORS)
    with pytest.raises(ValueError, match="9x9 magic"):
        check_operators(["3x3 bconv", "9x9 magic"])
    check_operators(list(OPERATORS))  # all valid: no error


@pytest.mark.parametrize(
    "actions",
    [
        [0, "3x3 bconv", 1, "3x3 bconv"],  # block 1 cannot read itself
        [-2, "3x3 bconv", 0, "3x3 bconv"],  # -1 (the previous cell's input) is the furthest back
        [0, "3x3 bconv", 0],  # not 4 entries per block
        [],
    ],
)
def test_bad_actions_raise(actions):
    with pytest.raises(ValueError):
        model_fn(actions, num_cells=1, num_cell_filters=[4], dense_layers=[10])


def test_filters_must_match_cells():
    with pytest.raises(ValueError, match="num_cells"):
        model_fn([0, "3x3 bconv", 0, "3x3 bconv"], num_cells=2, num_cell_filters=[4], dense_layers=[10])


# ---------------------------------------------------------------- mul_ops
# Hand counts, per image. A 'same' convolution with stride 2 maps 28 -> 14 -> 7.
#   conv:      H_out * W_out * kh * kw * C_in * F
#   separable: H_out * W_out * (kh * kw * C_in * M + C_in * M * F), with the depth
#              multiplier M = max(1, ceil(F / C_in)) that model.py gives a thin input
#   dense:     inputs * units
#   pooling and identity: 0


def test_mul_ops_of_one_cell():
    F = 4
    conv = 14 * 14 * 3 * 3 * 1 * F
    M = 4  # 1 input channel, 4 filters
    sep = 14 * 14 * (3 * 3 * 1 * M + 1 * M * F)
    dense = (14 * 14 * 2 * F) * 10  # one block: two operators of F channels each
    _, mul_ops = model_fn([0, "3x3 bconv", 0, "3x3 sep-bconv"], num_cells=1, num_cell_filters=[F], dense_layers=[10])
    assert conv + sep + dense == 32928
    assert mul_ops == 32928


def test_mul_ops_of_two_cells_and_two_dense_layers():
    F1, F2 = 4, 6
    cell1 = 14 * 14 * 3 * 3 * 1 * F1 + 14 * 14 * (3 * 3 * 1 * F1 + 1 * F1 * F1)  # M = 4
    c_in = 2 * F1  # cell 1's output channels
    cell2 = 7 * 7 * 3 * 3 * c_in * F2 + 7 * 7 * (3 * 3 * c_in + c_in * F2)  # M = 1
    dense = (7 * 7 * 2 * F2) * 12 + 12 * 10
    _, mul_ops = model_fn(
        [0, "3x3 bconv", 0, "3x3 sep-bconv"], num_cells=2, num_cell_filters=[F1, F2], dense_layers=[12, 10]
    )
    assert mul_ops == cell1 + cell2 + dense == 17248 + 27048 + 7176


def test_mul_ops_of_factorized_pooling_and_identity_operators():
    F = 4
    # Block 1: 1x7 with stride (1, 2): 28 x 14 out, then 7x1 with stride (2, 1): 14 x 14;
    # max pooling keeps the cell input's single channel. Output: F + 1 channels.
    block1 = 28 * 14 * 1 * 7 * 1 * F + 14 * 14 * 7 * 1 * F * F
    # Block 2: identity of block 1 (same size: stride 1) and a 5x5 conv of the cell input.
    block2 = 14 * 14 * 5 * 5 * 1 * F
    channels = (F + 1) + ((F + 1) + F)
    dense = 14 * 14 * channels * 10
    actions = [0, "1x7-7x1 bconv", 0, "3x3 maxpool", 1, "linear", 0, "5x5 bconv"]
    model, mul_ops = model_fn(actions, num_cells=1, num_cell_filters=[F], dense_layers=[10])
    assert model.output_shape == (None, 10)
    assert mul_ops == block1 + block2 + dense == 79968


def test_calibrate_batchnorm_makes_inference_match_the_calibration_batch():
    from pnas.manager import calibrate_batchnorm

    keras.utils.set_random_seed(0)
    actions = [0, "3x3 sep-bconv", 0, "1x7-7x1 bconv"]
    model, _ = model_fn(actions, num_cells=2, num_cell_filters=[4, 6], dense_layers=[8, 10],
                        dropout=(True, 0.2, 0.5))
    x, _ = synthetic_batch(64)
    # Fresh moving statistics (mean 0, variance 1) do not describe x.
    assert not np.allclose(model(x, training=False), model(x, training=True), atol=1e-3)
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    drops = [layer for layer in model.layers if hasattr(layer, "rate")]
    momenta, rates = [n.momentum for n in norms], [d.rate for d in drops]
    assert sorted(rates) == [0.2, 0.5]
    calibrate_batchnorm(model, x)
    # Momentum and dropout are restored for training.
    assert [n.momentum for n in norms] == momenta
    assert [d.rate for d in drops] == rates
    # Inference now normalises every layer with the batch's own statistics, as training mode does
    # (compared without dropout, which training mode would apply), up to the moving variance's
    # Bessel factor n / (n - 1) (binarized.normalization): at most 64 / 63 here, for the dense layers.
    for layer in drops:
        layer.rate = 0.0
    inference, training = model(x, training=False).numpy(), model(x, training=True).numpy()
    np.testing.assert_allclose(inference, training, rtol=0.01, atol=1e-3)
    assert np.array_equal(inference.argmax(axis=1), training.argmax(axis=1))
