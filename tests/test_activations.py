"""Activations and their derivatives τ', checked against jax.grad."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdl import nn as jnn

# A grid that avoids the kink at 0 of step, ReLU, leaky ReLU, ELU and PReLU.
GRID = jnp.concatenate([jnp.linspace(-6.0, -0.05, 61), jnp.linspace(0.05, 6.0, 61)])

NAMES = ["identity", "step", "sigmoid", "tanh", "relu", "leaky_relu", "elu", "softplus"]


@pytest.mark.parametrize("name", NAMES)
def test_derivative_matches_autodiff(name):
    fn, grad_fn = jnn.get_activation(name)
    expected = jax.vmap(jax.grad(fn))(GRID)
    np.testing.assert_allclose(grad_fn(GRID), expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("fn, grad_fn, kwargs", [
    (jnn.leaky_relu, jnn.leaky_relu_grad, {"negative_slope": 0.2}),
    (jnn.elu, jnn.elu_grad, {"alpha": 0.5}),
])
def test_parameterised_derivatives(fn, grad_fn, kwargs):
    expected = jax.vmap(jax.grad(lambda s: fn(s, **kwargs)))(GRID)
    np.testing.assert_allclose(grad_fn(GRID, **kwargs), expected, rtol=1e-6, atol=1e-7)


def test_values_against_numpy():
    s = np.asarray(GRID, np.float64)
    np.testing.assert_allclose(jnn.step(GRID), (s >= 0).astype(float))
    np.testing.assert_allclose(jnn.sigmoid(GRID), 1 / (1 + np.exp(-s)), rtol=1e-6)
    np.testing.assert_allclose(jnn.tanh(GRID), np.tanh(s), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(jnn.relu(GRID), np.maximum(s, 0), rtol=1e-6)
    np.testing.assert_allclose(jnn.leaky_relu(GRID), np.where(s >= 0, s, 0.01 * s), rtol=1e-6)
    np.testing.assert_allclose(jnn.elu(GRID), np.where(s > 0, s, np.expm1(s)), rtol=1e-6)
    np.testing.assert_allclose(jnn.softplus(GRID), np.log1p(np.exp(s)), rtol=1e-6)


def test_step_is_zero_one_and_sigmoid_grad_formula():
    assert jnn.step(jnp.array(0.0)) == 1.0
    s = jnp.array([-2.0, 0.0, 3.0])
    sig = jnn.sigmoid(s)
    np.testing.assert_allclose(jnn.sigmoid_grad(s), sig * (1 - sig))
    np.testing.assert_array_equal(jnn.step_grad(s), jnp.zeros(3))


def test_elu_gradient_is_finite_for_large_inputs():
    g = jax.vmap(jax.grad(jnn.elu))(jnp.array([-100.0, 100.0]))
    assert np.all(np.isfinite(g))


def test_prelu_module_learns_its_slope(key):
    layer = jnn.PReLU()
    s = jnp.array([-2.0, -1.0, 1.0, 3.0])
    variables = layer.init(key, s)
    assert variables["params"]["negative_slope"] == pytest.approx(0.25)
    np.testing.assert_allclose(layer.apply(variables, s), [-0.5, -0.25, 1.0, 3.0])
    # ∂/∂a Σ prelu(s; a) = Σ_{s<0} s = −3.
    g = jax.grad(lambda v: layer.apply(v, s).sum())(variables)
    assert g["params"]["negative_slope"] == pytest.approx(-3.0)
    expected = jax.vmap(jax.grad(jnn.prelu))(s, jnp.full(4, 0.25))
    np.testing.assert_allclose(jnn.prelu_grad(s, 0.25), expected)
    assert isinstance(layer, nn.Module)


def test_unknown_activation_names_the_valid_ones():
    with pytest.raises(ValueError, match="sigmoid"):
        jnn.get_activation("sigmoidd")
