"""The sizes of a sliding window's output, as Keras and TensorFlow compute them.

Plain Python, so that the Keras layers (`binary_layers`) and the NumPy engine
(`packed`, which must not import Keras) share one rule.
"""


def same_padding(size, kernel, stride):
    """TensorFlow's 'same' padding of one axis: (output size, pad before, pad after)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return out, total // 2, total - total // 2


def output_size(size, kernel, stride, padding):
    """The output length of a convolution or pooling window along one axis.

    Args:
        size: The input length (None: unknown, which gives None).
        kernel: The window length.
        stride: The step.
        padding: 'same' (the output is ceil(size / stride)) or 'valid' (the window stays inside).
    """
    if size is None:
        return None
    if padding == "same":
        return -(-size // stride)
    return (size - kernel) // stride + 1
