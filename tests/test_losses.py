"""Costs against float64 NumPy oracles and optax; stability at extreme logits."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxdl import losses

RNG = np.random.default_rng(0)
LOGITS = RNG.normal(size=(6, 5)).astype(np.float32) * 3
INT_LABELS = np.array([0, 4, 2, 2, 1, 3])
SOFT_LABELS = RNG.dirichlet(np.ones(5), size=6).astype(np.float32)


def _np_log_softmax(s):
    s = np.asarray(s, np.float64)
    m = s.max(-1, keepdims=True)
    return s - m - np.log(np.exp(s - m).sum(-1, keepdims=True))


def test_mse_lecture_is_half_squared_norm_per_sample():
    o, y = RNG.normal(size=(4, 3)), RNG.normal(size=(4, 3))
    np.testing.assert_allclose(losses.mse_lecture(o, y), 0.5 * ((y - o) ** 2).sum(-1), rtol=1e-6)
    assert losses.mse_lecture(o, y).shape == (4,)


def test_mean_squared_error_is_element_mean_and_masks_examples():
    o, y = RNG.normal(size=(4, 3)), RNG.normal(size=(4, 3))
    assert float(losses.mean_squared_error(o, y)) == pytest.approx(((o - y) ** 2).mean(), rel=1e-6)
    # The two forms differ by 2/c.
    assert float(losses.mean_squared_error(o, y)) == pytest.approx(
        2 / 3 * float(losses.mse_lecture(o, y).mean()), rel=1e-6)
    mask = np.array([1, 0, 1, 0])
    expected = ((o - y) ** 2)[mask == 1].mean()
    assert float(losses.mean_squared_error(o, y, mask)) == pytest.approx(expected, rel=1e-6)
    assert float(losses.mean_squared_error(o, y, np.zeros(4))) == 0.0


@pytest.mark.parametrize("labels", [INT_LABELS, SOFT_LABELS], ids=["int", "soft"])
def test_softmax_cross_entropy_against_float64_oracle(labels):
    dist = np.eye(5)[labels] if labels.dtype.kind == "i" else labels.astype(np.float64)
    expected = -(dist * _np_log_softmax(LOGITS)).sum(-1)
    got = losses.softmax_cross_entropy(LOGITS, labels)
    assert got.shape == (6,)
    np.testing.assert_allclose(got, expected, rtol=1e-5)


@pytest.mark.parametrize("alpha", [0.0, 0.1, 0.3])
@pytest.mark.parametrize("labels", [INT_LABELS, SOFT_LABELS], ids=["int", "soft"])
def test_label_smoothing_matches_optax(alpha, labels):
    dist = jax.nn.one_hot(labels, 5) if labels.dtype.kind == "i" else labels
    expected = optax.softmax_cross_entropy(LOGITS, optax.smooth_labels(dist, alpha))
    got = losses.softmax_cross_entropy(LOGITS, labels, label_smoothing=alpha, num_classes=5)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_cross_entropy_is_stable_at_extreme_logits():
    logits = jnp.array([[1e4, -1e4, 0.0], [-1e4, -1e4, 1e4]])
    labels = jnp.array([1, 2])
    loss = losses.softmax_cross_entropy(logits, labels)
    np.testing.assert_allclose(loss, [2e4, 0.0], rtol=1e-6)
    g = jax.grad(lambda s: losses.softmax_cross_entropy(s, labels).sum())(logits)
    assert np.all(np.isfinite(g))
    bce = losses.binary_cross_entropy_with_logits(jnp.array([1e4, -1e4, 1e4]),
                                                  jnp.array([0.0, 0.0, 1.0]))
    np.testing.assert_allclose(bce, [1e4, 0.0, 0.0])
    nll = losses.negative_log_likelihood(jax.nn.log_softmax(logits), labels)
    np.testing.assert_allclose(nll, loss, rtol=1e-6)


def test_cross_entropy_gradient_is_softmax_minus_labels():
    g = jax.grad(lambda s: losses.softmax_cross_entropy(s, SOFT_LABELS).sum())(LOGITS)
    np.testing.assert_allclose(g, jax.nn.softmax(LOGITS) - SOFT_LABELS, atol=1e-6)


def test_class_mask_excludes_classes_from_the_softmax():
    where = np.array([True, True, False, True, True])
    labels = np.array([0, 4, 1, 3, 1, 3])
    expected = -_np_log_softmax(LOGITS[:, where])[np.arange(6), [0, 3, 1, 2, 1, 2]]
    got = losses.softmax_cross_entropy(LOGITS, labels, where=where)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    g = jax.grad(lambda s: losses.softmax_cross_entropy(s, labels, where=where).sum())(LOGITS)
    assert np.all(np.isfinite(g)) and np.all(g[:, 2] == 0)


@pytest.mark.parametrize("labels", [INT_LABELS, SOFT_LABELS], ids=["int", "soft"])
def test_negative_log_likelihood_against_oracle(labels):
    log_probs = _np_log_softmax(LOGITS)
    dist = np.eye(5)[labels] if labels.dtype.kind == "i" else labels.astype(np.float64)
    got = losses.negative_log_likelihood(log_probs.astype(np.float32), labels)
    np.testing.assert_allclose(got, -(dist * log_probs).sum(-1), rtol=1e-5)


def test_negative_log_likelihood_allows_minus_infinity_off_label():
    log_probs = jnp.array([[0.0, -jnp.inf], [-jnp.inf, 0.0]])
    labels = jnp.array([0, 1])
    np.testing.assert_array_equal(losses.negative_log_likelihood(log_probs, labels), [0.0, 0.0])
    g = jax.grad(lambda lp: losses.negative_log_likelihood(lp, labels).sum())(log_probs)
    assert np.all(np.isfinite(g))


def test_binary_cross_entropy_against_float64_oracle():
    s = RNG.normal(size=(3, 4)) * 4
    t = RNG.uniform(size=(3, 4))
    p = 1 / (1 + np.exp(-s))
    expected = -(t * np.log(p) + (1 - t) * np.log1p(-p))
    got = losses.binary_cross_entropy_with_logits(s.astype(np.float32), t.astype(np.float32))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_shape_and_argument_errors():
    with pytest.raises(ValueError, match="num_classes"):
        losses.softmax_cross_entropy(LOGITS, INT_LABELS, num_classes=4)
    with pytest.raises(ValueError, match="labels"):
        losses.softmax_cross_entropy(LOGITS, INT_LABELS[:3])
    with pytest.raises(ValueError, match="label_smoothing"):
        losses.softmax_cross_entropy(LOGITS, INT_LABELS, label_smoothing=1.5)
    with pytest.raises(ValueError, match="mask"):
        losses.mean_squared_error(np.ones((4, 3)), np.ones((4, 3)), np.ones(3))
