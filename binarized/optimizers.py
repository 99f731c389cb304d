"""Adam whose update is one fused TensorFlow op per variable, as a Keras 3 optimizer.

Keras' `Adam.update_step` builds about 45 graph ops per variable (the beta
powers, the step size, the moments, amsgrad's maximum). TensorFlow's
`ResourceApplyAdam` and `ResourceApplyAdamWithAmsgrad` apply the same
formula in one op, which makes a network's train step quicker to trace.
`FusedAdam` is a `keras.optimizers.Optimizer` subclass written against the
public interface for custom optimizers: it makes its slots in `build` with
`add_optimizer_variables` and updates a variable in `update_step`.

Saving: it is registered (`binarized>FusedAdam`), so a model compiled with
it saves and loads, optimizer state included, wherever `binarized` is
imported; `binarized.binary_layers` imports this module, so loading needs
nothing beyond what the binary layers need. Its config is `Adam`'s and its
variables are made in `Adam`'s order with `Adam`'s names, so its state also
fits a `keras.optimizers.Adam` (`keras.optimizers.Adam.from_config(
optimizer.get_config())`, then assign `variables` one to one).
"""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="binarized")
class FusedAdam(keras.optimizers.Optimizer):
    """Adam (Kingma and Ba 2015, arXiv:1412.6980), each variable updated by one fused op.

    The same update as `keras.optimizers.Adam`, amsgrad included. On
    TensorFlow each variable's update is TensorFlow's fused kernel, and the
    step's scalars (the beta powers, the learning rate) are made once per
    step for all variables; the arithmetic differs from Keras' `Adam` in
    float32 rounding only (the kernel forms `1 - beta_1` in float32, Keras
    in float64). On other backends it computes Keras' `Adam` formula.

    Args:
        learning_rate: A float or a `keras.optimizers.schedules` schedule.
        beta_1: Decay rate of the first moment.
        beta_2: Decay rate of the second moment.
        epsilon: Added to the denominator's square root.
        amsgrad: Whether to divide by the largest second moment seen so far.
        name: The optimizer's name.
        **kwargs: The arguments of `keras.optimizers.Optimizer` (e.g. `clipnorm`).
    """

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, amsgrad=False,
                 name="fused_adam", **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.amsgrad = amsgrad
        self._scalars = None  # the step's scalars while `apply` runs

    def build(self, var_list):
        """Makes the moments (and amsgrad's maxima) of every variable, in `Adam`'s order and names."""
        if self.built:
            return
        super().build(var_list)
        self._m_slots, self._v_slots = self.add_optimizer_variables(var_list, ["momentum", "velocity"])
        self._vhat_slots = self.add_optimizer_variables(var_list, "velocity_hat") if self.amsgrad else None
        self._slot_index = {_key(v): i for i, v in enumerate(var_list)}

    def apply(self, grads, trainable_variables=None):
        """Applies one step (see `keras.optimizers.Optimizer.apply`), its scalars made once."""
        self._scalars = self._step_scalars("float32")
        try:
            return super().apply(grads, trainable_variables)
        finally:
            self._scalars = None  # no tensor of a traced step outlives it

    def _step_scalars(self, dtype):
        """beta_1, beta_2, epsilon and the beta powers of this step, as tensors of `dtype`."""
        step = ops.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = ops.cast(self.beta_1, dtype), ops.cast(self.beta_2, dtype)
        return dict(beta1=beta_1, beta2=beta_2, epsilon=ops.cast(self.epsilon, dtype),
                    beta1_power=ops.power(beta_1, step), beta2_power=ops.power(beta_2, step))

    def update_step(self, gradient, variable, learning_rate):
        """Updates one variable: Adam's formula, on TensorFlow one fused op."""
        dtype = variable.dtype
        if self._scalars is None:  # called outside `apply`
            scalars = self._step_scalars(dtype)
        else:  # a cast to the same dtype adds no op
            scalars = {name: ops.cast(value, dtype) for name, value in self._scalars.items()}
        index = self._slot_index[_key(variable)]
        m, v = self._m_slots[index], self._v_slots[index]
        v_hat = self._vhat_slots[index] if self.amsgrad else None
        gradient = ops.cast(gradient, dtype)
        lr = ops.cast(learning_rate, dtype)
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            arguments = dict(var=_handle(variable), m=_handle(m), v=_handle(v), grad=gradient, lr=lr, **scalars)
            if self.amsgrad:
                tf.raw_ops.ResourceApplyAdamWithAmsgrad(vhat=_handle(v_hat), **arguments)
            else:
                tf.raw_ops.ResourceApplyAdam(**arguments)
            return
        alpha = lr * ops.sqrt(1 - scalars["beta2_power"]) / (1 - scalars["beta1_power"])
        self.assign_add(m, ops.multiply(ops.subtract(gradient, m), 1 - self.beta_1))
        self.assign_add(v, ops.multiply(ops.subtract(ops.square(gradient), v), 1 - self.beta_2))
        if self.amsgrad:
            self.assign(v_hat, ops.maximum(v_hat, v))
            v = v_hat
        self.assign_sub(variable, ops.divide(ops.multiply(m, alpha), ops.add(ops.sqrt(v), self.epsilon)))

    def get_config(self):
        config = super().get_config()
        config.update(beta_1=self.beta_1, beta_2=self.beta_2, epsilon=self.epsilon, amsgrad=self.amsgrad)
        return config


def _key(variable):
    """One key for a model variable, whether given as a Keras variable or as its backend variable.

    `build` receives the Keras variables; on TensorFlow `update_step` receives each one's
    TensorFlow variable, its `value`.
    """
    if isinstance(variable, keras.Variable) and keras.backend.backend() == "tensorflow":
        variable = variable.value
    return id(variable)


def _handle(variable):
    """The TensorFlow resource handle of a Keras or TensorFlow variable."""
    return (variable.value if isinstance(variable, keras.Variable) else variable).handle
