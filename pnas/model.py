"""Builds a child CNN of binary cells from an architecture.

An architecture is `[input1, 'op1', input2, 'op2', ...]`, one group of four
per block. Every cell of the network uses the same blocks; cell i has
`num_cell_filters[i]` filters and halves the spatial size (stride 2).

A block input is 0 (the cell input), k >= 1 (the output of block k of the
same cell) or -1 (the previous cell's input, at twice the cell input's
resolution). As in NASNet and PNASNet, the previous cell's input is first
brought to the cell input's resolution by a factorized reduction (see
`_factorized_reduction`); the operators then treat it as they treat the
cell input. The first cell has no previous cell: there input -1 reads the
image, like input 0 (NASNet uses the cell input when there is no previous
one).
"""

import keras

from binarized.binary_layers import (
    BinaryConv2D,
    BinaryDense,
    BinarySeparableConv2D,
    DropoutNoScale,
)
from binarized.binary_ops import binary_tanh
from binarized.normalization import FusedBatchNormalization
from pnas.config import BN_EPSILON, BN_MOMENTUM, OPERATORS  # noqa: F401  (defined without Keras)
from pnas.footprint import BINARY_LAYERS, layer_macs


def check_operators(operators):
    """Raises ValueError naming any unknown operator and listing the valid ones."""
    unknown = [op for op in operators if op not in OPERATORS]
    if unknown:
        raise ValueError(
            f"unknown operator(s) {unknown}; valid operators are {list(OPERATORS)}"
        )


def _without_batchnorm_tanh_fusion():
    """Turns off TensorFlow's graph remapper, for this process.

    With oneDNN on (`binarized.quiet`'s default on x86), the remapper fuses an
    inference `FusedBatchNormV3` with the Tanh after it into a kernel that
    TensorFlow 2.21 has not implemented: the float twin's first `evaluate`
    fails with "Fusion is not implemented: [FusedBatchNorm,Tanh]". oneDNN's
    own kernels stay on. A binary child's sign after BatchNorm is no Tanh,
    so it never meets this.
    """
    import tensorflow as tf

    tf.config.optimizer.set_experimental_options({"remapping": False})


class _Layers:
    """The layer constructors of a binary child, or of its float twin.

    The float twin has the same topology with float Conv/Dense layers and
    tanh in place of binarization: the baseline of the throughput benchmark.
    """

    def __init__(self, float_twin=False, binary_kwargs=None, bn_momentum=BN_MOMENTUM):
        self.float_twin = float_twin
        self.kwargs = {} if float_twin else dict(binary_kwargs or {})
        self.bn_momentum = bn_momentum
        if float_twin and keras.backend.backend() == "tensorflow":
            _without_batchnorm_tanh_fusion()

    def conv(self, filters, size, **kwargs):
        if self.float_twin:
            return keras.layers.Conv2D(filters, size, use_bias=False, **kwargs)
        return BinaryConv2D(filters, size, **kwargs, **self.kwargs)

    def separable(self, filters, size, in_channels, **kwargs):
        # On a thin input (the 1-channel image) a depthwise step with one
        # filter per channel would feed every output channel the same single
        # filtered map; a depth multiplier gives it `filters` distinct maps.
        kwargs["depth_multiplier"] = max(1, -(-filters // in_channels))
        if self.float_twin:
            return keras.layers.SeparableConv2D(filters, size, use_bias=False, **kwargs)
        return BinarySeparableConv2D(filters, size, **kwargs, **self.kwargs)

    def dense(self, units, **kwargs):
        if self.float_twin:
            return keras.layers.Dense(units, use_bias=False, **kwargs)
        return BinaryDense(units, **kwargs, **self.kwargs)

    def sign(self, name):
        return keras.layers.Activation("tanh" if self.float_twin else binary_tanh, name=name)

    def bn(self, name):
        return FusedBatchNormalization(axis=-1, momentum=self.bn_momentum, epsilon=BN_EPSILON, name=name)

    def bn_sign(self, x, name):
        return self.sign(f"{name}_sign")(self.bn(f"{name}_bn")(x))


def _operator(x, op, filters, stride, name, layers):
    """Applies operator `op` to `x` with the given stride."""
    kind, size = OPERATORS[op]
    if kind == "conv":
        x = layers.conv(filters, size, strides=stride, padding="same", name=name)(x)
        return layers.bn_sign(x, name)
    if kind == "sep":
        x = layers.separable(filters, size, x.shape[-1], strides=stride, padding="same", name=name)(x)
        return layers.bn_sign(x, name)
    if kind == "factorized":
        x = layers.conv(filters, (1, size), strides=(1, stride), padding="same", name=f"{name}_1x7")(x)
        x = layers.bn_sign(x, f"{name}_1x7")
        x = layers.conv(filters, (size, 1), strides=(stride, 1), padding="same", name=f"{name}_7x1")(x)
        return layers.bn_sign(x, f"{name}_7x1")
    if kind == "maxpool":
        return keras.layers.MaxPooling2D(size, strides=stride, padding="same", name=name)(x)
    if kind == "avgpool":
        return keras.layers.AveragePooling2D(size, strides=stride, padding="same", name=name)(x)
    # 'linear': identity where the shape is kept, else a strided binary 1x1 projection.
    if stride == 1:
        return x
    x = layers.conv(filters, 1, strides=stride, padding="same", name=name)(x)
    return layers.bn_sign(x, name)


def _factorized_reduction(x, filters, name, layers):
    """Halves the resolution of `x` without dropping pixels: NASNet's factorized reduction.

    Two stride-2 binary 1x1 convolutions, each of ceil(filters / 2) filters:
    one reads the even pixels, the other (on `x` shifted by one pixel) the
    odd ones. Their outputs are concatenated, normalised and binarized.
    """
    half = -(-filters // 2)
    even = layers.conv(half, 1, strides=2, padding="same", name=f"{name}_even")(x)
    shifted = keras.layers.ZeroPadding2D(((0, 1), (0, 1)), name=f"{name}_pad")(x)
    shifted = keras.layers.Cropping2D(((1, 0), (1, 0)), name=f"{name}_shift")(shifted)
    odd = layers.conv(half, 1, strides=2, padding="same", name=f"{name}_odd")(shifted)
    x = keras.layers.Concatenate(name=name)([even, odd])
    return layers.bn_sign(x, name)


def _cell(x, actions, filters, cell_index, layers, previous=None):
    """One cell: each block applies its two operators and concatenates them.

    `previous` is the previous cell's input (None in the first cell), read by
    blocks whose input is -1.
    """
    if -1 in actions[0::2]:
        if previous is None:
            previous = x
        elif previous.shape[1:3] != x.shape[1:3]:
            previous = _factorized_reduction(previous, filters, f"c{cell_index}_previous", layers)
    blocks = []
    for b in range(len(actions) // 4):
        outputs = []
        for j in (0, 2):
            source = actions[4 * b + j]
            op = actions[4 * b + j + 1]
            # The cell's inputs (at the cell input's resolution once the previous
            # one is reduced) are strided; block outputs are already at the new one.
            if source <= 0:
                inp, stride = (x if source == 0 else previous), 2
            else:
                inp, stride = blocks[source - 1], 1
            name = f"c{cell_index}_b{b}_{'left' if j == 0 else 'right'}"
            outputs.append(_operator(inp, op, filters, stride, name, layers))
        blocks.append(keras.layers.Concatenate(name=f"c{cell_index}_b{b}")(outputs))
    if len(blocks) == 1:
        return blocks[0]
    return keras.layers.Concatenate(name=f"c{cell_index}")(blocks)


def count_mul_ops(model):
    """Multiply-accumulates of the binary conv and dense layers, per image."""
    return int(sum(layer_macs(layer) for layer in model.layers if isinstance(layer, BINARY_LAYERS)))


def model_fn(
    actions,
    num_cells=3,
    num_cell_filters=(16, 24, 32),
    dense_layers=(32, 10),
    dropout=(False, 0.2, 0.5),
    binary_kwargs=None,
    float_twin=False,
    bn_momentum=BN_MOMENTUM,
):
    """Builds the child network of an architecture.

    Args:
        actions: `[input1, 'op1', input2, 'op2', ...]`; an input is -1 (the
            previous cell's input), 0 (the cell input) or k (block k's output).
        num_cells: Number of stacked cells.
        num_cell_filters: Filters of each cell (one entry per cell).
        dense_layers: Units of the dense head; the last is the class count.
        dropout: `(enabled, input_rate, hidden_rate)`: `DropoutNoScale` on
            the flattened features and between the dense layers.
        binary_kwargs: Extra arguments for every binary layer (e.g. `H`,
            `kernel_lr_multiplier`).
        float_twin: Build the same topology with float layers and tanh
            (a speed baseline; its mul_ops counts no binary layer, so 0).
        bn_momentum: Momentum of every BatchNorm's moving statistics.

    Returns:
        `(keras.Model, mul_ops)`.
    """
    if len(actions) == 0 or len(actions) % 4:
        raise ValueError(f"`actions` must hold 4 entries per block, received {actions!r}")
    check_operators(actions[1::2])
    if len(num_cell_filters) != num_cells:
        raise ValueError(
            f"len(num_cell_filters)={len(num_cell_filters)} must equal num_cells={num_cells}"
        )
    for i in range(0, len(actions), 2):
        source, block = actions[i], i // 4
        if isinstance(source, bool) or not isinstance(source, int) or source < -1 or source > block:
            raise ValueError(
                f"block {block + 1} reads input {source!r}; it may read -1 (the previous cell's input), "
                f"0 (the cell input) or 1..{block} (earlier blocks)"
            )
    layers = _Layers(float_twin, binary_kwargs, bn_momentum)
    use_dropout, drop_input, drop_hidden = dropout

    inputs = keras.Input((28, 28, 1), name="image")
    x, previous = inputs, None
    for c in range(num_cells):
        x, previous = _cell(x, actions, num_cell_filters[c], c, layers, previous), x
    x = keras.layers.Flatten(name="flatten")(x)
    if use_dropout:
        x = DropoutNoScale(drop_input, name="drop_input")(x)
    for i, units in enumerate(dense_layers):
        x = layers.dense(units, name=f"dense{i}")(x)
        x = layers.bn(f"dense{i}_bn")(x)
        if i < len(dense_layers) - 1:
            x = layers.sign(f"dense{i}_sign")(x)
            if use_dropout:
                x = DropoutNoScale(drop_hidden, name=f"drop_hidden{i}")(x)
    model = keras.Model(inputs, x, name="child")
    return model, count_mul_ops(model)
