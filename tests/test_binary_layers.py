"""Tests of binarized.binary_layers.

Each binary layer is checked against the plain Keras float layer run with
sign(latent kernel) as its weights; the latent kernels are checked for their
initialisation, clipping and learning-rate multiplier; and a model using every
layer is saved and reloaded in a fresh process.
"""

import math
import os
import re
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from binarized.binary_layers import (  # noqa: E402
    BinaryConv2D,
    BinaryDense,
    BinarySeparableConv2D,
    Clip,
    DropoutNoScale,
)
from binarized.binary_ops import binary_tanh  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
HELPER = Path(__file__).resolve().parent / "_binarized_roundtrip_helper.py"


def _sign(w):
    """The binarizer's sign: 0 maps to +1."""
    return np.where(w >= 0, 1.0, -1.0).astype(np.float32)


def _pm1(rng, shape):
    return rng.choice([-1.0, 1.0], size=shape).astype(np.float32)


def _latent(rng, shape, h):
    """Latent weights in [-h, h], with some exact zeros (which binarize to +h)."""
    w = rng.uniform(-h, h, size=shape).astype(np.float32)
    w.flat[:: max(1, w.size // 5)] = 0.0
    return w


def _np(x):
    # Variable.numpy() avoids a NumPy 2 copy-keyword DeprecationWarning inside Keras.
    return x.numpy() if isinstance(x, keras.Variable) else keras.ops.convert_to_numpy(x)


# --- binary layer == float layer on sign(weights) ---------------------------


@pytest.mark.parametrize("H", [1.0, 0.5])
def test_binary_dense_equals_dense_on_sign_weights(H):
    rng = np.random.default_rng(0)
    x = _pm1(rng, (5, 7))
    layer = BinaryDense(4, H=H)
    layer.build(x.shape)
    latent = _latent(rng, (7, 4), H)
    layer.kernel.assign(latent)
    ref = keras.layers.Dense(4, use_bias=False)
    ref.build(x.shape)
    ref.set_weights([_sign(latent)])
    expected = np.float32(H) * _np(ref(x))
    np.testing.assert_array_equal(_np(layer(x)), expected)


CONV_CASES = [
    # (padding, strides, H)
    ("same", 1, 1.0),
    ("valid", 1, 1.0),
    ("same", 2, 1.0),
    ("valid", 2, 1.0),
    ("same", 1, 0.5),
]


@pytest.mark.parametrize("padding, strides, H", CONV_CASES)
def test_binary_conv2d_equals_conv2d_on_sign_weights(padding, strides, H):
    rng = np.random.default_rng(1)
    x = _pm1(rng, (2, 7, 7, 3))
    layer = BinaryConv2D(4, 3, strides=strides, padding=padding, H=H)
    layer.build(x.shape)
    latent = _latent(rng, (3, 3, 3, 4), H)
    layer.kernel.assign(latent)
    ref = keras.layers.Conv2D(4, 3, strides=strides, padding=padding, use_bias=False)
    ref.build(x.shape)
    ref.set_weights([_sign(latent)])
    out = _np(layer(x))
    np.testing.assert_array_equal(out, np.float32(H) * _np(ref(x)))
    assert out.shape == layer.compute_output_shape(x.shape)


@pytest.mark.parametrize("padding, strides, H", CONV_CASES)
def test_binary_separable_conv2d_equals_separable_conv2d_on_sign_weights(padding, strides, H):
    rng = np.random.default_rng(2)
    x = _pm1(rng, (2, 7, 7, 3))
    layer = BinarySeparableConv2D(4, 3, strides=strides, padding=padding, depth_multiplier=2, H=H)
    layer.build(x.shape)
    depthwise = _latent(rng, (3, 3, 3, 2), H)
    pointwise = _latent(rng, (1, 1, 6, 4), H)
    layer.depthwise_kernel.assign(depthwise)
    layer.pointwise_kernel.assign(pointwise)
    ref = keras.layers.SeparableConv2D(
        4, 3, strides=strides, padding=padding, depth_multiplier=2, use_bias=False
    )
    ref.build(x.shape)
    ref.set_weights([_sign(depthwise), _sign(pointwise)])
    out = _np(layer(x))
    # Both kernels are ±H, so the output scales by H * H.
    np.testing.assert_array_equal(out, np.float32(H * H) * _np(ref(x)))
    assert out.shape == layer.compute_output_shape(x.shape)


# --- latent kernels: initialisation, 'Glorot', clipping ----------------------


def test_glorot_h_uses_fans_times_kernel_area():
    conv = BinaryConv2D(4, 3, H="Glorot")
    conv.build((None, 8, 8, 2))
    assert conv.kernel_h == pytest.approx(math.sqrt(1.5 / (18 + 36)), rel=1e-12)
    assert conv.kernel_multiplier == pytest.approx(1.0 / math.sqrt(1.5 / (18 + 36)), rel=1e-12)

    dense = BinaryDense(3, H="Glorot")
    dense.build((None, 5))
    assert dense.kernel_h == pytest.approx(math.sqrt(1.5 / 8), rel=1e-12)


@pytest.mark.parametrize("H", [0.5, "Glorot"])
def test_initial_latent_weights_are_uniform_within_h(H):
    keras.utils.set_random_seed(0)
    layer = BinaryConv2D(64, 3, H=H)
    layer.build((None, 8, 8, 16))
    h = layer.kernel_h
    w = _np(layer.kernel)
    assert w.min() >= -h and w.max() <= h
    # Spread over the whole range, centred: uniform, not a narrow init.
    assert w.min() < -0.95 * h and w.max() > 0.95 * h
    assert abs(w.mean()) < 0.02 * h
    assert np.std(w) == pytest.approx(h / math.sqrt(3), rel=0.03)


@pytest.mark.parametrize(
    "make_layer, x_shape",
    [
        (lambda: BinaryDense(4, H=0.5, kernel_lr_multiplier=None), (8, 6)),
        (lambda: BinaryConv2D(4, 3, padding="same", H="Glorot"), (4, 5, 5, 2)),
        (lambda: BinarySeparableConv2D(4, 3, padding="same", H=0.5), (4, 5, 5, 2)),
    ],
    ids=["dense", "conv_glorot", "separable"],
)
def test_latent_weights_are_clipped_after_a_training_step(make_layer, x_shape):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = _pm1(rng, x_shape)
    layer = make_layer()
    model = keras.Sequential([keras.Input(x_shape[1:]), layer, keras.layers.Flatten()])
    y = _pm1(rng, (x_shape[0], model.output_shape[-1]))
    # A huge learning rate pushes every latent weight with a gradient far past ±H.
    model.compile(optimizer=keras.optimizers.SGD(1000.0), loss="mse")
    model.fit(x, y, batch_size=x_shape[0], epochs=1, verbose=0)
    kernels = _latent_kernels(layer)
    assert kernels
    for w, h in kernels:
        values = _np(w)
        assert np.all(np.abs(values) <= np.float32(h)), w.path
        # Every latent weight got a gradient, so the large step pushed most onto ±H.
        at_bound = np.abs(values) == np.float32(h)
        assert at_bound.mean() > 0.5, w.path


def _latent_kernels(layer):
    """(latent kernel variable, its bound H) pairs of a binary layer."""
    names = [("kernel", "kernel_h"), ("depthwise_kernel", "depthwise_h"), ("pointwise_kernel", "pointwise_h")]
    return [(getattr(layer, v), getattr(layer, h)) for v, h in names if hasattr(layer, h)]


# --- learning-rate multiplier ----------------------------------------------


def _dense_grad(layer, x, upstream):
    with tf.GradientTape() as tape:
        loss = keras.ops.sum(layer(x) * upstream)
    return _np(tape.gradient(loss, layer.kernel))


def test_kernel_lr_multiplier_scales_the_sgd_step():
    rng = np.random.default_rng(3)
    x = _pm1(rng, (4, 5))
    upstream = rng.integers(-2, 3, size=(4, 3)).astype(np.float32)
    latent = rng.uniform(-0.5, 0.5, size=(5, 3)).astype(np.float32)
    m, lr = 4.0, 2.0**-10

    twin = BinaryDense(3, H=1.0, kernel_lr_multiplier=None)
    twin.build(x.shape)
    twin.kernel.assign(latent)
    grad = _dense_grad(twin, x, upstream)
    # All latent weights are inside [-H, H], so the straight-through gradient is x^T upstream.
    np.testing.assert_array_equal(grad, x.T @ upstream)

    layer = BinaryDense(3, H=1.0, kernel_lr_multiplier=m)
    layer.build(x.shape)
    layer.kernel.assign(latent)
    with tf.GradientTape() as tape:
        loss = keras.ops.sum(layer(x) * upstream)
    grads = tape.gradient(loss, [layer.kernel])
    keras.optimizers.SGD(lr).apply_gradients(zip(grads, [layer.kernel]))
    moved = _np(layer.kernel)
    # The step stays far from the clip bound of 1, so clipping plays no part.
    assert np.abs(moved).max() < 0.9
    np.testing.assert_allclose(latent - moved, np.float32(m * lr) * grad, rtol=1e-5, atol=1e-7)
    assert np.abs(latent - moved).max() > 0


def test_glorot_lr_multiplier_is_inverse_glorot_h():
    rng = np.random.default_rng(4)
    x = _pm1(rng, (4, 5))
    upstream = _pm1(rng, (4, 3))
    latent = rng.uniform(-0.1, 0.1, size=(5, 3)).astype(np.float32)
    h_glorot = math.sqrt(1.5 / (5 + 3))

    layer = BinaryDense(3, H=1.0, kernel_lr_multiplier="Glorot")
    layer.build(x.shape)
    assert layer.kernel_multiplier == pytest.approx(1.0 / h_glorot, rel=1e-12)
    layer.kernel.assign(latent)
    twin = BinaryDense(3, H=1.0, kernel_lr_multiplier=None)
    twin.build(x.shape)
    twin.kernel.assign(latent)
    np.testing.assert_allclose(
        _dense_grad(layer, x, upstream), _dense_grad(twin, x, upstream) / h_glorot, rtol=1e-6
    )


# --- argument validation -----------------------------------------------------


@pytest.mark.parametrize(
    "make, pattern",
    [
        (lambda: BinaryDense(0), "units=0"),
        (lambda: BinaryDense(-3), "units=-3"),
        (lambda: BinaryConv2D(0, 3), "filters=0"),
        (lambda: BinarySeparableConv2D(-1, 3), "filters=-1"),
        (lambda: BinaryDense(4, H=0), "H=0"),
        (lambda: BinaryDense(4, H=-0.5), "H=-0.5"),
        (lambda: BinaryConv2D(4, 3, H="foo"), "H='foo'"),
        (lambda: BinaryDense(4, kernel_lr_multiplier="bar"), "kernel_lr_multiplier='bar'"),
        (lambda: BinaryConv2D(4, 3, padding="full"), "padding='full'"),
        (lambda: BinarySeparableConv2D(4, 3, padding="full"), "padding='full'"),
        (lambda: BinaryConv2D(4, 0), "kernel_size=0"),
        (lambda: BinarySeparableConv2D(4, 3, depth_multiplier=0), "depth_multiplier=0"),
        (lambda: DropoutNoScale(1.5), "rate=1.5"),
        (lambda: DropoutNoScale(-0.1), "rate=-0.1"),
    ],
)
def test_invalid_arguments_raise_value_error_naming_them(make, pattern):
    with pytest.raises(ValueError, match=re.escape(pattern)):
        make()


# --- DropoutNoScale --------------------------------------------------------------


def test_dropout_no_scale_training_zeroes_without_rescaling():
    rng = np.random.default_rng(5)
    x = rng.uniform(0.5, 2.0, size=(100, 100)).astype(np.float32)
    layer = DropoutNoScale(0.3, seed=1)
    out = _np(layer(x, training=True))
    dropped = out == 0
    # Kept units pass unchanged: no 1 / (1 - rate) factor.
    np.testing.assert_array_equal(out[~dropped], x[~dropped])
    assert dropped.mean() == pytest.approx(0.3, abs=0.03)


def test_dropout_no_scale_inference_is_identity():
    x = np.random.default_rng(6).uniform(-1, 1, size=(8, 10)).astype(np.float32)
    layer = DropoutNoScale(0.5)
    np.testing.assert_array_equal(_np(layer(x, training=False)), x)
    np.testing.assert_array_equal(_np(layer(x)), x)


# --- configs and saving ----------------------------------------------------------


CONFIG_CASES = [
    # (class, constructor kwargs); every kwarg must come back from get_config.
    (BinaryDense, dict(units=4, H="Glorot", kernel_lr_multiplier=2.0, use_bias=True, name="d")),
    (BinaryDense, dict(units=4, H=0.5, kernel_lr_multiplier=None)),
    (BinaryConv2D, dict(filters=4, kernel_size=(3, 2), strides=(2, 2), padding="same", H=0.25)),
    (BinarySeparableConv2D, dict(filters=4, kernel_size=(3, 3), strides=(1, 2), depth_multiplier=2, H="Glorot")),
    (DropoutNoScale, dict(rate=0.25, seed=3)),
    (Clip, dict(min_value=-0.5, max_value=0.5)),
    (Clip, dict(min_value=-0.2, max_value=0.7)),
]


@pytest.mark.parametrize("cls, kwargs", CONFIG_CASES, ids=[c[0].__name__ for c in CONFIG_CASES])
def test_config_round_trip(cls, kwargs):
    config = cls(**kwargs).get_config()
    for key, value in kwargs.items():
        assert config[key] == value, key
    clone = cls.from_config(config)
    assert clone.get_config() == config


def test_clip_bounds():
    w = np.array([-2.0, -0.25, 0.0, 0.9], np.float32)
    np.testing.assert_array_equal(_np(Clip(0.5)(w)), [-0.5, -0.25, 0.0, 0.5])
    np.testing.assert_array_equal(_np(Clip(-0.125, 0.75)(w)), [-0.125, -0.125, 0.0, 0.75])
    with pytest.raises(ValueError, match=re.escape("min_value=1.0, max_value=0.5")):
        Clip(1.0, 0.5)


def _every_layer_model():
    return keras.Sequential(
        [
            keras.Input((8, 8, 2)),
            BinaryConv2D(4, 3, padding="same", H="Glorot"),
            keras.layers.BatchNormalization(),
            keras.layers.Activation(binary_tanh),
            BinarySeparableConv2D(4, 3, strides=2, depth_multiplier=2, H=1.0),
            keras.layers.BatchNormalization(),
            keras.layers.Activation(binary_tanh),
            keras.layers.Flatten(),
            DropoutNoScale(0.2, seed=0),
            BinaryDense(3, H=0.5, kernel_lr_multiplier=None),
            keras.layers.BatchNormalization(),
        ]
    )


@pytest.mark.slow  # a fresh Python process that imports TensorFlow
def test_keras_file_round_trip_in_fresh_process(tmp_path):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(7)
    x = rng.uniform(-1, 1, size=(6, 8, 8, 2)).astype(np.float32)
    y = _pm1(rng, (6, 3))
    model = _every_layer_model()
    model.compile(optimizer="adam", loss="squared_hinge")
    model.fit(x, y, batch_size=6, epochs=1, verbose=0)

    model_path = tmp_path / "model.keras"
    model.save(model_path)
    np.save(tmp_path / "x.npy", x)
    expected = _np(model(x, training=False))
    np.save(tmp_path / "expected.npy", expected)

    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, str(HELPER), str(model_path), str(tmp_path / "x.npy"), str(tmp_path / "got.npy")],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    got = np.load(tmp_path / "got.npy")
    assert got.shape == (6, 3)
    np.testing.assert_allclose(got, np.load(tmp_path / "expected.npy"), rtol=0, atol=1e-6)


# --- a tiny binary network learns ------------------------------------------------


@pytest.mark.slow  # 160 training steps
def test_tiny_binary_network_learns_toy_problem():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)

    def data(n):
        x = rng.uniform(-1, 1, size=(n, 2)).astype(np.float32)
        y = np.where(x[:, 0] - x[:, 1] >= 0.2, 1.0, -1.0).astype(np.float32)[:, None]
        return x, y

    x, y = data(512)
    x_test, y_test = data(512)
    model = keras.Sequential(
        [
            keras.Input((2,)),
            BinaryDense(32),
            keras.layers.BatchNormalization(),
            keras.layers.Activation(binary_tanh),
            BinaryDense(1),
            keras.layers.BatchNormalization(),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="squared_hinge")
    model.fit(x, y, batch_size=64, epochs=20, verbose=0)
    pred = np.where(_np(model(x_test, training=False)) >= 0, 1.0, -1.0)
    accuracy = np.mean(pred == y_test)
    majority = max(np.mean(y_test == 1), np.mean(y_test == -1))
    assert accuracy > 0.9, f"accuracy {accuracy:.3f} (majority class {majority:.3f})"
