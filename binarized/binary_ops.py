"""Binarization functions with straight-through gradients.

All functions are pure `keras.ops` code: they run in eager and graph mode, on
any Keras backend, on tensors and on Keras Variables.

The binarizer is the deterministic sign of the BNN paper (Hubara, Courbariaux,
Soudry, El-Yaniv and Bengio, "Binarized Neural Networks", NIPS 2016,
arXiv:1602.02830), with the clipped straight-through estimator of its eq. 4.
"""

import keras
from keras import ops


def _straight_through(x, hard, grad_mask=None):
    """Returns `hard` in the forward pass and passes the gradient to `x`.

    The value is exactly `hard`: `stop_gradient(x) + (x - stop_gradient(x))`
    is `x` plus an exact zero, so no rounding error reaches the forward pass.

    Args:
        x: Tensor that receives the gradient.
        hard: Tensor with the forward values; no gradient flows through it.
        grad_mask: Optional tensor or float multiplying the incoming
            gradient.
    """
    x_const = ops.stop_gradient(x)
    delta = x - x_const
    if grad_mask is not None:
        delta = delta * grad_mask
    return ops.stop_gradient(hard) + delta


def hard_sigmoid(x):
    """Piecewise-linear sigmoid: `clip((x + 1) / 2, 0, 1)`.

    Args:
        x: Input tensor.

    Returns:
        Tensor of the same shape with values in [0, 1].
    """
    x = ops.convert_to_tensor(x)
    return ops.clip((x + 1.0) / 2.0, 0.0, 1.0)


def round_through(x):
    """Rounds to the nearest integer, with an identity gradient.

    Forward: `round(x)` (half to even, as `keras.ops.round`).
    Gradient: 1 everywhere (straight-through).

    Args:
        x: Input tensor.
    """
    x = ops.convert_to_tensor(x)
    return _straight_through(x, ops.round(x))


def _unit_mask(x):
    """1 where |x| <= 1, else 0: the BNN paper's gradient cancellation."""
    return ops.cast(ops.less_equal(ops.abs(x), 1.0), x.dtype)


def binary_sigmoid(x):
    """Deterministic binary sigmoid.

    Forward: 1 where x >= 0, else 0.
    Gradient: that of `hard_sigmoid`, 0.5 where |x| <= 1, else 0.

    Args:
        x: Input tensor.
    """
    x = ops.convert_to_tensor(x)
    hard = ops.cast(ops.greater_equal(x, 0.0), x.dtype)
    return _straight_through(x, hard, 0.5 * _unit_mask(x))


@keras.saving.register_keras_serializable(package="binarized")
def binary_tanh(x):
    """Deterministic binary tanh, the sign function of the BNN paper.

    Forward: +1 where x >= 0 and -1 where x < 0. It never returns 0, also not
    at exactly 0 (unlike `keras.ops.sign`).
    Gradient: the straight-through estimator of eq. 4 of Hubara et al. 2016
    (arXiv:1602.02830), 1 where |x| <= 1 and 0 where |x| > 1.

    Args:
        x: Input tensor.

    Returns:
        Tensor of ±1 values, of the dtype of `x`.
    """
    if keras.backend.backend() == "tensorflow":
        return _tf_sign_with_ste(x)
    x = ops.convert_to_tensor(x)
    # A variable (which `convert_to_tensor` passes through) takes the composed path.
    if keras.backend.backend() == "jax" and not isinstance(x, keras.Variable):
        return _sign_with_ste(x)
    hard = ops.where(ops.greater_equal(x, 0.0), 1.0, -1.0)
    return _straight_through(x, ops.cast(hard, x.dtype), _unit_mask(x))


# `binary_tanh` as one op with its own gradient: the same values and gradients, bit for bit.
# Composed from `_straight_through` it is ten elementwise ops forward and more backward, on
# every activation of a child; this is three elementwise ops forward and a mask times the
# gradient backward, which also makes a child's train step quicker to trace.


def _sign(x):
    # sign(sign(x) + 0.5): +1 for x >= 0 (-0.0 included), -1 for x < 0, NaN for NaN, so that a
    # diverged activation stays NaN and the loss shows it. Three elementwise passes, where a
    # select of x >= 0 plus the exact zero x - x took four and twice the time.
    return ops.sign(ops.sign(x) + 0.5)


@ops.custom_gradient
def _sign_with_ste(x):
    """The one-op sign on JAX (`keras.ops.custom_gradient`)."""

    def grad(*args, upstream=None):
        if upstream is None:
            (upstream,) = args
        return upstream * _unit_mask(x)

    return _sign(x), grad


# The name of the sign's gradient in TensorFlow's registry (registered below, once).
_TF_GRADIENT = "BinarizedBinaryTanh"


def _tf_sign_with_ste(x):
    """The one-op sign on TensorFlow, as `tf.custom_gradient` builds it, less its leak.

    In a graph, `tf.custom_gradient` registers a new gradient function under
    a new name at every trace, and TensorFlow's registry never lets go of
    it: its closure holds the traced graph, for as long as the process runs.
    Here one gradient, registered once, reads its input from the op; the
    tape gets the same backward function as `tf.custom_gradient` gives it,
    held by the tape only.
    """
    import tensorflow as tf
    from tensorflow.python.eager import record

    # Any input (a tensor, a tf.Variable, a Keras variable) is read as a tensor first: the
    # tape is told of tensors only, and a variable's gradient flows through its read.
    x = tf.convert_to_tensor(x)
    with record.stop_recording():
        y = _sign(x)
    return _tf_with_gradient(y, x, [], _TF_GRADIENT, "BinaryTanh", lambda upstream: upstream * _unit_mask(x))


def _tf_with_gradient(y, x, extra, gradient_name, op_name, backward):
    """`y`, computed from `x` with the tape stopped, given its gradient to `x`.

    In a graph, `y` passes through IdentityN([y, x, *extra]), whose gradient
    is the one registered under `gradient_name` (for `tf.gradients` and a
    tf.function differentiated from outside); on a GradientTape, also inside
    a tf.function (Keras' train step), the gradient is `backward(upstream)`.
    """
    import tensorflow as tf
    from tensorflow.python.eager import record

    if tf.executing_eagerly():
        y = tf.identity(y)
    else:
        with tf.compat.v1.get_default_graph().gradient_override_map({"IdentityN": gradient_name}):
            y = tf.identity_n([y, x, *extra])[0]
    record.record_operation(op_name, [y], [x], lambda upstream: [backward(upstream)])
    return y


def _tf_sign_gradient(op, upstream, *_):
    # The op is IdentityN([sign, x]): no gradient through the sign, the STE's to x.
    return [None, upstream * _unit_mask(op.inputs[1])]


# The name of the kernel binarizer's gradient in TensorFlow's registry (registered below, once).
_TF_KERNEL_GRADIENT = "BinarizedBinaryKernel"


def _kernel_gradient(upstream, t, h, multiplier):
    """The gradient `binarize(scale_gradient(W, multiplier), h)` composes, in its rounding order.

    The composed chain multiplies by `h` (the product's gradient), masks (the
    sign's), divides by `h` (the quotient's) and multiplies by the multiplier
    (`scale_gradient`'s); each step here is that float32 operation.
    """
    grad = (upstream * h) * _unit_mask(t) / h
    return grad if multiplier is None else grad * multiplier


def _tf_binarize(W, h, multiplier):
    """`binarize(scale_gradient(W, multiplier), h)` on TensorFlow as one op with its own gradient.

    The same values and gradients bit for bit as the composition, in a few
    ops where the composition's autodiff builds about forty per kernel: every
    binary layer's kernel passes through here at every step.
    """
    import tensorflow as tf
    from tensorflow.python.eager import record

    x = tf.convert_to_tensor(W)
    h = tf.constant(h, x.dtype)
    m = None if multiplier is None else tf.constant(multiplier, x.dtype)
    with record.stop_recording():
        t = x / h
        y = h * _sign(t)
    extra = [h] if m is None else [h, m]
    return _tf_with_gradient(
        y, x, extra, _TF_KERNEL_GRADIENT, "BinaryKernel", lambda upstream: _kernel_gradient(upstream, t, h, m)
    )


def _tf_kernel_gradient(op, upstream, *_):
    # The op is IdentityN([±h kernel, W, h(, multiplier)]): the gradient reaches W alone.
    x, h = op.inputs[1], op.inputs[2]
    m = op.inputs[3] if len(op.inputs) > 3 else None
    return [None, _kernel_gradient(upstream, x / h, h, m)] + [None] * (len(op.inputs) - 2)


if keras.backend.backend() == "tensorflow":  # Keras has imported TensorFlow already
    import tensorflow as _tf

    for _name, _gradient in ((_TF_GRADIENT, _tf_sign_gradient), (_TF_KERNEL_GRADIENT, _tf_kernel_gradient)):
        try:
            _tf.RegisterGradient(_name)(_gradient)
        except KeyError:  # registered by an earlier import of this module
            pass


def binary_kernel(W, H, multiplier=None):
    """A binary layer's kernel: `binarize(scale_gradient(W, multiplier), H)`.

    Forward: +H where W >= 0, -H where W < 0.
    Gradient: `multiplier` where |W| <= H, else 0.

    On TensorFlow it is one op with its own gradient, with the composition's
    values and gradients bit for bit; elsewhere it is the composition.

    Args:
        W: Latent float weights (tensor or Keras Variable).
        H: Positive float, the magnitude of the binary values.
        multiplier: Python float scaling the gradient, or None (1).
    """
    if multiplier == 1.0:
        multiplier = None
    if keras.backend.backend() == "tensorflow":
        return _tf_binarize(W, H, multiplier)
    if multiplier is not None:
        W = scale_gradient(W, multiplier)
    return binarize(W, H)


def binarize(W, H=1.0):
    """Binarizes weights to ±H: `H * binary_tanh(W / H)`.

    Forward: +H where W >= 0, -H where W < 0.
    Gradient: 1 where |W| <= H, else 0 (Hubara et al. 2016, eq. 4).

    Args:
        W: Latent float weights (tensor or Keras Variable).
        H: Positive float, the magnitude of the binary values.
    """
    W = ops.convert_to_tensor(W)
    return H * binary_tanh(W / H)


def scale_gradient(x, multiplier):
    """Identity in the forward pass; multiplies the gradient by `multiplier`.

    With plain SGD this scales the update of `x` by `multiplier`, which is
    how the binary layers apply a per-kernel learning-rate multiplier.

    Args:
        x: Input tensor.
        multiplier: Python float.
    """
    x = ops.convert_to_tensor(x)
    return _straight_through(x, x, multiplier)
