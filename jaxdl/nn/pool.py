"""Pooling: max, average and weighted average over strided windows, and global average pooling.

Glossary: B batch, C channels; x is (B, *spatial, C) with one or two (or more)
spatial dims, and a window/stride has one entry per spatial dim. Pooling keeps
the number of feature maps and has no parameters, except the learned weights of
`WeightedAvgPool`.

Padding "valid" uses only whole windows: out = (n − w)//s + 1. Padding "same"
gives out = ceil(n / s) and pads max(0, (out − 1)·s + w − n) in total, the
smaller half before (the convention of `lax.reduce_window` and TensorFlow).
Max pooling pads with −inf; average pooling divides by the number of real
elements in the window, so padding never dilutes an average.
"""
from __future__ import annotations

import functools
import itertools
import numbers
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxdl.errors import UserError, unknown_name

Array = jax.Array
PADDINGS = ("valid", "same")


def _as_tuple(value: int | Sequence[int], nd: int, name: str) -> tuple[int, ...]:
    values = (value,) * nd if isinstance(value, numbers.Integral) else tuple(value)
    if len(values) != nd:
        raise UserError(f"{name}={value!r} must be an int or {nd} ints for input with "
                        f"{nd} spatial dims")
    if any(int(v) <= 0 for v in values):
        raise UserError(f"{name}={value!r} must be positive (≥ 1)")
    return tuple(int(v) for v in values)


def _geometry(x: Array, window, stride, padding: str):
    """Checks arguments; returns (window, stride, pads, out) per spatial dim."""
    if x.ndim < 3:
        raise UserError(f"x has shape {x.shape}; pooling expects (B, *spatial, C) "
                        "with at least one spatial dim")
    nd = x.ndim - 2
    window = _as_tuple(window, nd, "window")
    stride = window if stride is None else _as_tuple(stride, nd, "stride")
    if not isinstance(padding, str) or padding.lower() not in PADDINGS:
        raise unknown_name("padding mode", str(padding), PADDINGS, "padding")
    size = x.shape[1:-1]
    if padding.lower() == "valid":
        if any(w > n for w, n in zip(window, size)):
            raise UserError(f"window {window} is larger than the input {tuple(size)}; "
                            "use a smaller window or padding='same'")
        pads = tuple((0, 0) for _ in size)
        out = tuple((n - w) // s + 1 for n, w, s in zip(size, window, stride))
    else:
        out = tuple(-(-n // s) for n, s in zip(size, stride))
        total = tuple(max((o - 1) * s + w - n, 0) for o, s, w, n in zip(out, stride, window, size))
        pads = tuple((t // 2, t - t // 2) for t in total)
    return window, stride, pads, out


def _pad(x: Array, pads, value) -> Array:
    if all(p == (0, 0) for p in pads):
        return x
    return jnp.pad(x, ((0, 0), *pads, (0, 0)), constant_values=value)


def _offset_slices(xp: Array, window, stride, out):
    """Yields (offset, view): for each window offset, the strided slice it sees at every output."""
    batch, channels = xp.shape[0], xp.shape[-1]
    for offset in itertools.product(*(range(w) for w in window)):
        limit = (batch, *(o + (m - 1) * s + 1 for o, m, s in zip(offset, out, stride)), channels)
        yield offset, lax.slice(xp, (0, *offset, 0), limit, (1, *stride, 1))


def _blocks(xp: Array, window, out) -> tuple[Array, tuple[int, ...]]:
    """Reshapes non-overlapping windows (stride == window) into their own axes.

    Returns:
      (B, o_1, w_1, o_2, w_2, …, C) and the window axes (2, 4, …).
    """
    batch, channels = xp.shape[0], xp.shape[-1]
    limit = (batch, *(o * w for o, w in zip(out, window)), channels)
    xp = lax.slice(xp, (0,) * xp.ndim, limit)
    shape = (batch, *itertools.chain.from_iterable(zip(out, window)), channels)
    return xp.reshape(shape), tuple(2 + 2 * i for i in range(len(window)))


def _lowest(dtype) -> float | int:
    return -jnp.inf if jnp.issubdtype(dtype, jnp.floating) else jnp.iinfo(dtype).min


def max_pool(x: Array, window: int | Sequence[int], stride: int | Sequence[int] | None = None,
             padding: str = "valid") -> Array:
    """Maximum over each window.

    On the CPU, non-overlapping windows (stride == window) are reshaped into their
    own axes and reduced with one max, whose gradient is 6× cheaper on XLA:CPU than
    `lax.reduce_window`'s select-and-scatter; other strides take the max over
    strided slices. Other backends use `lax.reduce_window`, as `flax.linen.max_pool`.
    On every backend a window's derivative goes to its first maximum (row-major) when
    it holds the maximum more than once.

    Args:
      x: (B, *spatial, C).
      window: int or one int per spatial dim.
      stride: int or one int per spatial dim; defaults to the window.
      padding: "valid" or "same" (padded with −inf).

    Returns:
      (B, *out, C).

    Raises:
      ValueError: a non-positive window or stride, a window larger than the
        input with "valid", or an unknown padding mode.
    """
    x = jnp.asarray(x)
    window, stride, pads, out = _geometry(x, window, stride, padding)
    cpu = functools.partial(_max_pool_cpu, window=window, stride=stride, pads=pads, out=out)
    native = functools.partial(_max_pool_native, window=window, stride=stride, pads=pads)
    return lax.platform_dependent(x, cpu=cpu, default=native)


def _max_pool_cpu(x: Array, window, stride, pads, out) -> Array:
    xp = _pad(x, pads, _lowest(x.dtype))
    if stride == window:
        blocks, axes = _blocks(xp, window, out)
        return _block_max(blocks, axes)
    return _slices_max(xp, window, stride, out)


# Where a window holds its maximum more than once, the derivative goes to the first of
# them (row-major in the window), as `lax.reduce_window`'s select-and-scatter (the other
# backends' path, `flax.linen.max_pool`) and PyTorch route it; `jnp.max` and
# `jnp.maximum` would split it among the ties. Max pooling after a ReLU ties wherever a
# window is all zeros.

@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _block_max(blocks: Array, axes: tuple[int, ...]) -> Array:
    """Max over the window axes of `_blocks`, its derivative to each window's first maximum."""
    return jnp.max(blocks, axis=axes)


@_block_max.defjvp
def _block_max_jvp(axes, primals, tangents):
    (blocks,), (dblocks,) = primals, tangents
    top = jnp.max(blocks, axis=axes, keepdims=True)
    sizes = [blocks.shape[a] for a in axes]
    where = [1] * blocks.ndim
    for a, n in zip(axes, sizes):
        where[a] = n
    position = jnp.asarray(np.arange(np.prod(sizes), dtype=np.int32).reshape(where))  # row-major in the window
    first = jnp.min(jnp.where(blocks == top, position, position.size), axis=axes, keepdims=True)
    tangent = jnp.sum(jnp.where(position == first, dblocks, jnp.zeros_like(dblocks)), axis=axes)
    return jnp.squeeze(top, axes), tangent


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2, 3))
def _slices_max(xp: Array, window, stride, out) -> Array:
    """Max over the strided views of each window offset, its derivative to each window's first maximum."""
    acc = None
    for _, view in _offset_slices(xp, window, stride, out):
        acc = view if acc is None else jnp.maximum(acc, view)
    return acc


@_slices_max.defjvp
def _slices_max_jvp(window, stride, out, primals, tangents):
    (xp,), (dxp,) = primals, tangents
    views = [view for _, view in _offset_slices(xp, window, stride, out)]
    dviews = [view for _, view in _offset_slices(dxp, window, stride, out)]
    top = _slices_max(xp, window, stride, out)
    first = jnp.full(top.shape, len(views), jnp.int32)
    for offset in reversed(range(len(views))):  # offsets come row-major in the window
        first = jnp.where(views[offset] == top, offset, first)
    tangent = sum(jnp.where(first == offset, dview, jnp.zeros_like(dview))
                  for offset, dview in enumerate(dviews))
    return top, tangent


def _max_pool_native(x: Array, window, stride, pads) -> Array:
    return lax.reduce_window(x, _lowest(x.dtype), lax.max, (1, *window, 1),
                             (1, *stride, 1), ((0, 0), *pads, (0, 0)))


def _real_counts(size, window, stride, pads, out) -> np.ndarray:
    """Number of real (unpadded) elements in each window, (1, *out, 1); static."""
    counts = np.ones((1,), np.int64)
    for n, w, s, (lo, _), o in zip(size, window, stride, pads, out):
        starts = np.arange(o) * s - lo
        per_dim = np.minimum(starts + w, n) - np.maximum(starts, 0)
        counts = np.multiply.outer(counts, per_dim)
    return counts.reshape((1, *out, 1))


def avg_pool(x: Array, window: int | Sequence[int], stride: int | Sequence[int] | None = None,
             padding: str = "valid") -> Array:
    """Mean over each window, counting only real elements where "same" pads.

    The window sums are formed as in `max_pool`: by reshaping or strided slices on
    the CPU, by `lax.reduce_window` elsewhere.

    Args:
      x: (B, *spatial, C).
      window: int or one int per spatial dim.
      stride: int or one int per spatial dim; defaults to the window.
      padding: "valid" or "same".

    Returns:
      (B, *out, C), floating point.

    Raises:
      ValueError: as `max_pool`.
    """
    x = jnp.asarray(x)
    x = x.astype(jnp.result_type(x, float))
    window, stride, pads, out = _geometry(x, window, stride, padding)
    cpu = functools.partial(_sum_pool_cpu, window=window, stride=stride, pads=pads, out=out)
    native = functools.partial(_sum_pool_native, window=window, stride=stride, pads=pads)
    total = lax.platform_dependent(x, cpu=cpu, default=native)
    counts = _real_counts(x.shape[1:-1], window, stride, pads, out)
    return total / jnp.asarray(counts, x.dtype)


def _sum_pool_cpu(x: Array, window, stride, pads, out) -> Array:
    xp = _pad(x, pads, 0)
    if stride == window:
        blocks, axes = _blocks(xp, window, out)
        return jnp.sum(blocks, axis=axes)
    return sum(view for _, view in _offset_slices(xp, window, stride, out))


def _sum_pool_native(x: Array, window, stride, pads) -> Array:
    return lax.reduce_window(x, 0.0, lax.add, (1, *window, 1), (1, *stride, 1),
                             ((0, 0), *pads, (0, 0)))


def weighted_avg_pool(x: Array, weights: Array, stride: int | Sequence[int] | None = None,
                      padding: str = "valid") -> Array:
    """Weighted mean over each window; the window is the shape of `weights`.

    The weights are normalised to sum to 1 over the window, so only their
    ratios matter; uniform weights give `avg_pool`. Where "same" padding cuts a
    window, the weights of its real elements are renormalised to sum to 1.

    Args:
      x: (B, *spatial, C).
      weights: (*window) shared by all channels, or (*window, C) per channel;
        non-negative with a positive sum over the window.
      stride: int or one int per spatial dim; defaults to the window.
      padding: "valid" or "same".

    Returns:
      (B, *out, C), floating point.

    Raises:
      ValueError: as `max_pool`, or weights of the wrong rank or channel count.
    """
    x = jnp.asarray(x)
    weights = jnp.asarray(weights)
    dtype = jnp.result_type(x, weights, float)
    x, weights = x.astype(dtype), weights.astype(dtype)
    nd = x.ndim - 2
    if weights.ndim == nd:
        weights = weights[..., None]
    if weights.ndim != nd + 1 or weights.shape[-1] not in (1, x.shape[-1]):
        raise UserError(f"weights has shape {weights.shape}; expected (*window) or (*window, C) "
                        f"for x of shape {x.shape}")
    window_axes = tuple(range(nd))
    weights = weights / jnp.sum(weights, axis=window_axes, keepdims=True)
    window, stride, pads, out = _geometry(x, weights.shape[:nd], stride, padding)
    bshape = (1,) * (nd + 1) + (weights.shape[-1],)
    xp = _pad(x, pads, 0)
    total = sum(view * weights[offset].reshape(bshape)
                for offset, view in _offset_slices(xp, window, stride, out))
    if any(p != (0, 0) for p in pads):
        mask = _pad(jnp.ones((1, *x.shape[1:-1], 1), dtype), pads, 0)
        norm = sum(view * weights[offset].reshape(bshape)
                   for offset, view in _offset_slices(mask, window, stride, out))
        total = total / norm
    return total


def global_avg_pool(x: Array, keepdims: bool = False) -> Array:
    """Mean over all spatial dims: (B, *spatial, C) → (B, C), or (B, 1, …, 1, C) with keepdims.

    Makes a network accept any input size: whatever the spatial size, the
    classifier head sees C features.
    """
    x = jnp.asarray(x)
    return jnp.mean(x, axis=tuple(range(1, x.ndim - 1)), keepdims=keepdims)


class MaxPool(nn.Module):
    """`max_pool` as a layer. Attributes: window, strides (default: window), padding."""

    window: int | Sequence[int]
    strides: int | Sequence[int] | None = None
    padding: str = "valid"

    def __call__(self, x: Array) -> Array:
        return max_pool(x, self.window, self.strides, self.padding)


class AvgPool(nn.Module):
    """`avg_pool` as a layer. Attributes: window, strides (default: window), padding."""

    window: int | Sequence[int]
    strides: int | Sequence[int] | None = None
    padding: str = "valid"

    def __call__(self, x: Array) -> Array:
        return avg_pool(x, self.window, self.strides, self.padding)


class WeightedAvgPool(nn.Module):
    """`weighted_avg_pool` with learned weights: a softmax over the window of "logits".

    The logits start at zero, so the layer starts as average pooling.

    Attributes:
      window: int or one int per spatial dim.
      strides: defaults to the window.
      padding: "valid" or "same".
      per_channel: one set of weights per channel instead of one shared set.
    """

    window: int | Sequence[int]
    strides: int | Sequence[int] | None = None
    padding: str = "valid"
    per_channel: bool = False
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        nd = x.ndim - 2
        window = _as_tuple(self.window, nd, "window")
        shape = (*window, x.shape[-1]) if self.per_channel else window
        logits = self.param("logits", nn.initializers.zeros_init(), shape, self.param_dtype)
        weights = jax.nn.softmax(logits, axis=tuple(range(nd)))
        return weighted_avg_pool(x, weights, self.strides, self.padding)


class GlobalAvgPool(nn.Module):
    """`global_avg_pool` as a layer: (B, *spatial, C) → (B, C)."""

    keepdims: bool = False

    def __call__(self, x: Array) -> Array:
        return global_avg_pool(x, self.keepdims)
