"""Keras' BatchNormalization computed by TensorFlow's fused kernel: the same layer, fewer graph ops.

Keras 3's `BatchNormalization` builds its statistics and the normalisation
from elementwise ops: about 36 graph ops per layer forward in training and
40 more for the gradient. TensorFlow's `FusedBatchNormV3` does the forward
pass in one op and its gradient in one (`FusedBatchNormGradV3`), which
shortens the trace of a network's train step. The layer keeps Keras'
weights, config, moving-statistics rule and inference formula, so a model
saved with it holds the same four vectors per channel.
"""

import keras


@keras.saving.register_keras_serializable(package="binarized")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` on the last axis, by TensorFlow's fused kernel.

    The same values as Keras' layer up to float32 rounding, but for one
    detail: in training the batch's mean and (biased) variance normalise the
    input, and the moving statistics move as Keras moves them (`moving *
    momentum + batch * (1 - momentum)`), but the batch variance they average
    is the unbiased one, times n / (n - 1) for n values per channel (as
    TensorFlow's kernel returns it, and as the fused BatchNorm of tf.keras 2
    and TensorFlow 1, the original code's, averaged it). At inference the
    moving statistics normalise the input. It takes
    the fused path on TensorFlow for inputs of rank 2 or 4 normalised on the
    last axis, without a mask, renorm or synchronisation; in every other
    case it is Keras' layer.

    Args:
        **kwargs: The arguments of `keras.layers.BatchNormalization`.
    """

    def _fused(self, inputs, mask):
        return (keras.backend.backend() == "tensorflow" and mask is None and not self.renorm
                and not self.synchronized and len(inputs.shape) in (2, 4)
                and self.axis in (-1, len(inputs.shape) - 1) and inputs.shape[-1] is not None
                and keras.backend.standardize_dtype(inputs.dtype) == "float32")

    def call(self, inputs, training=None, mask=None):
        if not self._fused(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        channels = inputs.shape[-1]
        x = inputs if len(inputs.shape) == 4 else tf.reshape(inputs, (-1, 1, 1, channels))
        gamma = self.gamma if self.scale else tf.ones((channels,), inputs.dtype)
        beta = self.beta if self.center else tf.zeros((channels,), inputs.dtype)
        train = bool(training) and self.trainable
        # In training the kernel also averages the moving statistics (exponential_avg_factor).
        y, mean, variance, _, _, _ = tf.raw_ops.FusedBatchNormV3(
            x=x, scale=gamma, offset=beta, mean=self.moving_mean, variance=self.moving_variance,
            epsilon=self.epsilon, exponential_avg_factor=1.0 - self.momentum if train else 1.0,
            is_training=train,
        )
        if train:
            self.moving_mean.assign(mean)
            self.moving_variance.assign(variance)
        return y if len(inputs.shape) == 4 else tf.reshape(y, tf.shape(inputs))
