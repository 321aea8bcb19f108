"""Algorithm 4-1 by hand: back-propagated gradients against jax.grad, and SGD against optax."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxdl import backprop as bp

# These shapes are tiny, so XLA:CPU's optimising back end costs far more than it
# saves: compile the test programs without it.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}

# The oracle's own forward pass, written with jax.nn, independent of jaxdl.
ACT = {"sigmoid": jax.nn.sigmoid, "tanh": jnp.tanh, "relu": jax.nn.relu, "identity": lambda s: s}


def oracle_cost(us, x, y, activations, cost):
    """Σ_samples J, with J = ½‖y − o‖² or −y·log softmax(s^L)."""
    z = x
    for u, name in zip(us, activations):
        z = ACT[name](jnp.concatenate([jnp.ones((z.shape[0], 1)), z], axis=1) @ u.T)
    if cost == "mse":
        return 0.5 * jnp.sum(jnp.square(y - z))
    return -jnp.sum(y * jax.nn.log_softmax(z, axis=-1))


def _nets(count, seed):
    """Random nets: depth 1–5, widths 1–64, per-layer activations, both costs."""
    rng = np.random.default_rng(seed)
    nets = []
    for i in range(count):
        depth = i % 5 + 1
        sizes = tuple(int(n) for n in rng.integers(1, 65, size=depth + 1))
        cost = ("mse", "cross_entropy")[i % 2]
        activations = [str(a) for a in rng.choice(["sigmoid", "tanh", "relu"], size=depth)]
        if cost == "cross_entropy":
            activations[-1] = "identity"
        nets.append((sizes, tuple(activations), cost))
    return nets


NETS = _nets(30, seed=0)


def _net_id(net):
    sizes, activations, cost = net
    return f"{cost}-{'-'.join(map(str, sizes))}-{'-'.join(a[:4] for a in activations)}"


@functools.partial(jax.jit, static_argnames=("activations", "cost"), compiler_options=FAST_COMPILE)
def _both_grads(us, x, y, activations, cost):
    return bp.grads(us, x, y, activations, cost), jax.grad(oracle_cost)(us, x, y, activations, cost)


@pytest.mark.parametrize("net", NETS, ids=_net_id)
def test_backprop_gradients_match_autodiff(net):
    sizes, activations, cost = net
    rng = np.random.default_rng(len(sizes) * 1000 + sizes[0])
    # Random biases, so column 0 of every U^l is exercised too.
    us = [(rng.normal(size=(n_out, n_in + 1)) / np.sqrt(n_in)).astype(np.float32)
          for n_in, n_out in zip(sizes[:-1], sizes[1:])]
    t = 5
    x = rng.normal(size=(t, sizes[0])).astype(np.float32)
    if cost == "mse":
        y = rng.uniform(size=(t, sizes[-1])).astype(np.float32)
    else:
        y = np.eye(sizes[-1], dtype=np.float32)[rng.integers(sizes[-1], size=t)]
    ours, expected = _both_grads(us, x, y, activations, cost)
    for l, (a, b) in enumerate(zip(ours, expected), start=1):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        assert a.shape == b.shape == (sizes[l], sizes[l - 1] + 1)
        err = np.linalg.norm(a - b)
        assert err <= 1e-5 * np.linalg.norm(b) + 1e-7, f"layer {l}: |ΔU − grad| = {err}"


@pytest.mark.parametrize("sizes, activations, cost", [
    ((3, 8, 5, 2), ("tanh", "relu", "sigmoid"), "mse"),
    ((4, 16, 3), ("relu", "identity"), "cross_entropy"),
])
def test_hand_written_sgd_matches_optax(sizes, activations, cost, key):
    rho, t, steps, n = 0.5, 8, 100, 40
    k_init, k_train = jax.random.split(key)
    us0 = bp.init(k_init, sizes)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, sizes[0])).astype(np.float32)
    if cost == "mse":
        y = rng.uniform(size=(n, sizes[-1])).astype(np.float32)
    else:
        y = np.eye(sizes[-1], dtype=np.float32)[rng.integers(sizes[-1], size=n)]

    ours, losses = bp.train(k_train, us0, x, y, rho=rho, batch_size=t, steps=steps,
                            activations=activations, cost=cost)

    @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
    def optax_train(us, x, y):
        opt = optax.sgd(rho)

        def step(carry, i):
            us, state = carry
            idx = bp.minibatch_indices(k_train, i, n, t)
            g = jax.grad(lambda us: oracle_cost(us, x[idx], y[idx], activations, cost) / t)(us)
            updates, state = opt.update(g, state, us)
            return (optax.apply_updates(us, updates), state), None

        (us, _), _ = jax.lax.scan(step, (us, opt.init(us)), jnp.arange(steps))
        return us

    theirs = optax_train(us0, x, y)
    losses = np.asarray(losses)
    assert losses.shape == (steps,) and losses[-1] < losses[0]
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=0)
    # The weights did move: the comparison is not of two untouched copies.
    assert max(np.abs(np.asarray(a) - np.asarray(b)).max() for a, b in zip(ours, us0)) > 1e-2


def test_sgd_step_is_the_averaged_update():
    rng = np.random.default_rng(0)
    us = [rng.normal(size=(4, 4)).astype(np.float32), rng.normal(size=(2, 5)).astype(np.float32)]
    activations = ("sigmoid", "sigmoid")
    x = rng.normal(size=(4, 3)).astype(np.float32)
    y = rng.uniform(size=(4, 2)).astype(np.float32)
    new = bp.sgd_step(us, x, y, 0.1, activations, "mse")
    delta = bp.grads(us, x, y, activations, "mse")
    for u, n, d in zip(us, new, delta):
        np.testing.assert_allclose(n, u - 0.1 / 4 * np.asarray(d), rtol=1e-6)


def test_weight_matrices_have_a_bias_column(key):
    sizes = (784, 100, 50, 10)
    shapes = jax.eval_shape(lambda k: bp.init(k, sizes), key)
    assert [u.shape for u in shapes] == [(100, 785), (50, 101), (10, 51)]
    for u, n_in, n_out in zip(shapes, sizes[:-1], sizes[1:]):
        assert u.size == (n_in + 1) * n_out
    us = bp.init(key, (3, 8, 5, 2))
    for u in us:
        np.testing.assert_array_equal(u[:, 0], 0.0)
        assert np.abs(np.asarray(u[:, 1:])).max() > 0


def test_forward_prepends_the_bias_node():
    us = [np.ones((3, 3), np.float32), np.ones((1, 4), np.float32)]
    ss, zs = jax.jit(bp.forward, static_argnums=2)(us, np.array([0.5, -1.0], np.float32),
                                                   ("relu", "sigmoid"))
    assert [s.shape for s in ss] == [(3,), (1,)]
    assert [z.shape for z in zs] == [(3,), (4,), (1,)]
    np.testing.assert_allclose(zs[1], [1.0, 0.5, 0.5, 0.5])   # (1, relu(1 + 0.5 − 1) …)
    np.testing.assert_allclose(ss[1], [2.5])


def test_minibatches_are_drawn_without_replacement(key):
    idx = bp.minibatch_indices(key, 3, 10, 10)
    assert sorted(idx.tolist()) == list(range(10))


@pytest.mark.parametrize("activations, cost, match", [
    (("relu", "sigmoid"), "cross_entropy", "identity"),
    (("relu", "sigmoid"), "hinge", "cost"),
    (("relu",), "mse", "activations"),
    (("relu", "swish"), "mse", "activation"),
])
def test_bad_arguments_raise(activations, cost, match, key):
    us = bp.init(key, (2, 3, 2))
    with pytest.raises(ValueError, match=match):
        bp.grads(us, jnp.zeros((1, 2)), jnp.zeros((1, 2)), activations, cost)
