"""`jaxdl.compiler`: jaxdl's compiler options, where they apply and where they cannot."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import lax

from jaxdl import compiler, models, train


def _conv(x, w):
    return lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _lenet5(batch):
    """A LeNet-5 train state and a batch of random images with labels."""
    x = jax.random.normal(jax.random.PRNGKey(0), (batch, 32, 32, 1))
    state = train.create_state(jax.random.PRNGKey(1), models.LeNet5(num_classes=10),
                               optax.sgd(0.1, momentum=0.9), x[:1])
    return state, x, jnp.arange(batch) % 10


@pytest.fixture
def fresh_options():
    compiler.options.cache_clear()
    yield
    compiler.options.cache_clear()


def test_cpu_convolutions_leave_ynnpack_and_keep_their_values(fresh_options):
    assert jax.default_backend() == "cpu"
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 8, 8, 32))
    w = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 32, 32))
    ours = compiler.jit(_conv).lower(x, w).compile()
    if compiler.options():  # this jaxlib knows the options: the convolution is XLA's own op
        assert compiler.options() == compiler.CPU_OPTIONS
        text = ours.as_text()
        assert " convolution(" in text.split("ENTRY")[1] and "__ynn_fusion" not in text
    np.testing.assert_allclose(ours(x, w), jax.jit(_conv)(x, w), rtol=1e-5, atol=1e-4)


def test_options_a_jaxlib_rejects_fall_back_to_its_defaults(fresh_options, monkeypatch):
    monkeypatch.setattr(compiler, "CPU_OPTIONS", {"xla_cpu_no_such_option_anywhere": True})
    assert compiler.options() == {}
    f = compiler.jit(lambda x: x * 2.0)
    np.testing.assert_array_equal(f(jnp.arange(3.0)), [0.0, 2.0, 4.0])


def test_callers_options_win_over_jaxdls(monkeypatch):
    seen = {}
    monkeypatch.setattr(jax, "jit", lambda fn, **kw: seen.update(kw) or fn)
    monkeypatch.setattr(compiler, "options", lambda: {"a": 1, "b": 2})
    compiler.jit(lambda x: x, donate_argnums=0, compiler_options={"b": 3})
    assert seen == {"donate_argnums": 0, "compiler_options": {"a": 1, "b": 3}}


def test_a_compiled_train_step_matches_plain_jit(fresh_options):
    """LeNet-5's step through `train.compile_steps` (jaxdl's options) against `jax.jit`'s defaults."""
    state, x, y = _lenet5(8)
    ours = train.compile_steps(train.train_step, None, None, ())
    plain = jax.jit(train.train_step)
    a, ma = ours(jax.tree.map(jnp.copy, state), {"x": x, "y": y})
    b, mb = plain(state, {"x": x, "y": y})
    np.testing.assert_allclose(ma["loss"], mb["loss"], rtol=1e-5)
    for u, v in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_allclose(u, v, rtol=1e-4, atol=1e-6)


def test_a_conv_models_compiled_steps_are_bitwise_repeatable():
    """Exact resume and identical logs need it: Eigen's threads must not change the sums."""
    state, x, y = _lenet5(64)
    step = train.compile_steps(train.train_step, None, None, ())
    runs = []
    for _ in range(3):
        s = jax.tree.map(jnp.copy, state)
        for _ in range(2):
            s, _ = step(s, {"x": x, "y": y})
        runs.append(np.concatenate([np.asarray(leaf).ravel() for leaf in jax.tree.leaves(s.params)]))
    assert all(np.array_equal(runs[0], r) for r in runs[1:])
