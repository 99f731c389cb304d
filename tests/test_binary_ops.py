"""Tests of binarized.binary_ops: forward values and straight-through gradients.

Gradients are checked against NumPy references in eager mode (GradientTape)
and in graph mode (tf.function), on tensors and on Keras Variables.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from binarized.binary_layers import BinaryDense  # noqa: E402
from binarized.binary_ops import (  # noqa: E402
    binarize,
    binary_sigmoid,
    binary_tanh,
    hard_sigmoid,
    round_through,
    scale_gradient,
)

POINTS = np.array([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0], dtype=np.float32)
# 1 where |x| <= 1: the BNN paper's gradient cancellation, inclusive at ±1.
UNIT_MASK = (np.abs(POINTS) <= 1.0).astype(np.float32)


# --- forward values -------------------------------------------------------


def test_binary_tanh_forward_is_sign_without_zero():
    out = keras.ops.convert_to_numpy(binary_tanh(POINTS))
    np.testing.assert_array_equal(out, [-1, -1, -1, 1, 1, 1, 1])
    assert out.dtype == np.float32


def test_binary_tanh_maps_negative_zero_and_tiny_values_to_plus_minus_one():
    x = np.array([-0.0, 1e-30, -1e-30], dtype=np.float32)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(binary_tanh(x)), [1, 1, -1])


def test_hard_sigmoid_forward():
    out = keras.ops.convert_to_numpy(hard_sigmoid(POINTS))
    np.testing.assert_array_equal(out, [0, 0, 0.25, 0.5, 0.75, 1, 1])


def test_round_through_forward():
    x = np.array([-1.6, -0.5, 0.4, 0.5, 1.5, 2.5, 2.6], dtype=np.float32)
    out = keras.ops.convert_to_numpy(round_through(x))
    # Half to even, as keras.ops.round and np.round.
    np.testing.assert_array_equal(out, [-2, -0, 0, 0, 2, 2, 3])


def test_binary_sigmoid_forward():
    out = keras.ops.convert_to_numpy(binary_sigmoid(POINTS))
    np.testing.assert_array_equal(out, [0, 0, 0, 1, 1, 1, 1])


@pytest.mark.parametrize("H", [1.0, 0.5, 0.3])
def test_binarize_forward_is_plus_minus_h(H):
    W = (POINTS * H).astype(np.float32)
    out = keras.ops.convert_to_numpy(binarize(W, H))
    np.testing.assert_array_equal(out, np.float32(H) * np.array([-1, -1, -1, 1, 1, 1, 1], np.float32))


def test_scale_gradient_forward_is_identity():
    out = keras.ops.convert_to_numpy(scale_gradient(POINTS, 3.0))
    np.testing.assert_array_equal(out, POINTS)


# --- gradients --------------------------------------------------------------

# (name, function of x, NumPy reference gradient at x = POINTS * scale, scale)
GRADIENT_CASES = [
    ("binary_tanh", binary_tanh, UNIT_MASK, 1.0),
    ("binarize_H1", lambda w: binarize(w, 1.0), UNIT_MASK, 1.0),
    ("binarize_H0.5", lambda w: binarize(w, 0.5), UNIT_MASK, 0.5),
    ("binarize_H0.3", lambda w: binarize(w, 0.3), UNIT_MASK, 0.3),
    ("round_through", round_through, np.ones_like(POINTS), 1.0),
    ("binary_sigmoid", binary_sigmoid, 0.5 * UNIT_MASK, 1.0),
    # d/dx clip((x + 1) / 2, 0, 1): 0.5 where |x| <= 1 (the clip passes the
    # gradient at its bounds, matching binary_sigmoid's estimator), else 0.
    ("hard_sigmoid", hard_sigmoid, 0.5 * UNIT_MASK, 1.0),
    ("scale_gradient_3", lambda x: scale_gradient(x, 3.0), np.full_like(POINTS, 3.0), 1.0),
    ("scale_gradient_0.25", lambda x: scale_gradient(x, 0.25), np.full_like(POINTS, 0.25), 1.0),
]


def _grad_eager(fn, x):
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = keras.ops.sum(fn(x))
    return tape.gradient(y, x)


def _grad_graph(fn, x):
    @tf.function
    def g(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = keras.ops.sum(fn(x))
        return tape.gradient(y, x)

    return g(x)


def _grad_eager_variable(fn, x):
    v = keras.Variable(x)
    with tf.GradientTape() as tape:
        y = keras.ops.sum(fn(v))
    return tape.gradient(y, v)


def _grad_graph_variable(fn, x):
    v = keras.Variable(x)

    @tf.function
    def g():
        with tf.GradientTape() as tape:
            y = keras.ops.sum(fn(v))
        return tape.gradient(y, v)

    return g()


@pytest.mark.parametrize(
    "grad_fn", [_grad_eager, _grad_graph, _grad_eager_variable, _grad_graph_variable],
    ids=["eager_tensor", "graph_tensor", "eager_variable", "graph_variable"],
)
@pytest.mark.parametrize("name, fn, expected, scale", GRADIENT_CASES, ids=[c[0] for c in GRADIENT_CASES])
def test_gradient_matches_numpy_reference(grad_fn, name, fn, expected, scale):
    x = (POINTS * np.float32(scale)).astype(np.float32)
    if grad_fn in (_grad_eager, _grad_graph):
        x = tf.constant(x)
    grad = grad_fn(fn, x)
    assert grad is not None, f"no gradient reached the input of {name}"
    np.testing.assert_allclose(keras.ops.convert_to_numpy(grad), expected, rtol=1e-6, atol=0)


def test_gradient_is_multiplied_by_upstream_gradient():
    """The STE mask multiplies the incoming gradient, it does not replace it."""
    x = tf.constant(POINTS)
    upstream = np.arange(1, 8, dtype=np.float32)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = keras.ops.sum(binary_tanh(x) * upstream)
    grad = tape.gradient(y, x).numpy()
    np.testing.assert_array_equal(grad, upstream * UNIT_MASK)


# A tf.Variable, a Keras variable and a tensor: the same values and gradients, eager and traced.
SIGN_INPUTS = np.concatenate([POINTS, [-1e-30, 1e-30, -0.0, 0.999, 1.001, -3.5]]).astype(np.float32)
SIGN_UPSTREAM = np.arange(1, len(SIGN_INPUTS) + 1, dtype=np.float32)


def _sign_value_and_gradient(kind, traced):
    """binary_tanh of SIGN_INPUTS held as `kind`, and d sum(upstream * sign) / d input."""
    if kind == "tf.Variable":
        source = tf.Variable(SIGN_INPUTS)
    elif kind == "keras.Variable":
        source = keras.Variable(SIGN_INPUTS)
    else:
        source = tf.constant(SIGN_INPUTS)

    def value_and_gradient():
        with tf.GradientTape() as tape:
            if kind == "tensor":
                tape.watch(source)
            y = binary_tanh(source)
            loss = tf.reduce_sum(y * SIGN_UPSTREAM)
        return y, tape.gradient(loss, source)

    y, grad = (tf.function(value_and_gradient) if traced else value_and_gradient)()
    assert grad is not None, f"no gradient reached the {kind}"
    return keras.ops.convert_to_numpy(y), keras.ops.convert_to_numpy(grad)


@pytest.mark.parametrize("traced", [False, True], ids=["eager", "traced"])
@pytest.mark.parametrize("kind", ["tf.Variable", "keras.Variable", "tensor"])
def test_binary_tanh_of_variables_and_tensors_alike(kind, traced):
    y, grad = _sign_value_and_gradient(kind, traced)
    np.testing.assert_array_equal(y, np.where(SIGN_INPUTS >= 0, 1.0, -1.0))
    np.testing.assert_array_equal(grad, SIGN_UPSTREAM * (np.abs(SIGN_INPUTS) <= 1))
    assert y.dtype == np.float32


# --- inside model.fit -------------------------------------------------------


@pytest.mark.parametrize("run_eagerly", [False, True], ids=["graph", "eager"])
def test_ops_train_inside_model_fit(run_eagerly):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.choice([-1.0, 1.0], size=(32, 6)).astype(np.float32)
    y = rng.choice([-1.0, 1.0], size=(32, 1)).astype(np.float32)
    model = keras.Sequential(
        [
            keras.Input((6,)),
            BinaryDense(8, H=1.0, kernel_lr_multiplier=None),
            keras.layers.BatchNormalization(),
            keras.layers.Activation(binary_tanh),
            BinaryDense(1, H=1.0, kernel_lr_multiplier=None),
            keras.layers.BatchNormalization(),
        ]
    )
    before = [w.numpy().copy() for w in model.trainable_weights]
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="squared_hinge", run_eagerly=run_eagerly)
    history = model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    after = [w.numpy() for w in model.trainable_weights]
    # Both latent kernels moved: the gradient got through binary_tanh and binarize.
    kernels = [i for i, w in enumerate(model.trainable_weights) if "kernel" in w.path]
    assert len(kernels) == 2
    for i in kernels:
        assert not np.array_equal(before[i], after[i]), model.trainable_weights[i].path
