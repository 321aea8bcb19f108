"""Convolution from the lecture's sum, checked against lax.conv_general_dilated and Figure 4-14."""
import functools
import itertools
import math
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxdl import nn as jnn

# These shapes are tiny, so XLA:CPU's optimising back end costs far more than it
# saves: compile the test programs without it.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}


def _configs(nd, count, seed):
    """Random tiny configurations: (spatial, kernel, C, K, stride, padding, bias)."""
    rng = np.random.default_rng(seed)
    configs = []
    while len(configs) < count:
        padding = ["valid", "zero", "replicate"][len(configs) % 3]
        kernel = tuple(int(k) for k in rng.integers(1, 4, size=nd))
        if padding != "valid" and any(k % 2 == 0 for k in kernel):
            continue
        spatial = tuple(int(n) for n in rng.integers(3, 8, size=nd))
        if padding == "valid" and any(k > n for k, n in zip(kernel, spatial)):
            continue
        stride = tuple(int(s) for s in rng.integers(1, 4, size=nd))
        stride = stride[0] if len(set(stride)) == 1 else stride
        configs.append((spatial, kernel, int(rng.integers(1, 4)), int(rng.integers(1, 3)),
                        stride, padding, bool(rng.integers(2))))
    return configs


# 36 configurations per dimensionality, each with 3 random draws of x, kernel and
# bias: 216 cases, while compiling each configuration only once.
CASES = [(nd, cfg, draw) for nd in (1, 2) for cfg in _configs(nd, 36, seed=nd)
         for draw in range(3)]


def _case_id(case):
    nd, (spatial, kernel, c, k, stride, padding, bias), draw = case
    return (f"{nd}d-x{'x'.join(map(str, spatial))}-k{'x'.join(map(str, kernel))}-C{c}K{k}"
            f"-s{stride}-{padding}{'-bias' if bias else ''}-{draw}")


@functools.partial(jax.jit, static_argnames=("stride", "padding"), compiler_options=FAST_COMPILE)
def _ours_and_oracle(x, kernel, bias, stride, padding):
    nd = x.ndim - 2
    conv = jnn.conv1d if nd == 1 else jnn.conv2d
    ours = [conv(x, kernel, bias, stride=stride, padding=padding, impl=impl)
            for impl in jnn.conv.IMPLS]
    strides = (stride,) * nd if isinstance(stride, int) else stride
    half = [((k - 1) // 2, (k - 1) // 2) for k in kernel.shape[:nd]]
    if padding == "replicate":
        x = jnp.pad(x, [(0, 0), *half, (0, 0)], mode="edge")
    pads = half if padding == "zero" else [(0, 0)] * nd
    spec = ("NWC", "WIO", "NWC") if nd == 1 else ("NHWC", "HWIO", "NHWC")
    oracle = lax.conv_general_dilated(x, kernel, strides, pads, dimension_numbers=spec,
                                      precision=lax.Precision.HIGHEST)
    if bias is not None:
        oracle = oracle + bias.reshape((1,) * (nd + 1) + bias.shape)
    return ours, oracle


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_conv_matches_lax(case):
    nd, (spatial, kernel_size, c, k, stride, padding, use_bias), draw = case
    rng = np.random.default_rng(zlib.crc32(_case_id(case).encode()))
    x = rng.normal(size=(2, *spatial, c)).astype(np.float32)
    kernel = rng.normal(size=(*kernel_size, c, k)).astype(np.float32)
    bias = rng.normal(size=(k,)).astype(np.float32) if use_bias else None
    every_impl, oracle = _ours_and_oracle(x, kernel, bias, stride=stride, padding=padding)
    for ours in every_impl:  # the lecture's sum, im2col patches and lax: one answer
        assert ours.shape == oracle.shape
        if padding != "valid":
            strides = (stride,) * nd if isinstance(stride, int) else stride
            assert ours.shape[1:-1] == tuple(-(-n // s) for n, s in zip(spatial, strides))
        np.testing.assert_allclose(ours, oracle, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", ["sum", "patches", "xla"])
@pytest.mark.parametrize("nd,pad,kernel_size,stride", [
    (1, 1, 5, 2), (1, 2, 3, 1), (2, 1, 3, 2), (2, 3, 5, 1), (1, 0, 3, 3)])
def test_integer_padding_matches_lax(impl, nd, pad, kernel_size, stride):
    rng = np.random.default_rng(pad * 10 + kernel_size)
    x = rng.normal(size=(2, *(9,) * nd, 3)).astype(np.float32)
    kernel = rng.normal(size=(*(kernel_size,) * nd, 3, 4)).astype(np.float32)
    conv = jnn.conv1d if nd == 1 else jnn.conv2d
    ours = conv(x, kernel, stride=stride, padding=pad, impl=impl)
    spec = ("NWC", "WIO", "NWC") if nd == 1 else ("NHWC", "HWIO", "NHWC")
    oracle = lax.conv_general_dilated(x, kernel, (stride,) * nd, [(pad, pad)] * nd,
                                      dimension_numbers=spec, precision=lax.Precision.HIGHEST)
    np.testing.assert_allclose(ours, oracle, rtol=1e-5, atol=1e-5)


def test_figure_4_14_tensor_convolution():
    r = [[0, 0, 0], [0, 1, 1], [0, 2, 1]]
    g = [[0, 0, 0], [0, 2, 2], [0, 1, 0]]
    b = [[0, 0, 0], [0, 0, 3], [0, 1, 0]]
    c1 = [[0, 0, 0], [0, 0, 1], [0, 1, 0]]
    c2 = [[0, 2, 0], [0, 2, 0], [0, 2, 0]]
    c3 = [[1, 0, 0], [0, 2, 0], [0, 0, 1]]
    x = jnp.asarray(np.stack([r, g, b], axis=-1)[None], jnp.float32)       # (1, 3, 3, 3)
    kernel = jnp.asarray(np.stack([c1, c2, c3], axis=-1)[..., None], jnp.float32)  # (3, 3, 3, 1)
    out = jax.jit(jnn.conv2d, static_argnames="padding")(x, kernel, padding="zero")
    assert out.shape == (1, 3, 3, 1)
    assert out[0, 1, 1, 0] == 9


def test_replicate_padding_by_hand():
    # Padding [1, 2, 4] by copies gives [1, 1, 2, 4, 4]; the kernel [1, 0, -1]
    # takes left minus right neighbour.
    x = jnp.array([1.0, 2.0, 4.0]).reshape(1, 3, 1)
    kernel = jnp.array([1.0, 0.0, -1.0]).reshape(3, 1, 1)
    replicate, zero, valid = jax.jit(lambda x, u: [
        jnn.conv1d(x, u, padding=p)[0, :, 0] for p in ("replicate", "zero", "valid")])(x, kernel)
    np.testing.assert_allclose(replicate, [-1, -3, -2])
    np.testing.assert_allclose(zero, [-2, -3, 2])
    np.testing.assert_allclose(valid, [-3])


def test_conv2d_module_parameter_count(key):
    layer = jnn.Conv2D(64, (7, 7))
    variables = jax.eval_shape(layer.init, key, jnp.zeros((1, 9, 9, 1)))
    count = sum(p.size for p in jax.tree.leaves(variables))
    assert count == (7 * 7 + 1) * 64 == 3200
    assert variables["params"]["kernel"].shape == (7, 7, 1, 64)


@pytest.mark.parametrize("module, shape, out_shape", [
    (functools.partial(jnn.Conv1D, 4, 3, padding="replicate", strides=2), (2, 9, 3), (2, 5, 4)),
    (functools.partial(jnn.Conv2D, 5, (3, 1), use_bias=False), (1, 6, 4, 2), (1, 4, 4, 5)),
])
def test_modules_apply_their_function(module, shape, out_shape, key):
    layer = module()
    params = jax.eval_shape(layer.init, key, jnp.zeros(shape))["params"]
    rng = np.random.default_rng(0)
    params = {name: rng.normal(size=p.shape).astype(np.float32) for name, p in params.items()}
    x = rng.normal(size=shape).astype(np.float32)
    conv = jnn.conv1d if len(shape) == 3 else jnn.conv2d

    @jax.jit
    def run(params, x):
        expected = conv(x, params["kernel"], params.get("bias"), stride=layer.strides,
                        padding=layer.padding, impl=layer.impl)
        return layer.apply({"params": params}, x), expected

    out, expected = run(params, x)
    assert out.shape == out_shape
    assert ("bias" in params) == layer.use_bias
    np.testing.assert_allclose(out, expected, rtol=1e-6)


@pytest.mark.parametrize("kwargs, match", [
    ({"kernel_shape": (2, 2, 1, 1), "padding": "zero"}, "odd"),
    ({"kernel_shape": (3, 3, 1, 1), "stride": 0}, "stride"),
    ({"kernel_shape": (3, 3, 1, 1), "stride": (1, -1)}, "stride"),
    ({"kernel_shape": (5, 5, 1, 1)}, "larger than the padded input"),
    ({"kernel_shape": (3, 3, 1, 1), "padding": "same"}, "padding"),
    ({"kernel_shape": (3, 3, 2, 1)}, "channels"),
    ({"kernel_shape": (3, 3, 1, 1), "padding": -1}, "padding"),
    ({"kernel_shape": (3, 3, 1, 1), "impl": "fft"}, "impl"),
])
def test_bad_arguments_raise(kwargs, match):
    x = jnp.zeros((1, 4, 4, 1))
    kwargs = dict(kwargs)
    kernel = jnp.zeros(kwargs.pop("kernel_shape"))
    with pytest.raises(ValueError, match=match):
        jnn.conv2d(x, kernel, **kwargs)


def test_gradient_flows_through_the_kernel():
    # Weight sharing: every output position contributes to the kernel's gradient.
    x = jnp.ones((1, 5, 1))
    grad = jax.jit(jax.grad(lambda u: jnn.conv1d(x, u).sum()))(jnp.zeros((3, 1, 1)))
    np.testing.assert_allclose(grad[:, 0, 0], [3.0, 3.0, 3.0])


def test_all_offsets_are_visited():
    # A single 1 in the kernel at (y, x) shifts the image by (y, x).
    x = jnp.arange(1.0, 26.0).reshape(1, 5, 5, 1)
    conv = jax.jit(jnn.conv2d)
    for y, xo in itertools.product(range(3), range(3)):
        kernel = np.zeros((3, 3, 1, 1), np.float32)
        kernel[y, xo] = 1.0
        np.testing.assert_array_equal(conv(x, kernel)[0, ..., 0], x[0, y:y + 3, xo:xo + 3, 0])


# ---------------------------------------------------------------- the fast CPU path
#
# `impl="auto"` picks a formulation per backend and shape; each row exercises one of
# its CPU branches, and every impl must give lax's values and gradients.
FAST_CASES = [
    # nd, spatial, kernel, C, K, stride, padding, groups
    (2, (8, 8), (3, 3), 4, 6, 1, 1, 1),      # lax, input gradient one kernel row high
    (2, (9, 8), (5, 3), 6, 16, 1, 2, 1),     # the same, a 5×3 kernel, padding 2
    (2, (7, 6), (3, 3), 17, 5, 1, 1, 1),     # lax convolution (more than 16 channels)
    (2, (9, 9), (5, 5), 1, 6, 1, 0, 1),      # one input channel: one matrix product
    (2, (9, 7), (3, 3), 4, 6, 2, 1, 1),      # lax, strided input gradient
    (2, (7, 7), (3, 3), 4, 6, 2, 1, 2),      # two groups
    (2, (2, 2), (3, 3), 8, 6, 1, 1, 1),      # map smaller than the kernel: one matrix product
    (2, (3, 2), (3, 3), 4, 4, (2, 1), 1, 2),
    (2, (6, 5), (1, 1), 6, 4, 2, 0, 1),      # 1×1 strided: a slice and a matrix product
    (2, (5, 5), (5, 5), 3, 8, 1, 0, 1),      # output smaller than the kernel: col2im gradient
    (2, (6, 6), (5, 5), 4, 4, 1, 0, 2),
    (2, (5, 6), (3, 3), 2, 3, 3, 0, 1),
    (2, (9, 8), (3, 3), 2, 4, 2, 1, 1),      # a narrow patch, few kernels: transposed patches
    (2, (8, 8), (3, 3), 3, 32, 1, 1, 1),     # a narrow patch, more kernels (RGB 3×3): both layouts
    (2, (9, 7), (3, 3), 3, 32, 2, 1, 1),
    (2, (3, 3), (5, 5), 2, 4, 1, 1, 1),      # one output position: the padded window, reshaped
    (1, (4,), (6,), 3, 5, 1, 1, 1),          # one output position, transposed patches
    (1, (40,), (5,), 1, 5, 2, 1, 1),         # the MNIST-1D CNN's layers
    (1, (10,), (3,), 5, 5, 2, 1, 1),
    (1, (4,), (3,), 6, 6, 1, 2, 3),
]


def _fast_id(case):
    nd, spatial, kernel, c, k, stride, padding, groups = case
    return (f"{nd}d-x{'x'.join(map(str, spatial))}-k{'x'.join(map(str, kernel))}-C{c}K{k}"
            f"-s{stride}-p{padding}-g{groups}")


def _lax_oracle(x, kernel, bias, stride, padding, groups):
    nd = x.ndim - 2
    strides = (stride,) * nd if isinstance(stride, int) else stride
    spec = ("NWC", "WIO", "NWC") if nd == 1 else ("NHWC", "HWIO", "NHWC")
    out = lax.conv_general_dilated(x, kernel, strides, [(padding, padding)] * nd,
                                   dimension_numbers=spec, feature_group_count=groups,
                                   precision=lax.Precision.HIGHEST)
    return out + bias.reshape((1,) * (nd + 1) + bias.shape)


@pytest.mark.parametrize("case", FAST_CASES, ids=_fast_id)
def test_every_impl_matches_lax_values_and_gradients(case):
    nd, spatial, kernel_size, c, k, stride, padding, groups = case
    rng = np.random.default_rng(zlib.crc32(_fast_id(case).encode()))
    x = rng.normal(size=(3, *spatial, c)).astype(np.float32)
    kernel = rng.normal(size=(*kernel_size, c // groups, k)).astype(np.float32)
    bias = rng.normal(size=(k,)).astype(np.float32)
    conv = jnn.conv1d if nd == 1 else jnn.conv2d
    out_shape = jax.eval_shape(lambda *a: _lax_oracle(*a, stride, padding, groups), x, kernel, bias).shape
    cot = rng.normal(size=out_shape).astype(np.float32)

    def value_and_grads(fn):
        loss = lambda *args: jnp.sum(fn(*args) * cot)
        return fn(x, kernel, bias), jax.grad(loss, argnums=(0, 1, 2))(x, kernel, bias)

    @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
    def run():
        ours = {impl: value_and_grads(functools.partial(conv, stride=stride, padding=padding,
                                                        impl=impl, groups=groups))
                for impl in jnn.conv.IMPLS}
        return ours, value_and_grads(lambda *a: _lax_oracle(*a, stride, padding, groups))

    ours, (oracle, oracle_grads) = run()
    for impl, (out, grads) in ours.items():
        np.testing.assert_allclose(out, oracle, rtol=1e-4, atol=1e-4, err_msg=impl)
        for name, got, want in zip(("x", "kernel", "bias"), grads, oracle_grads):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=f"{impl} d{name}")


def _lowered(platform, spatial, kernel_size, stride=1, padding=1, channels=8, batch=2):
    x = jax.ShapeDtypeStruct((batch, *spatial, channels), jnp.float32)
    kernel = jax.ShapeDtypeStruct((*kernel_size, channels, 8), jnp.float32)

    def loss(x, kernel):
        return jnp.sum(jnn.conv2d(x, kernel, stride=stride, padding=padding, impl="auto") ** 2)

    fn = jax.jit(jax.grad(loss, argnums=(0, 1)))
    return jax.export.export(fn, platforms=[platform])(x, kernel).mlir_module()


@pytest.mark.parametrize("spatial, kernel_size, stride, padding, channels, cpu_convs", [
    # forward, input gradient, and the kernel gradient over each half of the batch: all lax
    ((8, 8), (3, 3), 1, 1, 8, 2 + jnn.conv.KERNEL_GRADIENT_SPLITS),
    # a large output (32 × 32 × 32 positions): the kernel gradient over eighths of the batch
    ((32, 32), (3, 3), 1, 1, 8, 2 + jnn.conv.KERNEL_GRADIENT_MAX_SPLITS),
    ((32, 32), (3, 3), 2, 1, 8, 2 + jnn.conv.KERNEL_GRADIENT_SPLITS),  # strided: a quarter of them
    ((8, 8), (3, 3), 1, 1, 4, 2 + jnn.conv.KERNEL_GRADIENT_SPLITS),  # a patch of 36 numbers: still lax
    ((2, 2), (3, 3), 1, 1, 8, 0),    # smaller than the kernel: matrix products only
    ((8, 8), (1, 1), 2, 0, 8, 0),    # 1×1: matrix products only
    # output smaller than the kernel: input gradient by col2im
    ((5, 5), (5, 5), 1, 0, 8, 1 + jnn.conv.KERNEL_GRADIENT_SPLITS),
    ((12, 12), (5, 5), 1, 0, 1, 0),  # one input channel (LeNet-5's first layer): matrix products
    ((12, 12), (3, 3), 1, 1, 3, 0),  # RGB 3×3: a patch of 27 numbers, matrix products
])
def test_auto_picks_per_backend_and_shape(spatial, kernel_size, stride, padding, channels, cpu_convs):
    count = lambda text: text.count("stablehlo.convolution")
    batch = 32 if spatial[0] >= 32 else 2
    assert count(_lowered("cpu", spatial, kernel_size, stride, padding, channels, batch)) == cpu_convs
    # Elsewhere the native convolution stays: forward, input and kernel gradient.
    assert count(_lowered("cuda", spatial, kernel_size, stride, padding, channels, batch)) == 3


def _gradients(conv, x, kernel, cot):
    """(d/dx, d/dkernel) of Σ conv(x, kernel) · cot."""
    return jax.jit(jax.grad(lambda x, k: jnp.sum(conv(x, k) * cot), argnums=(0, 1)))(x, kernel)


def test_kernel_gradient_over_many_slices_of_the_batch_matches_lax():
    # 64 × 16 × 16 output positions: the kernel gradient sums four convolutions.
    assert jnn.conv._kernel_gradient_splits(64 * 16 * 16) == 4
    rng = np.random.default_rng(7)
    x = rng.normal(size=(64, 16, 16, 6)).astype(np.float32)
    kernel = rng.normal(size=(3, 3, 6, 5)).astype(np.float32)
    cot = rng.normal(size=(64, 16, 16, 5)).astype(np.float32)
    bias = np.zeros(5, np.float32)
    ours = _gradients(lambda x, k: jnn.conv2d(x, k, padding=1, impl="auto"), x, kernel, cot)
    oracle = _gradients(lambda x, k: _lax_oracle(x, k, bias, 1, 1, 1), x, kernel, cot)
    for got, want in zip(ours, oracle):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("x_shape, kernel_shape, padding", [
    ((4, 12, 12, 1), (5, 5, 1, 6), 0),   # LeNet-5's first layer: transposed patches throughout
    ((4, 12, 12, 3), (3, 3, 3, 64), 1),  # an RGB 3×3 first layer: transposed for the kernel gradient
])
def test_cpu_kernel_gradient_of_a_narrow_layer_reads_rows(x_shape, kernel_shape, padding):
    """A layer on a narrow patch on the CPU: its kernel gradient reads patches laid out
    (Π k · C, B · Π out), a product XLA:CPU gives its library, not one contracting its
    left operand over the leading axis (its generic kernel)."""
    x, kernel = jnp.ones(x_shape), jnp.ones(kernel_shape)
    grad = jax.jit(jax.grad(lambda k: jnp.sum(jnp.tanh(jnn.conv2d(x, k, padding=padding, impl="auto")))))
    hlo = grad.lower(kernel).compile().as_text()
    if jax.default_backend() == "cpu":
        shape = f"= f32[{math.prod(kernel_shape[:-1])},{kernel_shape[-1]}]"
        products = [line for line in hlo.splitlines() if shape in line and "parameter(" not in line]
        assert products  # the kernel gradient, (Π k · C, K), is computed as such
        assert not [line for line in products if " dot(" in line and "lhs_contracting_dims={0}" in line]


@pytest.mark.parametrize("channels, row_high", [(6, True), (16, True), (17, False)])
def test_cpu_input_gradient_of_few_channels_is_one_kernel_row_high(channels, row_high):
    """LeNet-5's second layer (6 → 16 channels, 5×5): on the CPU its input gradient is a
    convolution 1 × 5 whose output has 5 · C channels, not one 5 × 5 with C channels."""
    if jax.default_backend() != "cpu":
        pytest.skip("a formulation of the CPU's; other backends keep the native convolution")
    x, kernel = jnp.ones((2, 14, 14, channels)), jnp.ones((5, 5, channels, 16))
    grad = jax.jit(jax.grad(lambda x: jnp.sum(jnp.tanh(jnn.conv2d(x, kernel, impl="auto")))))
    convs = [line for line in grad.lower(x).compile().as_text().splitlines() if " convolution(" in line]
    high = [line for line in convs if "window={size=1x5" in line and f",{5 * channels}]" in line.split("=")[1]]
    assert len(high) == row_high
    assert len(convs) == 2  # the forward pass and the input gradient


@pytest.mark.parametrize("strides, pads", [((1, 1), ((2, 0), (1, 3))), ((2, 3), ((0, 1), (2, 0)))])
def test_row_input_gradient_matches_lax_with_uneven_padding_and_strides(strides, pads):
    # The layers reach `_row_conv` with stride 1 and even padding; the function itself
    # takes any strides and padding.
    rng = np.random.default_rng(sum(strides))
    x = rng.normal(size=(2, 9, 8, 5)).astype(np.float32)
    kernel = rng.normal(size=(4, 3, 5, 6)).astype(np.float32)
    lax_conv = lambda x, k: lax.conv_general_dilated(x, k, strides, pads, dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                                     precision=lax.Precision.HIGHEST)
    cot = rng.normal(size=jax.eval_shape(lax_conv, x, kernel).shape).astype(np.float32)
    ours = _gradients(lambda x, k: jnn.conv._row_conv(x, k, strides, pads, 1), x, kernel, cot)
    for got, want in zip(ours, _gradients(lax_conv, x, kernel, cot)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_conv_module_groups_and_dtype(key):
    layer = jnn.Conv2D(6, 3, padding=1, groups=2, dtype=jnp.bfloat16)
    x = jnp.ones((1, 5, 5, 4))
    variables = layer.init(key, x)
    assert variables["params"]["kernel"].shape == (3, 3, 2, 6)
    assert variables["params"]["kernel"].dtype == jnp.float32
    assert layer.apply(variables, x).dtype == jnp.bfloat16
    with pytest.raises(ValueError, match="groups"):
        jnn.Conv2D(6, 3, groups=3).init(key, x)


@pytest.mark.parametrize("spatial, kernel_size, padding, features", [
    ((5, 5), (5, 5), 0, 4),   # output smaller than the kernel: the custom-JVP path
    ((2, 2), (3, 3), 1, 4),   # map smaller than the kernel: matrix products
    ((6, 6), (3, 3), 1, 4),   # a narrow patch (27 numbers), few kernels: transposed patches
    ((6, 6), (3, 3), 1, 32),  # a narrow patch, more kernels: the custom-JVP kernel gradient
    ((8, 8), (5, 5), 1, 4),   # lax (a patch of 75 numbers), input gradient one kernel row high
])
def test_auto_forward_mode_and_second_derivatives_match_lax(spatial, kernel_size, padding, features):
    rng = np.random.default_rng(sum(spatial) + padding + features)
    x, dx = (rng.normal(size=(2, *spatial, 3)).astype(np.float32) for _ in range(2))
    kernel, dk = (rng.normal(size=(*kernel_size, 3, features)).astype(np.float32) for _ in range(2))
    bias = np.zeros(features, np.float32)

    def loss(conv):
        return lambda x, kernel: jnp.sum(jnp.tanh(conv(x, kernel)))

    ours = loss(lambda x, k: jnn.conv2d(x, k, padding=padding, impl="auto"))
    oracle = loss(lambda x, k: _lax_oracle(x, k, bias, 1, padding, 1))

    @functools.partial(jax.jit, static_argnums=0, compiler_options=FAST_COMPILE)
    def derivatives(f):
        jvp = jax.jvp(f, (x, kernel), (dx, dk))[1]
        hvp = jax.jvp(jax.grad(f, argnums=(0, 1)), (x, kernel), (dx, dk))[1]
        return jvp, hvp

    (jvp, hvp), (jvp_oracle, hvp_oracle) = derivatives(ours), derivatives(oracle)
    np.testing.assert_allclose(jvp, jvp_oracle, rtol=1e-4, atol=1e-4)
    for got, want in zip(hvp, hvp_oracle):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def _loop_convolutions(conv, x, kernel):
    """The dimension labels of every convolution XLA:CPU compiles for the gradient of
    `conv` inside a two-step `lax.scan` (the body of a loop, not the program's top level)."""
    def body(carry, _):
        x, kernel = carry
        gx, gk = jax.grad(lambda x, k: jnp.sum(jnp.tanh(conv(x, k))), argnums=(0, 1))(x, kernel)
        return (x - 0.1 * gx, kernel - 0.1 * gk), None

    text = jax.jit(lambda x, k: lax.scan(body, (x, k), None, length=2)[0]).lower(x, kernel).compile().as_text()
    return [line.split("dim_labels=")[1].split(",")[0] for line in text.splitlines() if " convolution(" in line]


@pytest.mark.parametrize("nd, stride, channels", [(1, 2, 16), (2, 1, 16), (2, 1, 24), (2, 2, 16)])
def test_auto_gradients_are_library_convolutions_inside_a_loop(nd, stride, channels):
    # XLA:CPU's library runs only canonical convolutions, and rewrites others into them
    # only at a program's top level. Plain `lax` leaves the gradients in the loop in
    # other dimension orders (XLA's own loops); `auto` writes them canonical itself.
    # (2-D, stride 1, 16 channels: the input gradient one kernel row high; 24: lax.)
    spatial = (12,) * nd
    x = jnp.ones((4, *spatial, channels))  # a patch of more than NARROW_PATCH numbers: lax
    kernel = jnp.ones((3,) * nd + (channels, 8))
    canonical = "b0f_0io->b0f" if nd == 1 else "b01f_01io->b01f"
    conv = jnn.conv1d if nd == 1 else jnn.conv2d
    auto = _loop_convolutions(functools.partial(conv, stride=stride, padding=1, impl="auto"), x, kernel)
    assert auto == [canonical] * (2 + jnn.conv.KERNEL_GRADIENT_SPLITS)  # the kernel gradient per half batch
    plain = _loop_convolutions(functools.partial(conv, stride=stride, padding=1, impl="xla"), x, kernel)
    assert len(plain) == 3 and plain.count(canonical) == 1  # the oracle: only the forward pass


@pytest.mark.parametrize("spatial, kernel_size, stride, padding", [
    ((6, 6), (3, 3), 1, 1),   # the canonical-gradient path
    ((7, 6), (3, 3), 2, 1),
    ((5, 5), (5, 5), 1, 0),   # output smaller than the kernel: col2im input gradient
])
def test_auto_vmapped_gradients_match_lax(spatial, kernel_size, stride, padding):
    # Several seeds train as one vmapped program: a kernel and an input per seed.
    rng = np.random.default_rng(sum(spatial) + stride)
    x = rng.normal(size=(3, 2, *spatial, 4)).astype(np.float32)
    kernel = rng.normal(size=(3, *kernel_size, 4, 5)).astype(np.float32)
    bias = np.zeros(5, np.float32)

    def grads(conv):
        loss = lambda x, k: jnp.sum(jnp.tanh(conv(x, k)) ** 2)
        return jax.jit(jax.vmap(jax.grad(loss, argnums=(0, 1))), compiler_options=FAST_COMPILE)(x, kernel)

    ours = grads(lambda x, k: jnn.conv2d(x, k, stride=stride, padding=padding, impl="auto"))
    oracle = grads(lambda x, k: _lax_oracle(x, k, bias, stride, padding, 1))
    for got, want in zip(ours, oracle):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("nd", [1, 2])
def test_replicas_take_matrix_products_for_1d_and_keep_the_plan_for_2d(nd):
    # Seeds vmapped with a kernel each: `lax` convolutions would become grouped ones.
    # Inside `replicas`, "auto" computes 1-D layers as patches (no convolution left in the
    # compiled program) and keeps 2-D layers' convolutions; values and gradients are lax's.
    rng = np.random.default_rng(nd)
    x = rng.normal(size=(3, 2, *(10,) * nd, 16)).astype(np.float32)  # a patch wider than NARROW_PATCH
    kernel = rng.normal(size=(3, *(3,) * nd, 16, 5)).astype(np.float32)
    conv = jnn.conv1d if nd == 1 else jnn.conv2d

    def value_and_grads(f):
        loss = lambda x, k: jnp.sum(jnp.tanh(f(x, k)) ** 2)
        return jax.jit(jax.vmap(jax.value_and_grad(loss, argnums=(0, 1))), compiler_options=FAST_COMPILE)

    with jnn.conv.replicas():
        ours = value_and_grads(lambda x, k: conv(x, k, stride=2, padding=1, impl="auto"))
        text = ours.lower(x, kernel).compile().as_text()
        got = ours(x, kernel)
    assert (" convolution(" in text) == (nd == 2)
    oracle = value_and_grads(lambda x, k: _lax_oracle(x, k, np.zeros(5, np.float32), 2, 1, 1))(x, kernel)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(oracle)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
