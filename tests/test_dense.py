"""jaxdl.nn.Dense against flax.linen.Dense: parameters, values, gradients of every order."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxdl.nn import Dense, dense, matmul


@pytest.fixture
def setup():
    x = jax.random.normal(jax.random.PRNGKey(0), (6, 3, 5))
    ref, ours = nn.Dense(4), Dense(4)
    params = ref.init(jax.random.PRNGKey(1), x)
    return x, ref, ours, params


def _loss(module):
    return lambda params, x: jnp.sum(jnp.sin(module.apply(params, x)))


def test_same_parameters_and_outputs(setup):
    x, ref, ours, params = setup
    ours_params = ours.init(jax.random.PRNGKey(1), x)
    jax.tree.map(np.testing.assert_array_equal, ours_params, params)
    np.testing.assert_allclose(ours.apply(params, x), ref.apply(params, x), rtol=1e-6)


def test_gradients_against_flax(setup):
    x, ref, ours, params = setup
    want = jax.grad(_loss(ref), argnums=(0, 1))(params, x)
    got = jax.jit(jax.grad(_loss(ours), argnums=(0, 1)))(params, x)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), got, want)


def test_forward_mode_and_second_order(setup):
    x, ref, ours, params = setup
    tangent = jax.tree.map(jnp.ones_like, params)
    want = jax.jvp(lambda p: _loss(ref)(p, x), (params,), (tangent,))
    got = jax.jvp(lambda p: _loss(ours)(p, x), (params,), (tangent,))
    np.testing.assert_allclose(got, want, rtol=1e-5)
    kernel = lambda module: lambda k: _loss(module)({"params": {**params["params"], "kernel": k}}, x)
    np.testing.assert_allclose(jax.hessian(kernel(ours))(params["params"]["kernel"]),
                               jax.hessian(kernel(ref))(params["params"]["kernel"]), rtol=1e-4, atol=1e-5)


def test_other_products_fall_back_to_lax():
    a, b = jax.random.normal(jax.random.PRNGKey(0), (5, 3)), jax.random.normal(jax.random.PRNGKey(1), (5, 4))
    contract_leading = (((0,), (0,)), ((), ()))
    np.testing.assert_array_equal(dense.dot_general(a, b, contract_leading), lax.dot_general(a, b, contract_leading))
    assert dense.dot_general(a.T, b, (((1,), (0,)), ((), ())), preferred_element_type=jnp.float32).shape == (3, 4)
    # A Dense with an explicit precision takes lax's product: same values and gradients as flax's.
    x = jax.random.normal(jax.random.PRNGKey(2), (6, 5))
    ref, ours = nn.Dense(4, precision=lax.Precision.HIGHEST), Dense(4, precision=lax.Precision.HIGHEST)
    params = ref.init(jax.random.PRNGKey(3), x)
    jax.tree.map(np.testing.assert_array_equal, jax.grad(_loss(ours))(params, x), jax.grad(_loss(ref))(params, x))


def _weight_grad_hlo(platform):
    w, x = jnp.ones((5, 4)), jnp.ones((8, 5))
    grad = jax.grad(lambda w, x: jnp.sum(matmul(x, w) ** 2))
    return jax.export.export(jax.jit(grad), platforms=[platform])(w, x).mlir_module()


def test_cpu_weight_gradient_contracts_a_laid_out_transpose():
    """On the CPU xᵀ is laid out behind a barrier (so XLA:CPU's library takes the product);
    elsewhere the plain transposed product stays."""
    assert "optimization_barrier" in _weight_grad_hlo("cpu")
    assert "optimization_barrier" not in _weight_grad_hlo("cuda")
    # Compiled for this CPU: no product contracts its left operand over the leading axis.
    w, x = jnp.ones((5, 4)), jnp.ones((8, 5))
    hlo = jax.jit(jax.grad(lambda w: jnp.sum(matmul(x, w) ** 2))).lower(w).compile().as_text()
    if jax.default_backend() == "cpu":
        dots = [line for line in hlo.splitlines() if " dot(" in line]
        assert dots and not any("lhs_contracting_dims={0}" in line for line in dots)


def test_vmapped_gradients(setup):
    """Vmapped over replicas (the launcher's seeds) the gradients are each replica's own."""
    x, ref, ours, params = setup
    stacked = jax.tree.map(lambda p: jnp.stack([p, 2 * p]), params)
    got = jax.vmap(jax.grad(_loss(ours)), in_axes=(0, None))(stacked, x)
    for i in range(2):
        want = jax.grad(_loss(ref))(jax.tree.map(lambda p, i=i: p[i], stacked), x)
        jax.tree.map(lambda a, b, i=i: np.testing.assert_allclose(a[i], b, rtol=1e-5, atol=1e-6), got, want)
