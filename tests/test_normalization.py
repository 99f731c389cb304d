"""binarized.normalization.FusedBatchNormalization against Keras' BatchNormalization."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from binarized.normalization import FusedBatchNormalization  # noqa: E402


def _train_step_and_inference(cls, x, upstream, momentum):
    layer = cls(axis=-1, momentum=momentum, epsilon=1e-6)
    layer.build(x.shape)
    rng = np.random.default_rng(1)
    channels = x.shape[-1]
    layer.set_weights([rng.normal(1, 0.2, channels).astype("float32"), rng.normal(0, 0.2, channels).astype("float32"),
                       rng.normal(0, 1, channels).astype("float32"), rng.uniform(0.5, 2, channels).astype("float32")])

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            loss = tf.reduce_sum(y * upstream)
        return y, tape.gradient(loss, [x, layer.gamma, layer.beta])

    y, grads = step(x)
    moving = [layer.moving_mean.numpy(), layer.moving_variance.numpy()]
    return y.numpy(), [g.numpy() for g in grads], moving, layer(x, training=False).numpy()


@pytest.mark.parametrize("shape", [(64, 5, 5, 6), (64, 12)], ids=["conv", "dense"])
def test_the_fused_batchnorm_computes_keras_batchnorm(shape):
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(1.5, 2.0, shape).astype("float32"))
    upstream = tf.constant(rng.normal(0, 1, shape).astype("float32"))
    momentum = 0.9
    keras_y, keras_grads, (keras_mean, keras_var), _ = _train_step_and_inference(
        keras.layers.BatchNormalization, x, upstream, momentum)
    fused_y, fused_grads, (fused_mean, fused_var), fused_inference = _train_step_and_inference(
        FusedBatchNormalization, x, upstream, momentum)
    np.testing.assert_allclose(fused_y, keras_y, rtol=1e-4, atol=1e-4)
    for fused, plain in zip(fused_grads, keras_grads):
        np.testing.assert_allclose(fused, plain, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(fused_mean, keras_mean, rtol=1e-5, atol=1e-6)
    # The moving variance averages the batch's unbiased variance, n / (n - 1) times Keras' biased one.
    n = np.prod(shape[:-1])
    start_var = (keras_var - (1 - momentum) * np.var(x.numpy().reshape(-1, shape[-1]), axis=0)) / momentum
    expected = momentum * start_var + (1 - momentum) * np.var(x.numpy().reshape(-1, shape[-1]), axis=0) * n / (n - 1)
    np.testing.assert_allclose(fused_var, expected, rtol=1e-5)
    assert not np.allclose(fused_var, keras_var, rtol=1e-6, atol=0)
    # Inference uses the moving statistics by Keras' formula.
    layer = FusedBatchNormalization(axis=-1, epsilon=1e-6)
    layer.build(x.shape)
    layer.set_weights([np.full(shape[-1], 2.0, "float32"), np.full(shape[-1], 0.5, "float32"), fused_mean, fused_var])
    expected = 2.0 * (x.numpy() - fused_mean) / np.sqrt(fused_var + 1e-6) + 0.5
    np.testing.assert_allclose(layer(x, training=False).numpy(), expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(fused_inference.shape, shape)


def test_the_fused_batchnorm_falls_back_to_keras_off_its_path():
    """A rank-3 input is not fused: it is Keras' layer, value for value."""
    x = tf.constant(np.random.default_rng(0).normal(0, 1, (8, 4, 3)).astype("float32"))
    fused, plain = FusedBatchNormalization(), keras.layers.BatchNormalization()
    y_fused, y_plain = fused(x, training=True), plain(x, training=True)
    np.testing.assert_array_equal(y_fused.numpy(), y_plain.numpy())
    np.testing.assert_array_equal(fused.moving_variance.numpy(), plain.moving_variance.numpy())


def test_the_fused_batchnorm_round_trips_its_config():
    layer = FusedBatchNormalization(momentum=0.8, epsilon=1e-6, name="bn")
    config = keras.saving.serialize_keras_object(layer)
    assert config["registered_name"] == "binarized>FusedBatchNormalization"
    again = keras.saving.deserialize_keras_object(config)
    assert type(again) is FusedBatchNormalization and again.momentum == 0.8 and again.epsilon == 1e-6
