"""Binary Keras 3 layers: latent float kernels, binarized in the forward pass.

Each binary layer keeps real-valued latent weights, initialised uniform in
[-H, H] and clipped to [-H, H] after every update, and convolves with
`binarize(kernel, H)`, i.e. ±H (Hubara et al. 2016, arXiv:1602.02830), computed by
`binary_kernel` together with the learning-rate multiplier below.
Activations are not binarized here: as in the original design, a separate
`keras.layers.Activation(binary_tanh)` follows the BatchNorm after each layer.

`kernel_lr_multiplier` scales the gradient of the latent kernel (identity in
the forward pass). With SGD that scales the kernel's update by the multiplier,
which is the BNN paper's per-layer learning-rate scaling. Adaptive optimizers
such as Adam normalise the gradient's scale away, so with them the multiplier
has (almost) no effect; use SGD where the scaling matters.
"""

import math

import keras
from keras import ops

from binarized.binary_ops import binary_kernel
from binarized.geometry import output_size
# Register `binarized>FusedBatchNormalization` and `binarized>FusedAdam`, which the search's
# children use: a saved child loads wherever its binary layers do.
from binarized.normalization import FusedBatchNormalization  # noqa: F401
from binarized.optimizers import FusedAdam  # noqa: F401

_PACKAGE = "binarized"
_PADDINGS = ("valid", "same")


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Clip(keras.constraints.Constraint):
    """Clips weights to [min_value, max_value] after every optimizer update.

    Args:
        min_value: Lower bound. With `max_value=None`, the bounds are
            `[-|min_value|, |min_value|]`.
        max_value: Upper bound, or None.
    """

    def __init__(self, min_value=-1.0, max_value=None):
        if max_value is None:
            min_value, max_value = -abs(min_value), abs(min_value)
        if not min_value < max_value:
            raise ValueError(
                f"Clip needs min_value < max_value, received min_value={min_value}, "
                f"max_value={max_value}."
            )
        self.min_value = float(min_value)
        self.max_value = float(max_value)

    def __call__(self, w):
        return ops.clip(w, self.min_value, self.max_value)

    def get_config(self):
        return {"min_value": self.min_value, "max_value": self.max_value}


def _check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"`{name}` must be a positive integer, received {name}={value!r}.")
    return value


def _check_pair(name, value):
    """Normalises an int or a pair of ints to a tuple of 2 positive ints."""
    pair = (value, value) if isinstance(value, int) and not isinstance(value, bool) else value
    try:
        pair = tuple(pair)
    except TypeError:
        pair = ()
    if len(pair) != 2 or any(
        isinstance(v, bool) or not isinstance(v, int) or v <= 0 for v in pair
    ):
        raise ValueError(
            f"`{name}` must be a positive int or a pair of positive ints, "
            f"received {name}={value!r}."
        )
    return pair


def _check_h(name, value):
    """`H` is a positive float or 'Glorot'."""
    if isinstance(value, str):
        if value != "Glorot":
            raise ValueError(f"`{name}` must be a positive float or 'Glorot', received {name}={value!r}.")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"`{name}` must be a positive float or 'Glorot', received {name}={value!r}.")
    return float(value)


def _check_multiplier(name, value):
    """`kernel_lr_multiplier` is a positive float, 'Glorot' or None."""
    if value is None:
        return None
    return _check_h(name, value)


def _check_padding(value):
    if not isinstance(value, str) or value.lower() not in _PADDINGS:
        raise ValueError(f"`padding` must be 'valid' or 'same', received padding={value!r}.")
    return value.lower()


def glorot_h(shape, fan_in_channels=None):
    """The BNN paper's Glorot magnitude `sqrt(1.5 / (fan_in + fan_out))`.

    For a kernel of shape (..., in, out), the fans are `in` and `out` times
    the kernel area (the product of the leading dimensions).

    Args:
        shape: Kernel shape.
        fan_in_channels: Overrides `in` (a depthwise kernel sees 1 channel
            per output).
    """
    area = math.prod(shape[:-2])
    fan_in = area * (shape[-2] if fan_in_channels is None else fan_in_channels)
    fan_out = area * shape[-1]
    return math.sqrt(1.5 / (fan_in + fan_out))


class _BinaryKernelLayer(keras.layers.Layer):
    """Shared logic: resolving `H` and the multiplier, making latent kernels."""

    def __init__(self, H=1.0, kernel_lr_multiplier="Glorot", use_bias=False, **kwargs):
        super().__init__(**kwargs)
        self.H = _check_h("H", H)
        self.kernel_lr_multiplier = _check_multiplier("kernel_lr_multiplier", kernel_lr_multiplier)
        self.use_bias = bool(use_bias)

    def _add_binary_kernel(self, name, shape, fan_in_channels=None):
        """Adds a latent kernel; returns (variable, H, lr multiplier)."""
        h_glorot = glorot_h(shape, fan_in_channels)
        h = h_glorot if self.H == "Glorot" else self.H
        if self.kernel_lr_multiplier == "Glorot":
            multiplier = 1.0 / h_glorot
        else:
            multiplier = self.kernel_lr_multiplier
        kernel = self.add_weight(
            name=name,
            shape=shape,
            initializer=keras.initializers.RandomUniform(-h, h),
            constraint=Clip(-h, h),
        )
        return kernel, h, multiplier

    def _add_bias(self, units):
        if self.use_bias:
            self.bias = self.add_weight(name="bias", shape=(units,), initializer="zeros")
        else:
            self.bias = None

    @staticmethod
    def _binary(kernel, h, multiplier):
        """The ±h kernel used in the forward pass."""
        return binary_kernel(kernel, h, multiplier)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "H": self.H,
                "kernel_lr_multiplier": self.kernel_lr_multiplier,
                "use_bias": self.use_bias,
            }
        )
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class BinaryDense(_BinaryKernelLayer):
    """Fully connected layer with a binary (±H) kernel.

    Args:
        units: Positive int, output size.
        H: Positive float or 'Glorot', the binary magnitude and clip bound.
        kernel_lr_multiplier: 'Glorot' (1 / H_Glorot), a positive float, or
            None; scales the gradient of the latent kernel.
        use_bias: Whether to add a float bias (off by default: a BatchNorm
            follows every binary layer).
    """

    def __init__(self, units, H=1.0, kernel_lr_multiplier="Glorot", use_bias=False, **kwargs):
        super().__init__(H=H, kernel_lr_multiplier=kernel_lr_multiplier, use_bias=use_bias, **kwargs)
        self.units = _check_positive_int("units", units)

    def build(self, input_shape):
        shape = (int(input_shape[-1]), self.units)
        self.kernel, self.kernel_h, self.kernel_multiplier = self._add_binary_kernel("kernel", shape)
        self._add_bias(self.units)

    def call(self, inputs):
        outputs = ops.matmul(inputs, self._binary(self.kernel, self.kernel_h, self.kernel_multiplier))
        if self.bias is not None:
            outputs = outputs + self.bias
        return outputs

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def get_config(self):
        config = super().get_config()
        config["units"] = self.units
        return config


class _BinaryConvBase(_BinaryKernelLayer):
    """Arguments shared by the binary 2D convolutions (channels_last only)."""

    def __init__(
        self,
        filters,
        kernel_size,
        strides=(1, 1),
        padding="valid",
        H=1.0,
        kernel_lr_multiplier="Glorot",
        use_bias=False,
        **kwargs,
    ):
        super().__init__(H=H, kernel_lr_multiplier=kernel_lr_multiplier, use_bias=use_bias, **kwargs)
        self.filters = _check_positive_int("filters", filters)
        self.kernel_size = _check_pair("kernel_size", kernel_size)
        self.strides = _check_pair("strides", strides)
        self.padding = _check_padding(padding)

    def _finish(self, outputs):
        if self.bias is not None:
            outputs = outputs + self.bias
        return outputs

    def compute_output_shape(self, input_shape):
        spatial = [output_size(size, k, s, self.padding)
                   for size, k, s in zip(input_shape[1:3], self.kernel_size, self.strides)]
        return (input_shape[0], *spatial, self.filters)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "kernel_size": self.kernel_size,
                "strides": self.strides,
                "padding": self.padding,
            }
        )
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class BinaryConv2D(_BinaryConvBase):
    """2D convolution with a binary (±H) kernel, channels_last.

    Args:
        filters: Positive int, number of output channels.
        kernel_size: Int or pair of ints.
        strides: Int or pair of ints.
        padding: 'valid' or 'same'.
        H: Positive float or 'Glorot' (fans times kernel area).
        kernel_lr_multiplier: 'Glorot', a positive float, or None.
        use_bias: Whether to add a float bias.
    """

    def build(self, input_shape):
        shape = (*self.kernel_size, int(input_shape[-1]), self.filters)
        self.kernel, self.kernel_h, self.kernel_multiplier = self._add_binary_kernel("kernel", shape)
        self._add_bias(self.filters)

    def call(self, inputs):
        kernel = self._binary(self.kernel, self.kernel_h, self.kernel_multiplier)
        outputs = ops.conv(inputs, kernel, strides=self.strides, padding=self.padding)
        return self._finish(outputs)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class BinarySeparableConv2D(_BinaryConvBase):
    """Depthwise-separable 2D convolution with binary depthwise and pointwise kernels.

    The depthwise kernel (kh, kw, in, depth_multiplier) and the pointwise
    kernel (1, 1, in * depth_multiplier, filters) are each binarized to ±H.
    With H='Glorot', each kernel gets its own magnitude; a depthwise kernel's
    fan-in is its area (one input channel per output).

    Args:
        filters: Positive int, number of output channels.
        kernel_size: Int or pair of ints (depthwise kernel).
        strides: Int or pair of ints (depthwise step).
        padding: 'valid' or 'same'.
        depth_multiplier: Positive int.
        H: Positive float or 'Glorot'.
        kernel_lr_multiplier: 'Glorot', a positive float, or None.
        use_bias: Whether to add a float bias.
    """

    def __init__(self, filters, kernel_size, depth_multiplier=1, **kwargs):
        super().__init__(filters, kernel_size, **kwargs)
        self.depth_multiplier = _check_positive_int("depth_multiplier", depth_multiplier)

    def build(self, input_shape):
        channels = int(input_shape[-1])
        dw_shape = (*self.kernel_size, channels, self.depth_multiplier)
        pw_shape = (1, 1, channels * self.depth_multiplier, self.filters)
        self.depthwise_kernel, self.depthwise_h, self.depthwise_multiplier = self._add_binary_kernel(
            "depthwise_kernel", dw_shape, fan_in_channels=1
        )
        self.pointwise_kernel, self.pointwise_h, self.pointwise_multiplier = self._add_binary_kernel(
            "pointwise_kernel", pw_shape
        )
        self._add_bias(self.filters)

    def call(self, inputs):
        depthwise = self._binary(self.depthwise_kernel, self.depthwise_h, self.depthwise_multiplier)
        pointwise = self._binary(self.pointwise_kernel, self.pointwise_h, self.pointwise_multiplier)
        outputs = ops.separable_conv(
            inputs, depthwise, pointwise, strides=self.strides, padding=self.padding
        )
        return self._finish(outputs)

    def get_config(self):
        config = super().get_config()
        config["depth_multiplier"] = self.depth_multiplier
        return config


# The original research code's name for the same layer.
DepthwiseBinaryConv2D = BinarySeparableConv2D


@keras.saving.register_keras_serializable(package=_PACKAGE)
class DropoutNoScale(keras.layers.Layer):
    """Dropout without the 1 / (1 - rate) rescaling of the kept units.

    In training each unit is kept with probability 1 - rate and passed
    unchanged, else zeroed; at inference the input passes unchanged. Without
    rescaling, binary activations stay ±1 (or 0) rather than ±1/(1 - rate).

    Args:
        rate: Float in [0, 1), the fraction of units dropped.
        seed: Optional int seed.
    """

    def __init__(self, rate, seed=None, **kwargs):
        super().__init__(**kwargs)
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate < 1:
            raise ValueError(f"`rate` must be a float in [0, 1), received rate={rate!r}.")
        self.rate = float(rate)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs, training=False):
        if not training or self.rate == 0:
            return inputs
        keep = keras.random.uniform(ops.shape(inputs), seed=self.seed_generator) >= self.rate
        return inputs * ops.cast(keep, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"rate": self.rate, "seed": self.seed})
        return config
