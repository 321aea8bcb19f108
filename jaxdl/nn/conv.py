"""Convolution written from the lecture's sum s(j,i) = Σ_y Σ_x z(j+y, i+x)·u(y,x), in 1D and 2D.

Glossary: B batch, H height, W width, C input channels, K kernels (output
channels), kh × kw (or k) the kernel size. Layout is channels-last: x is
(B, W, C) or (B, H, W, C) and a kernel bank is (k, C, K) or (kh, kw, C, K).

Like every deep-learning library this is cross-correlation (the kernel is not
flipped). The lecture centres the kernel, y = -(h-1)/2 … (h-1)/2; after padding
by (h-1)/2 the same sum runs over offsets 0 … h-1 of the padded input, which is
how it is written here. Summing over C as well is the lecture's tensor
convolution (Figure 4-14); K kernels give K feature maps.
"""
from __future__ import annotations

import functools
import itertools
import numbers
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from jaxdl.errors import UserError, unknown_name

Array = jax.Array
PADDINGS = ("valid", "zero", "replicate")
IMPLS = ("sum", "patches", "xla")


def _as_tuple(value: int | Sequence[int], nd: int, name: str) -> tuple[int, ...]:
    """Expands an int to nd copies and checks a sequence has nd entries, all positive."""
    values = (value,) * nd if isinstance(value, numbers.Integral) else tuple(value)
    if len(values) != nd:
        raise UserError(f"{name}={value!r} must be an int or {nd} ints for a {nd}D convolution")
    if any(int(v) <= 0 for v in values):
        raise UserError(f"{name}={value!r} must be positive; use {name}=1 for a dense output")
    return tuple(int(v) for v in values)


def _conv_nd(x: Array, kernel: Array, bias: Array | None, stride: int | Sequence[int],
             padding: str | int, nd: int, impl: str = "sum") -> Array:
    x = jnp.asarray(x)
    kernel = jnp.asarray(kernel)
    layout = "(B, W, C)" if nd == 1 else "(B, H, W, C)"
    klayout = "(k, C, K)" if nd == 1 else "(kh, kw, C, K)"
    if x.ndim != nd + 2:
        raise UserError(f"x has shape {x.shape}; conv{nd}d expects {layout}")
    if kernel.ndim != nd + 2:
        raise UserError(f"kernel has shape {kernel.shape}; conv{nd}d expects {klayout}")
    ksize, (channels, features) = kernel.shape[:nd], kernel.shape[nd:]
    if x.shape[-1] != channels:
        raise UserError(f"x has {x.shape[-1]} channels but the kernel expects {channels}; "
                        f"kernel must be {klayout} with C = x.shape[-1]")
    strides = _as_tuple(stride, nd, "stride")
    if impl not in IMPLS:
        raise unknown_name("convolution implementation", str(impl), IMPLS, "impl")
    if isinstance(padding, numbers.Integral) and not isinstance(padding, bool):
        if padding < 0:
            raise UserError(f"padding={padding} must be >= 0 (zeros on each side)")
        x = jnp.pad(x, [(0, 0)] + [(int(padding), int(padding))] * nd + [(0, 0)])
        padding = "valid"
    if padding not in PADDINGS:
        raise unknown_name("padding mode", str(padding), PADDINGS, "padding")

    if padding != "valid":
        if any(k % 2 == 0 for k in ksize):
            raise UserError(f"padding={padding!r} needs an odd kernel size to keep the output "
                            f"centred, got {tuple(ksize)}; use an odd kernel or padding='valid'")
        pads = [(0, 0)] + [((k - 1) // 2, (k - 1) // 2) for k in ksize] + [(0, 0)]
        x = jnp.pad(x, pads, mode="constant" if padding == "zero" else "edge")

    size = x.shape[1:-1]
    if any(k > n for k, n in zip(ksize, size)):
        raise UserError(f"kernel size {tuple(ksize)} is larger than the padded input "
                        f"{tuple(size)}; "
                        "use a smaller kernel, a larger input, or padding='zero'/'replicate'")
    out = tuple((n - k) // s + 1 for n, k, s in zip(size, ksize, strides))

    batch = x.shape[0]
    offsets = list(itertools.product(*(range(k) for k in ksize)))

    def shifted(offset):  # the input seen through one kernel offset: a strided slice
        start = (0, *offset, 0)
        limit = (batch, *(o + (m - 1) * s + 1 for o, m, s in zip(offset, out, strides)), channels)
        return lax.slice(x, start, limit, (1, *strides, 1))

    if impl == "sum":
        # The lecture's sum: one term per kernel offset, contracted over channels.
        acc = None
        for offset in offsets:
            term = jnp.einsum("...c,ck->...k", shifted(offset), kernel[offset])
            acc = term if acc is None else acc + term
    elif impl == "patches":
        # The same sum as one matrix product: the shifted inputs side by side along
        # channels (im2col) against the kernel bank flattened to (Π k · C, K).
        patches = jnp.concatenate([shifted(o) for o in offsets], axis=-1)
        acc = patches @ kernel.reshape(-1, features)
    else:
        spatial = "HW" if nd == 2 else "W"
        dims = (f"N{spatial}C", f"{spatial}IO", f"N{spatial}C")
        acc = lax.conv_general_dilated(x, kernel, strides, "VALID", dimension_numbers=dims)
    if bias is not None:
        bias = jnp.asarray(bias)
        if bias.shape != (features,):
            raise UserError(f"bias has shape {bias.shape}; expected ({features},), one per kernel")
        acc = acc + bias.reshape((1,) * (nd + 1) + (features,))
    return acc


def conv1d(x: Array, kernel: Array, bias: Array | None = None, stride: int | Sequence[int] = 1,
           padding: str | int = "valid", impl: str = "sum") -> Array:
    """1D convolution s(i) = Σ_x Σ_c z(i·stride + x, c)·u(x, c, k) + b_k.

    Args:
      x: (B, W, C) input.
      kernel: (k, C, K) bank of K kernels, each spanning all C channels.
      bias: optional (K,), one per kernel.
      stride: step between output positions (int or 1-tuple), ≥ 1.
      padding: "valid" (no padding: W_out = (W − k)//stride + 1), "zero" or
        "replicate" ((k − 1)/2 on each side, filled with zeros or copies of the
        edge value: W_out = ceil(W / stride); k must be odd), or an int p: p zeros
        on each side.
      impl: how the sum is computed, all equal up to float rounding: "sum" (one
        term per kernel offset, as written), "patches" (the offsets side by side,
        one matrix product; fastest for small channel counts on the CPU) or "xla"
        (`lax.conv_general_dilated`).

    Returns:
      (B, W_out, K).

    Raises:
      ValueError: bad shapes, a non-positive stride, an even kernel with
        "zero"/"replicate", a kernel larger than the padded input, or an
        unknown padding mode.
    """
    return _conv_nd(x, kernel, bias, stride, padding, nd=1, impl=impl)


def conv2d(x: Array, kernel: Array, bias: Array | None = None, stride: int | Sequence[int] = 1,
           padding: str | int = "valid", impl: str = "sum") -> Array:
    """2D (tensor) convolution s(j, i) = Σ_y Σ_x Σ_c z(j·s_h + y, i·s_w + x, c)·u(y, x, c, k) + b_k.

    Args:
      x: (B, H, W, C) input.
      kernel: (kh, kw, C, K) bank of K kernels, each spanning all C channels.
      bias: optional (K,), one per kernel.
      stride: int or (s_h, s_w), each ≥ 1.
      padding: "valid", "zero", "replicate" or an int, as in `conv1d`, per spatial dim.
      impl: "sum", "patches" or "xla", as in `conv1d`.

    Returns:
      (B, H_out, W_out, K).

    Raises:
      ValueError: as `conv1d`.
    """
    return _conv_nd(x, kernel, bias, stride, padding, nd=2, impl=impl)


class Conv(nn.Module):
    """Convolution layer over `conv1d`/`conv2d`, with "replicate" padding available.

    Use `Conv1D` or `Conv2D`; both are this class with `ndim` fixed. Parameters
    are "kernel" (*kernel_size, C, features) and "bias" (features,): a layer has
    (Π kernel_size · C + 1) · features of them with a bias.

    Attributes:
      features: K, the number of kernels.
      kernel_size: int or one int per spatial dim.
      strides: int or one int per spatial dim.
      padding: "valid", "zero", "replicate", or an int (zeros on each side).
      impl: "sum", "patches" or "xla" (see `conv1d`).
      use_bias: add a bias per kernel.
      kernel_init, bias_init: initialisers.
      ndim: number of spatial dims (1 or 2).
    """

    features: int
    kernel_size: int | Sequence[int]
    strides: int | Sequence[int] = 1
    padding: str | int = "valid"
    impl: str = "sum"
    use_bias: bool = True
    kernel_init: Callable = nn.initializers.lecun_normal()
    bias_init: Callable = nn.initializers.zeros_init()
    param_dtype: jnp.dtype = jnp.float32
    ndim: int = 2

    @nn.compact
    def __call__(self, x: Array) -> Array:
        if self.ndim not in (1, 2):
            raise UserError(f"ndim={self.ndim}; Conv supports 1 or 2 spatial dims")
        ksize = _as_tuple(self.kernel_size, self.ndim, "kernel_size")
        kernel = self.param("kernel", self.kernel_init, (*ksize, x.shape[-1], self.features),
                            self.param_dtype)
        bias = (self.param("bias", self.bias_init, (self.features,), self.param_dtype)
                if self.use_bias else None)
        return _conv_nd(x, kernel, bias, self.strides, self.padding, self.ndim, self.impl)


Conv1D = functools.partial(Conv, ndim=1)
Conv2D = functools.partial(Conv, ndim=2)
