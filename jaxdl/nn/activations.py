"""Activation functions τ and their derivatives τ', from the step function to ReLU variants."""
from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdl.errors import unknown_name

Array = jax.Array
Activation = Callable[[Array], Array]


def _ones_like_float(s: Array) -> Array:
    s = jnp.asarray(s)
    return jnp.ones_like(s, dtype=jnp.result_type(s, float))


def identity(s: Array) -> Array:
    """τ(s) = s (the linear output layer)."""
    return jnp.asarray(s)


def identity_grad(s: Array) -> Array:
    """τ'(s) = 1."""
    return _ones_like_float(s)


def step(s: Array) -> Array:
    """The perceptron's step function: 1 where s ≥ 0, else 0."""
    s = jnp.asarray(s)
    return jnp.where(s >= 0, 1, 0).astype(jnp.result_type(s, float))


def step_grad(s: Array) -> Array:
    """τ'(s) = 0 everywhere it exists (undefined at 0, where 0 is returned too).

    The zero derivative is why a step-activated network cannot be trained by
    gradient descent and the perceptron uses Rosenblatt's rule instead.
    """
    return jnp.zeros_like(_ones_like_float(s))


def sigmoid(s: Array) -> Array:
    """Logistic sigmoid σ(s) = 1 / (1 + e^{-s})."""
    return jax.nn.sigmoid(s)


def sigmoid_grad(s: Array) -> Array:
    """σ'(s) = σ(s)(1 − σ(s))."""
    sig = jax.nn.sigmoid(s)
    return sig * (1 - sig)


def tanh(s: Array) -> Array:
    """Hyperbolic tangent."""
    return jnp.tanh(s)


def tanh_grad(s: Array) -> Array:
    """tanh'(s) = 1 − tanh²(s)."""
    t = jnp.tanh(s)
    return 1 - t * t


def relu(s: Array) -> Array:
    """ReLU: max(0, s)."""
    return jax.nn.relu(s)


def relu_grad(s: Array) -> Array:
    """relu'(s) = 1 for s > 0, else 0 (0 at the kink, as `jax.grad` gives)."""
    s = jnp.asarray(s)
    return jnp.where(s > 0, 1, 0).astype(jnp.result_type(s, float))


def leaky_relu(s: Array, negative_slope: float = 0.01) -> Array:
    """Leaky ReLU: s for s ≥ 0, negative_slope·s otherwise."""
    s = jnp.asarray(s)
    return jnp.where(s >= 0, s, negative_slope * s)


def leaky_relu_grad(s: Array, negative_slope: float = 0.01) -> Array:
    """1 for s ≥ 0, negative_slope otherwise."""
    s = jnp.asarray(s)
    one = _ones_like_float(s)
    return jnp.where(s >= 0, one, negative_slope * one)


def elu(s: Array, alpha: float = 1.0) -> Array:
    """ELU: s for s > 0, α(e^s − 1) otherwise."""
    s = jnp.asarray(s)
    # expm1 of the clamped value keeps the untaken branch finite, so gradients
    # through jnp.where stay NaN-free for large positive s.
    return jnp.where(s > 0, s, alpha * jnp.expm1(jnp.minimum(s, 0)))


def elu_grad(s: Array, alpha: float = 1.0) -> Array:
    """1 for s > 0, αe^s otherwise."""
    s = jnp.asarray(s)
    return jnp.where(s > 0, _ones_like_float(s), alpha * jnp.exp(jnp.minimum(s, 0)))


def softplus(s: Array) -> Array:
    """Softplus log(1 + e^s), the smooth ReLU."""
    return jax.nn.softplus(s)


def softplus_grad(s: Array) -> Array:
    """softplus'(s) = σ(s)."""
    return jax.nn.sigmoid(s)


def prelu(s: Array, negative_slope: Array) -> Array:
    """Parametric ReLU with a given (learnable) slope; broadcasts a scalar slope only."""
    s = jnp.asarray(s)
    return jnp.where(s >= 0, s, negative_slope * s)


def prelu_grad(s: Array, negative_slope: Array) -> Array:
    """∂prelu/∂s: 1 for s ≥ 0, negative_slope otherwise."""
    s = jnp.asarray(s)
    one = _ones_like_float(s)
    return jnp.where(s >= 0, one, negative_slope * one)


class PReLU(nn.Module):
    """Parametric ReLU with one learnable slope (He et al. 2015), initialised to 0.25.

    Attributes:
      negative_slope_init: initial slope for s < 0.
      param_dtype: dtype of the slope parameter.
    """

    negative_slope_init: float = 0.25
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, s: Array) -> Array:
        slope = self.param(
            "negative_slope",
            lambda _key: jnp.asarray(self.negative_slope_init, self.param_dtype),
        )
        return prelu(s, slope.astype(jnp.result_type(s, slope)))


_ACTIVATIONS: dict[str, tuple[Activation, Activation]] = {
    "identity": (identity, identity_grad),
    "step": (step, step_grad),
    "sigmoid": (sigmoid, sigmoid_grad),
    "tanh": (tanh, tanh_grad),
    "relu": (relu, relu_grad),
    "leaky_relu": (leaky_relu, leaky_relu_grad),
    "elu": (elu, elu_grad),
    "softplus": (softplus, softplus_grad),
}


def get_activation(name: str) -> tuple[Activation, Activation]:
    """Looks up an activation by name.

    Args:
      name: one of "identity", "step", "sigmoid", "tanh", "relu", "leaky_relu",
        "elu", "softplus" (leaky_relu and elu with their default parameters).

    Returns:
      (τ, τ'): the function and its derivative, both elementwise.

    Raises:
      ValueError: (a `jaxdl.errors.UserError`) for an unknown name; the message
        lists the valid ones.
    """
    try:
        return _ACTIVATIONS[name]
    except (KeyError, TypeError):
        raise unknown_name("activation", str(name), _ACTIVATIONS, "name") from None
