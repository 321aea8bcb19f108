"""The fully connected layer, with a weight gradient XLA:CPU hands to its matmul library.

The weight gradient of x·w is xᵀ·δ, a product whose left operand is contracted over its
leading (batch) axis. XLA:CPU passes a matrix product to its library (YNNPACK) only
when the left operand is contracted over its trailing axis, so this one runs in a
slower generic kernel; a transpose written before it is folded back into the product.
`matmul` derives the gradient from an xᵀ laid out in memory behind
`lax.optimization_barrier`, which that folding cannot see through, so the product goes
to the library: the MNIST-1D MLP's train step got 1.08× faster at the launcher's 250
steps per call and 1.03× at one (interleaved, 15 turns; LeNet-5's 1.01×). Other
backends, where transposed operands cost nothing, get the plain product. Convolutions
written as matrix products keep the plain product: there the laid-out patches made
the MNIST-1D CNN's step slower (0.73–0.85× of it).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax import lax
from jax.custom_derivatives import SymbolicZero


def _transposed(x: jax.Array) -> jax.Array:
    """x (..., K) as xᵀ (K, M) in memory on the CPU: the left operand of the weight gradient."""
    x = x.reshape(-1, x.shape[-1])
    return lax.platform_dependent(x, cpu=lambda x: lax.optimization_barrier(x.T), default=lambda x: x.T)


@jax.custom_jvp
def matmul(x: jax.Array, w: jax.Array) -> jax.Array:
    """x (..., K) · w (K, N) -> (..., N), whose weight gradient runs as described above.

    A custom JVP, not a custom VJP, so forward mode, vmap and higher derivatives still work.
    """
    return x @ w


@functools.partial(matmul.defjvp, symbolic_zeros=True)
def _matmul_jvp(primals, tangents):
    x, w = primals
    dx, dw = tangents
    terms = []
    if not isinstance(dx, SymbolicZero):
        terms.append(dx @ w)
    if not isinstance(dw, SymbolicZero):
        # Reverse mode transposes xᵀᵀ·dw into xᵀ·δ, with xᵀ a residual laid out in memory.
        terms.append((_transposed(x).T @ dw).reshape(*x.shape[:-1], w.shape[-1]))
    out = x @ w
    return out, sum(terms[1:], terms[0]) if terms else jnp.zeros_like(out)


def dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
    """`lax.dot_general` for `nn.Dense`: its (..., K)·(K, N) products go through `matmul`."""
    (lc, rc), (lb, rb) = dimension_numbers
    if (tuple(lc), tuple(rc), tuple(lb), tuple(rb)) == ((lhs.ndim - 1,), (0,), (), ()) and rhs.ndim == 2 \
            and precision is None and preferred_element_type is None and lhs.dtype == rhs.dtype:
        return matmul(lhs, rhs)
    return lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                           preferred_element_type=preferred_element_type)


class Dense(nn.Dense):
    """`flax.linen.Dense` through `dot_general` above: the same parameters, outputs and gradients."""

    dot_general: nn.linear.DotGeneralT | None = dot_general
