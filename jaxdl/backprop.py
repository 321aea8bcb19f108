"""Algorithm 4-1: minibatch SGD for a deep MLP, with error back-propagation written out by hand.

Notation follows the lecture. Layer l (1 … L) has n_l nodes and a weight matrix
U^l of shape (n_l, n_{l-1} + 1) whose column 0 holds the biases: every layer's
input is augmented with z_0 = 1, so s^l = U^l z^{l-1} and z^l = τ_l(s^l), and a
layer has (n_{l-1} + 1)·n_l weights. n_0 = d inputs, n_L = c outputs.

Back-propagation, per sample:
  δ^L = τ'_L(s^L) (y − o)                               (MSE cost J = ½‖y − o‖²)
  δ^L = y − softmax(s^L)                                (softmax + cross-entropy)
  δ^l = τ'_l(s^l) ⊙ (U^{l+1}[:, 1:])^T δ^{l+1}          (l = L−1 … 1)
  ∂J/∂U^l = −δ^l (z^{l-1})^T
The hidden delta uses the layer's own τ'_l, and drops column 0 of U^{l+1}: the
bias node z_0 = 1 has no incoming weights, so no delta flows back into it.
The forward and backward passes run per sample (here with `jax.vmap`), their
ΔU^l are summed over the minibatch of t samples, and the update
U^l ← U^l − ρ (1/t) ΔU^l follows once per minibatch.

Costs: "mse" is the lecture's J = ½‖y − o‖² with the output activation τ_L;
"cross_entropy" is softmax + cross-entropy, with o = softmax(s^L) and an
identity output layer (activations[-1] must be "identity"). y is (B, c): targets
for "mse", one-hot or probability rows for "cross_entropy".
"""
from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from jaxdl import losses
from jaxdl.errors import UserError, unknown_name
from jaxdl.nn.activations import get_activation

Array = jax.Array
COSTS = ("mse", "cross_entropy")


def init(key: Array, sizes: Sequence[int]) -> list[Array]:
    """Random weight matrices for a DMLP with layer widths sizes = (n_0, n_1, …, n_L).

    Weights are N(0, 1/n_{l-1}) (LeCun scaling), biases (column 0) zero.

    Returns:
      [U^1, …, U^L], U^l of shape (n_l, n_{l-1} + 1).
    """
    sizes = tuple(int(n) for n in sizes)
    if len(sizes) < 2 or any(n < 1 for n in sizes):
        raise UserError(f"sizes={sizes}; give (n_0, …, n_L): at least two positive widths")
    return _init(key, sizes)


@functools.partial(jax.jit, static_argnums=1)
def _init(key, sizes):
    # One draw for all layers, cut into matrices: a random draw per layer shape
    # would cost a compilation each.
    counts = [n_in * n_out for n_in, n_out in zip(sizes[:-1], sizes[1:])]
    flat = jax.random.normal(key, (sum(counts),))
    us, start = [], 0
    for count, n_in, n_out in zip(counts, sizes[:-1], sizes[1:]):
        w = flat[start:start + count].reshape(n_out, n_in) / jnp.sqrt(n_in)
        us.append(jnp.concatenate([jnp.zeros((n_out, 1), w.dtype), w], axis=1))
        start += count
    return us


def _augment(z: Array) -> Array:
    """Prepends the bias node z_0 = 1 to one sample's (n,) activations."""
    return jnp.concatenate([jnp.ones((1,), z.dtype), z])


def _check(us: Sequence[Array], activations: Sequence[str], cost: str) -> tuple[str, ...]:
    if isinstance(activations, str):
        raise UserError(f"activations={activations!r}; give one name per layer, "
                        f"e.g. {(activations,) * len(us)!r}")
    activations = tuple(activations)
    if len(activations) != len(us):
        raise UserError(f"{len(activations)} activations for {len(us)} layers; give one per layer")
    for name in activations:
        get_activation(name)
    if cost not in COSTS:
        raise unknown_name("cost", str(cost), COSTS, "cost")
    if cost == "cross_entropy" and activations[-1] != "identity":
        raise UserError(f"cost='cross_entropy' applies softmax to s^L itself; the output "
                        f"activation must be 'identity', got {activations[-1]!r}")
    return activations


def forward(us: Sequence[Array], x: Array, activations: Sequence[str]
            ) -> tuple[list[Array], list[Array]]:
    """Forward pass for one sample (Algorithm 4-1, lines 9–13).

    Args:
      us: [U^1, …, U^L].
      x: (d,) one input.
      activations: L names, τ_1 … τ_L.

    Returns:
      ss: [s^1, …, s^L], s^l of shape (n_l,).
      zs: [z^0, …, z^L]: z^l for l < L is augmented with z_0 = 1, (n_l + 1,);
        z^L = o is the output τ_L(s^L), (n_L,).
    """
    z = _augment(x)
    ss, zs = [], [z]
    for l, (u, name) in enumerate(zip(us, activations)):
        tau, _ = get_activation(name)
        s = u @ z
        z = tau(s)
        if l + 1 < len(us):
            z = _augment(z)
        ss.append(s)
        zs.append(z)
    return ss, zs


def apply(us: Sequence[Array], x: Array, activations: Sequence[str], cost: str = "mse") -> Array:
    """Network outputs o for a batch: (B, d) → (B, c); softmax(s^L) for "cross_entropy"."""
    activations = _check(us, activations, cost)
    o = jax.vmap(lambda xi: forward(us, xi, activations)[1][-1])(x)
    return jax.nn.softmax(o, axis=-1) if cost == "cross_entropy" else o


def cost_value(us: Sequence[Array], x: Array, y: Array, activations: Sequence[str],
               cost: str = "mse") -> Array:
    """J summed over the batch: Σ ½‖y − o‖² or Σ −y·log softmax(s^L). Returns a scalar."""
    activations = _check(us, activations, cost)
    out = jax.vmap(lambda xi: forward(us, xi, activations)[1][-1])(x)
    if cost == "mse":
        return jnp.sum(losses.mse_lecture(out, y))
    return jnp.sum(losses.softmax_cross_entropy(out, y))


def _sample_delta_u(us, x, y, activations, cost):
    """ΔU^l = ∂J/∂U^l for one sample (Algorithm 4-1, lines 14–19)."""
    ss, zs = forward(us, x, activations)
    num_layers = len(us)
    if cost == "mse":
        _, tau_grad = get_activation(activations[-1])
        delta = tau_grad(ss[-1]) * (y - zs[-1])
    else:
        delta = y - jax.nn.softmax(ss[-1])
    delta_us = [None] * num_layers
    delta_us[-1] = -jnp.outer(delta, zs[-2])
    for l in range(num_layers - 2, -1, -1):
        _, tau_grad = get_activation(activations[l])
        # Column 0 of U^{l+1} feeds from the bias node, which has no delta.
        delta = tau_grad(ss[l]) * (us[l + 1][:, 1:].T @ delta)
        delta_us[l] = -jnp.outer(delta, zs[l])
    return delta_us


@functools.partial(jax.jit, static_argnames=("activations", "cost"))
def _grads(us, x, y, activations, cost):
    per_sample = jax.vmap(_sample_delta_u, in_axes=(None, 0, 0, None, None))(
        us, x, y, activations, cost)
    return [jnp.sum(d, axis=0) for d in per_sample]


def grads(us: Sequence[Array], x: Array, y: Array, activations: Sequence[str],
          cost: str = "mse") -> list[Array]:
    """ΔU^l = Σ_samples ∂J/∂U^l by back-propagation (Algorithm 4-1, lines 4–19).

    Args:
      us: [U^1, …, U^L].
      x: (t, d) minibatch inputs.
      y: (t, c) targets.
      activations: L names, τ_1 … τ_L.
      cost: "mse" or "cross_entropy".

    Returns:
      [ΔU^1, …, ΔU^L], each shaped like its U^l: the gradient of the cost summed
      (not averaged) over the minibatch.
    """
    activations = _check(us, activations, cost)
    return _grads(list(us), jnp.asarray(x), jnp.asarray(y), activations, cost)


def _update(us, x, y, rho, activations, cost):
    delta_us = _grads(us, x, y, activations, cost)
    t = x.shape[0]
    return [u - rho * (1.0 / t) * du for u, du in zip(us, delta_us)]


def sgd_step(us: Sequence[Array], x: Array, y: Array, rho: float, activations: Sequence[str],
             cost: str = "mse") -> list[Array]:
    """One minibatch update U^l ← U^l − ρ (1/t) ΔU^l (Algorithm 4-1, lines 4–22).

    Args:
      us: [U^1, …, U^L].
      x: (t, d) minibatch inputs; y: (t, c) targets.
      rho: ρ, the learning rate.
      activations, cost: as in `grads`.

    Returns:
      The updated [U^1, …, U^L].
    """
    activations = _check(us, activations, cost)
    return _update(list(us), jnp.asarray(x), jnp.asarray(y), rho, activations, cost)


def minibatch_indices(key: Array, step: Array | int, n: int, batch_size: int) -> Array:
    """The t = batch_size sample indices of a step: drawn at random, without replacement.

    Algorithm 4-1, line 3. Deterministic in (key, step), so a step's minibatch can
    be reproduced outside `train`.

    Returns:
      (batch_size,) int indices into the N training samples.
    """
    return jax.random.permutation(jax.random.fold_in(key, step), n)[:batch_size]


@functools.partial(jax.jit, static_argnames=("batch_size", "steps", "activations", "cost"))
def _train(key, us, x, y, rho, batch_size, steps, activations, cost):
    n = x.shape[0]

    def body(us, step):
        idx = minibatch_indices(key, step, n, batch_size)
        xb, yb = x[idx], y[idx]
        loss = cost_value(us, xb, yb, activations, cost) / batch_size
        return _update(us, xb, yb, rho, activations, cost), loss

    return jax.lax.scan(body, us, jnp.arange(steps))


def train(key: Array, us: Sequence[Array], x: Array, y: Array, *, rho: float, batch_size: int,
          steps: int, activations: Sequence[str], cost: str = "mse"
          ) -> tuple[list[Array], Array]:
    """Algorithm 4-1: `steps` minibatch SGD updates, compiled as one `lax.scan`.

    Args:
      key: PRNG key for drawing the minibatches (see `minibatch_indices`).
      us: initial [U^1, …, U^L], e.g. from `init`.
      x: (N, d) training inputs; y: (N, c) targets.
      rho: ρ, the learning rate.
      batch_size: t, samples per minibatch (≤ N).
      steps: number of updates (the stopping condition of line 23).
      activations, cost: as in `grads`.

    Returns:
      (us, losses): the trained weights and, per step, the minibatch's mean
      cost before that step's update, (steps,).
    """
    activations = _check(us, activations, cost)
    x, y = jnp.asarray(x), jnp.asarray(y)
    if not 1 <= batch_size <= x.shape[0]:
        raise UserError(f"batch_size={batch_size}; it must lie in [1, N={x.shape[0]}]")
    return _train(key, list(us), x, y, rho, batch_size, steps, activations, cost)
