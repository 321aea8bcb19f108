"""Rosenblatt's perceptron: a step-activated linear unit trained by the perceptron rule.

Glossary: N samples, d features. The bias is the weight w_0 of a constant input
x_0 = 1, so the weights are (d + 1,) and ŷ = step(w · (1, x)). Labels are 0/1.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxdl.nn.activations import step

Array = jax.Array


def _with_bias_input(x: Array) -> Array:
    """(N, d) → (N, d + 1) with x_0 = 1 in column 0."""
    return jnp.concatenate([jnp.ones((x.shape[0], 1), x.dtype), x], axis=1)


@jax.jit
def predict(w: Array, x: Array) -> Array:
    """ŷ = step(w_0 + Σ_i w_i x_i).

    Args:
      w: (d + 1,) weights, bias first.
      x: (N, d) inputs.

    Returns:
      (N,) predictions in {0, 1}, as floats.
    """
    x = jnp.asarray(x, jnp.result_type(w, float))
    return step(_with_bias_input(x) @ w)


@functools.partial(jax.jit, static_argnames=("epochs",))
def fit(x: Array, y: Array, epochs: int, lr: float, key: Array) -> Array:
    """Trains with Rosenblatt's rule w ← w + ρ(y − ŷ)x, one sample at a time.

    The weights start at zero and each epoch visits the samples in a fresh
    random order; the whole run is one `lax.scan` over epochs × samples. A
    misclassified sample moves the hyperplane towards its side; a correct one
    changes nothing. On linearly separable data the rule converges (the
    perceptron convergence theorem); on XOR it never does.

    Args:
      x: (N, d) inputs.
      y: (N,) labels in {0, 1}.
      epochs: passes over the data.
      lr: ρ, the learning rate.
      key: PRNG key for the sample order.

    Returns:
      (d + 1,) weights, bias first.
    """
    x = jnp.asarray(x, jnp.result_type(x, float))
    y = jnp.asarray(y, x.dtype)
    xb = _with_bias_input(x)
    n, d1 = xb.shape
    order = jax.vmap(lambda k: jax.random.permutation(k, n))(jax.random.split(key, epochs))

    def update(w, i):
        xi, yi = xb[i], y[i]
        y_hat = step(jnp.dot(w, xi))
        return w + lr * (yi - y_hat) * xi, None

    w, _ = jax.lax.scan(update, jnp.zeros((d1,), x.dtype), order.reshape(-1))
    return w
