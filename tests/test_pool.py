"""Pooling against a plain NumPy loop, and max-pool gradients against flax.linen.max_pool."""
import functools
import itertools
import zlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdl import nn as jnn

# These shapes are tiny, so XLA:CPU's optimising back end costs far more than it
# saves: compile the test programs without it.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}


def _np_pool(x, window, stride, padding, kind, weights=None):
    """Pools (B, *spatial, C) one output at a time, over the real elements of each window."""
    nd = x.ndim - 2
    size = x.shape[1:-1]
    if padding == "valid":
        out = [(n - w) // s + 1 for n, w, s in zip(size, window, stride)]
        lo = [0] * nd
    else:
        out = [-(-n // s) for n, s in zip(size, stride)]
        lo = [max((o - 1) * s + w - n, 0) // 2 for o, s, w, n in zip(out, stride, window, size)]
    if weights is not None:
        weights = weights.reshape(*window, -1)
    result = np.zeros((x.shape[0], *out, x.shape[-1]))
    for o in itertools.product(*(range(m) for m in out)):
        starts = [i * s - l for i, s, l in zip(o, stride, lo)]
        region = tuple(slice(max(a, 0), min(a + w, n)) for a, w, n in zip(starts, window, size))
        patch = x[(slice(None), *region, slice(None))]
        if kind == "max":
            value = patch.max(axis=tuple(range(1, nd + 1)))
        elif kind == "avg":
            value = patch.mean(axis=tuple(range(1, nd + 1)))
        else:
            wregion = tuple(slice(r.start - a, r.stop - a) for r, a in zip(region, starts))
            w = weights[wregion] / weights[wregion].sum(axis=tuple(range(nd)))
            value = (patch * w[None]).sum(axis=tuple(range(1, nd + 1)))
        result[(slice(None), *o, slice(None))] = value
    return result


def _configs(nd, count, seed):
    """Random tiny configurations: (spatial, window, stride, padding, per-channel weights)."""
    rng = np.random.default_rng(seed)
    configs = []
    while len(configs) < count:
        padding = ["valid", "same"][len(configs) % 2]
        window = tuple(int(w) for w in rng.integers(1, 4, size=nd))
        spatial = tuple(int(n) for n in rng.integers(2, 8, size=nd))
        if padding == "valid" and any(w > n for w, n in zip(window, spatial)):
            continue
        # Every third configuration uses stride = window (non-overlapping windows).
        if len(configs) % 3 == 0:
            stride = None
        else:
            stride = tuple(int(s) for s in rng.integers(1, 4, size=nd))
        configs.append((spatial, window, stride, padding, bool(rng.integers(2))))
    return configs


KINDS = ("max", "avg", "weighted")
# Each configuration is compiled once, for all three kinds of pooling, and each
# kind is checked on its own random input: 72 configurations, 216 cases.
CASES = [(kind, cfg) for nd in (1, 2) for cfg in _configs(nd, 36, seed=10 * nd) for kind in KINDS]


def _case_id(case):
    kind, (spatial, window, stride, padding, per_channel) = case
    return (f"{kind}-x{'x'.join(map(str, spatial))}-w{'x'.join(map(str, window))}"
            f"-s{stride}-{padding}{'-per_channel' if per_channel and kind == 'weighted' else ''}")


@functools.partial(jax.jit, static_argnames=("window", "stride", "padding"),
                   compiler_options=FAST_COMPILE)
def _pools(x, weights, window, stride, padding):
    return {"max": jnn.max_pool(x, window, stride, padding),
            "avg": jnn.avg_pool(x, window, stride, padding),
            "weighted": jnn.weighted_avg_pool(x, weights, stride, padding)}


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_pool_matches_numpy_loop(case):
    kind, (spatial, window, stride, padding, per_channel) = case
    rng = np.random.default_rng(zlib.crc32(_case_id(case).encode()))
    channels = 2
    x = rng.normal(size=(2, *spatial, channels)).astype(np.float32)
    weights = rng.uniform(0.1, 1.0, size=window + ((channels,) if per_channel else ()))
    weights = weights.astype(np.float32)
    got = _pools(x, weights, window, stride, padding)[kind]
    expected = _np_pool(x.astype(np.float64), window, stride or window, padding, kind,
                        weights.astype(np.float64))
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape, window, stride, padding", [
    ((2, 6, 4, 3), (2, 2), None, "valid"),      # reshape-and-max path
    ((2, 7, 5, 3), (2, 2), None, "same"),       # reshape path with −∞ padding
    ((2, 7, 5, 3), (3, 3), (2, 2), "valid"),    # strided slices
    ((2, 7, 5, 3), (3, 2), (2, 1), "same"),
    ((2, 9, 3), (3,), (2,), "same"),
])
def test_max_pool_gradient_matches_flax(shape, window, stride, padding):
    # Distinct values make the argmax, and hence the gradient, unique.
    x = np.random.default_rng(0).permutation(np.prod(shape)).reshape(shape).astype(np.float32)
    cot = np.random.default_rng(1).normal(size=x.shape).astype(np.float32)

    # Flax's strides default to 1, not to the window.
    flax_stride = stride or window

    def ours(x):
        return jnn.max_pool(x, window, stride, padding)

    def theirs(x):
        return nn.max_pool(x, window, flax_stride, padding.upper())

    @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
    def grads(x):
        ours_out, theirs_out = ours(x), theirs(x)
        weight = jax.lax.slice(cot, (0,) * x.ndim, ours_out.shape)
        return (ours_out, theirs_out,
                jax.grad(lambda x: jnp.sum(ours(x) * weight))(x),
                jax.grad(lambda x: jnp.sum(theirs(x) * weight))(x))

    ours_out, flax_out, ours_grad, flax_grad = grads(x)
    np.testing.assert_array_equal(ours_out, flax_out)
    np.testing.assert_array_equal(ours_grad, flax_grad)


@pytest.mark.parametrize("shape, window, stride, padding", [
    ((2, 6, 4, 3), (2, 2), None, "valid"),
    ((2, 7, 5, 3), (2, 2), None, "same"),
    ((2, 7, 5, 3), (3, 3), (2, 2), "valid"),
    ((2, 7, 5, 3), (3, 2), (2, 1), "same"),
    ((2, 9, 3), (3,), (2,), "same"),
])
def test_max_pool_gradient_goes_to_the_first_of_tied_maxima(shape, window, stride, padding):
    # Three values only, so most windows hold their maximum more than once (as after a
    # ReLU, where whole windows are zero). flax.linen.max_pool (select-and-scatter) gives
    # each window's gradient to its first maximum, row-major; so must every path here.
    x = np.random.default_rng(2).integers(0, 3, size=shape).astype(np.float32)
    flax_stride = stride or window

    @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
    def grads(x):
        out = jnn.max_pool(x, window, stride, padding)
        weight = jnp.asarray(np.random.default_rng(3).normal(size=out.shape).astype(np.float32))
        ours = jax.grad(lambda x: jnp.sum(jnn.max_pool(x, window, stride, padding) * weight))(x)
        theirs = jax.grad(lambda x: jnp.sum(nn.max_pool(x, window, flax_stride, padding.upper()) * weight))(x)
        ours_fwd = jax.jvp(lambda x: jnn.max_pool(x, window, stride, padding), (x,), (x + 1.0,))[1]
        theirs_fwd = jax.jvp(lambda x: nn.max_pool(x, window, flax_stride, padding.upper()), (x,), (x + 1.0,))[1]
        return ours, theirs, ours_fwd, theirs_fwd

    ours, theirs, ours_fwd, theirs_fwd = grads(x)
    assert np.count_nonzero(ours) < x.size // 2  # the ties were there, and each window got one
    np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_array_equal(ours_fwd, theirs_fwd)


def test_uniform_weights_give_average_pooling():
    x = np.random.default_rng(0).normal(size=(1, 5, 5, 2)).astype(np.float32)

    @jax.jit
    def run(x):
        return (jnn.weighted_avg_pool(x, jnp.full((3, 3), 7.0), 2, "same"),
                jnn.avg_pool(x, 3, 2, "same"))

    weighted, avg = run(x)
    np.testing.assert_allclose(weighted, avg, rtol=1e-6)


def test_global_avg_pool():
    x = np.random.default_rng(0).normal(size=(2, 3, 4, 5)).astype(np.float32)
    np.testing.assert_allclose(jnn.global_avg_pool(x), x.mean(axis=(1, 2)), rtol=1e-6)
    assert jnn.global_avg_pool(x, keepdims=True).shape == (2, 1, 1, 5)
    assert jnn.GlobalAvgPool().apply({}, x).shape == (2, 5)


def test_modules(key):
    x = np.random.default_rng(0).normal(size=(2, 6, 6, 3)).astype(np.float32)

    @jax.jit
    def run(x):
        layer = jnn.WeightedAvgPool((2, 3), strides=(2, 1), per_channel=True)
        variables = layer.init(key, x)
        return (jnn.MaxPool(2).apply({}, x), jnn.AvgPool((2, 2)).apply({}, x),
                layer.apply(variables, x), variables)

    max_out, avg_out, weighted_out, variables = run(x)
    np.testing.assert_allclose(max_out, _np_pool(x, (2, 2), (2, 2), "valid", "max"), rtol=1e-6)
    np.testing.assert_allclose(avg_out, _np_pool(x, (2, 2), (2, 2), "valid", "avg"),
                               rtol=1e-5, atol=1e-6)
    # The weight logits start at zero: the layer starts as average pooling.
    assert variables["params"]["logits"].shape == (2, 3, 3)
    np.testing.assert_allclose(weighted_out, _np_pool(x, (2, 3), (2, 1), "valid", "avg"),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kwargs, match", [
    ({"window": 7}, "window"),
    ({"window": 2, "stride": 0}, "stride"),
    ({"window": 0}, "window"),
    ({"window": 2, "padding": "full"}, "padding"),
    ({"window": (2, 2, 2)}, "window"),
])
def test_bad_arguments_raise(kwargs, match):
    kwargs = dict(kwargs)
    x = jnp.zeros((1, 5, 5, 1))
    for pool in (jnn.max_pool, jnn.avg_pool):
        with pytest.raises(ValueError, match=match):
            pool(x, **kwargs)
    with pytest.raises(ValueError, match=match):
        window = kwargs.pop("window")
        jnn.weighted_avg_pool(x, jnp.ones((window,) * 2 if isinstance(window, int) else window),
                              **kwargs)


# ---------------------------------------------------------------- per backend

def _native_pools(x, window, stride, padding):
    """The non-CPU formulations (`lax.reduce_window`), run here on the CPU."""
    win, strides, pads, out = jnn.pool._geometry(x, window, stride, padding)
    total = jnn.pool._sum_pool_native(x, win, strides, pads)
    counts = jnn.pool._real_counts(x.shape[1:-1], win, strides, pads, out)
    return {"max": jnn.pool._max_pool_native(x, win, strides, pads), "avg": total / counts}


@pytest.mark.parametrize("case", [c for c in CASES if c[0] != "weighted"][::4], ids=_case_id)
def test_native_pooling_matches_numpy_loop(case):
    kind, (spatial, window, stride, padding, _) = case
    x = np.random.default_rng(zlib.crc32(_case_id(case).encode())).normal(size=(2, *spatial, 2))
    x = x.astype(np.float32)
    got = jax.jit(_native_pools, static_argnums=(1, 2, 3), compiler_options=FAST_COMPILE)(
        x, window, stride, padding)[kind]
    expected = _np_pool(x.astype(np.float64), window, stride or window, padding, kind)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("pool", [jnn.max_pool, jnn.avg_pool])
@pytest.mark.parametrize("stride", [None, 1])
def test_pooling_per_backend(pool, stride):
    x = jax.ShapeDtypeStruct((2, 8, 8, 3), jnp.float32)
    fn = jax.jit(jax.grad(lambda x: jnp.sum(pool(x, 2, stride) ** 2)))

    def lowered(platform):
        return jax.export.export(fn, platforms=[platform])(x).mlir_module()
    # Elsewhere lax.reduce_window (flax's formulation); on the CPU, non-overlapping
    # windows are a reshape and one reduction.
    assert "reduce_window" in lowered("cuda")
    assert ("reduce_window" in lowered("cpu")) is False
