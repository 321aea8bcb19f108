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

import contextlib
import contextvars
import functools
import itertools
import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

from jaxdl.errors import UserError, unknown_name

Array = jax.Array
PADDINGS = ("valid", "zero", "replicate")
IMPLS = ("sum", "patches", "xla", "auto")


def _as_tuple(value: int | Sequence[int], nd: int, name: str) -> tuple[int, ...]:
    """Expands an int to nd copies and checks a sequence has nd entries, all positive."""
    values = (value,) * nd if isinstance(value, numbers.Integral) else tuple(value)
    if len(values) != nd:
        raise UserError(f"{name}={value!r} must be an int or {nd} ints for a {nd}D convolution")
    if any(int(v) <= 0 for v in values):
        raise UserError(f"{name}={value!r} must be positive; use {name}=1 for a dense output")
    return tuple(int(v) for v in values)


def _spatial(nd: int) -> str:
    return "HW" if nd == 2 else "W"


def _spec(nd: int) -> tuple[str, str, str]:
    spatial = _spatial(nd)
    return f"N{spatial}C", f"{spatial}IO", f"N{spatial}C"


def _lax_conv(x, kernel, strides, pads, groups):
    return lax.conv_general_dilated(x, kernel, strides, pads, dimension_numbers=_spec(x.ndim - 2),
                                    feature_group_count=groups)


def _geometry(size, ksize, strides, pads):
    return tuple((n + lo + hi - k) // s + 1 for n, k, s, (lo, hi) in zip(size, ksize, strides, pads))


def _shifted(x, ksize, strides, pads):
    """The zero-padded input seen through each kernel offset: a list of Π k strided slices."""
    nd = x.ndim - 2
    if any(p != (0, 0) for p in pads):
        x = jnp.pad(x, [(0, 0), *pads, (0, 0)])
    out = _geometry(x.shape[1:-1], ksize, strides, [(0, 0)] * nd)
    batch, channels = x.shape[0], x.shape[-1]
    views = []
    for offset in itertools.product(*(range(k) for k in ksize)):
        start = (0, *offset, 0)
        limit = (batch, *(o + (m - 1) * s + 1 for o, m, s in zip(offset, out, strides)), channels)
        views.append(lax.slice(x, start, limit, (1, *strides, 1)))
    return views


def _sum_conv(x, kernel, strides, pads, groups):
    # The lecture's sum: one term per kernel offset, contracted over channels.
    nd = x.ndim - 2
    ksize, (cg, features) = kernel.shape[:nd], kernel.shape[nd:]
    taps = kernel.reshape(-1, cg, groups, features // groups)
    acc = None
    for view, tap in zip(_shifted(x, ksize, strides, pads), taps):
        view = view.reshape(*view.shape[:-1], groups, cg)
        term = jnp.einsum("...gc,cgk->...gk", view, tap)
        acc = term if acc is None else acc + term
    return acc.reshape(*acc.shape[:-2], features)


def _window(x, ksize, pads):
    """The one patch of a convolution whose output is a single position: (B, Π k · C),
    offset-major like `_patches`, as a slice and a reshape (no copies per offset)."""
    if any(p != (0, 0) for p in pads):
        x = jnp.pad(x, [(0, 0), *pads, (0, 0)])
    return x[(slice(None), *(slice(0, k) for k in ksize))].reshape(x.shape[0], -1)


def _patches(x, ksize, strides, pads):
    """im2col: (B, *out, Π k · C), the offsets side by side along channels, offset-major."""
    out = _geometry(x.shape[1:-1], ksize, strides, pads)
    if all(m == 1 for m in out):
        return _window(x, ksize, pads).reshape(x.shape[0], *out, -1)
    return jnp.concatenate(_shifted(x, ksize, strides, pads), axis=-1)


def _patches_by_row(x, ksize, strides, pads):
    """im2col transposed: (Π k · C, B · Π out), offset-major, and the output's spatial size.

    Each offset's view of the input, channels first, is copied whole (rows of the
    map), where `_patches` interleaves pieces of C numbers. The views are cut one
    spatial axis at a time: first the kernel's row offsets of the whole map, then the
    column offsets of those, so each level is one fused copy. For LeNet-5's first
    layer (batch 128) that took 0.53 ms against 1.98 ms for the Π k views of the map
    stacked at once, which XLA:CPU copied one by one before concatenating them.
    """
    out = _geometry(x.shape[1:-1], ksize, strides, pads)
    if all(m == 1 for m in out):
        return _window(x, ksize, pads).T, out
    nd = x.ndim - 2
    batch, channels = x.shape[0], x.shape[-1]
    arr = jnp.moveaxis(x, -1, 0).reshape(channels * batch, *x.shape[1:-1])
    if any(p != (0, 0) for p in pads):
        arr = jnp.pad(arr, [(0, 0), *pads])
    for d in range(nd):  # arr: (k_0, ..., k_{d-1}, C · B, *spatial)
        axis = 2 * d + 1
        start, step = [0] * arr.ndim, [1] * arr.ndim
        step[axis] = strides[d]
        views = []
        for offset in range(ksize[d]):
            start[axis] = offset
            limit = list(arr.shape)
            limit[axis] = offset + (out[d] - 1) * strides[d] + 1
            views.append(lax.slice(arr, start, limit, step))
        arr = jnp.stack(views, axis=d)
    return arr.reshape(math.prod(ksize) * channels, batch * math.prod(out)), out


def _patch_conv(x, kernel, strides, pads, groups):
    # The same sum as one matrix product: the patches against the kernel bank
    # flattened to (Π k · C, K) (per group, a batch of G products).
    nd = x.ndim - 2
    ksize, (cg, features) = kernel.shape[:nd], kernel.shape[nd:]
    patches = _patches(x, ksize, strides, pads)
    if groups == 1:
        return patches @ kernel.reshape(-1, features)
    lead = patches.shape[:-1]
    patches = patches.reshape(*lead, -1, groups, cg)
    taps = kernel.reshape(-1, cg, groups, features // groups)
    return jnp.einsum("...tgc,tcgk->...gk", patches, taps).reshape(*lead, features)


def _patch_conv_by_row(x, kernel, strides, pads):
    """`_patch_conv` (one group) as the kernel bank (K, Π k · C) against the transposed
    patches: the output comes out (K, B · Π out), then moves its channels last.

    The kernel gradient, (Π k · C, N) against (K, N) contracted over N, reads its left
    operand along its rows, the form XLA:CPU gives its library. (The forward product
    XLA compiles reading the kernel bank down its columns, in its generic kernel: for
    LeNet-5's first layer, 6 rows, batch 128, 0.60 ms alone, against 0.50 ms with the
    bank laid out for the library, too little to add a copy for.)
    """
    nd = x.ndim - 2
    ksize, features = kernel.shape[:nd], kernel.shape[-1]
    patches, out = _patches_by_row(x, ksize, strides, pads)
    y = kernel.reshape(-1, features).T @ patches
    return jnp.moveaxis(y.reshape(features, x.shape[0], *out), 0, -1)


def _matmul_conv(x, kernel, strides, pads, groups):
    """The CPU's matrix-product convolution: `_patch_conv_by_row` for a narrow patch
    (at most `NARROW_PATCH` numbers) with no more kernels than patch numbers, where
    the channels-last patches would interleave pieces of a few numbers and moving
    the output's channels last costs less than they do; `_narrow_patch_conv` for a
    narrow patch with more kernels (channels-last forward, transposed patches for the
    kernel gradient); `_patch_conv` otherwise.

    For LeNet-5's first layer (batch 128) the channels-last patches took 3.2 ms to
    assemble and their kernel gradient, a product contracting its left operand over
    the leading axis (XLA:CPU's generic kernel), 2.8 ms of a 16–22 ms step. With the
    transposed patches, and its fifth layer's single patch cut as a window
    (`_window`, not 25 slices whose gradient is 25 padded additions), LeNet-5's train
    step ran 1.44× faster (interleaved, 9 turns). Applied to every matrix-product layer
    of VGG-11 (its RGB 3×3 first layer with 64 kernels, its 2×2 maps) the transposed
    form made that step 0.91× as fast (5 turns), so it is kept to narrow patches with
    no more kernels than patch numbers.
    """
    patch = math.prod(kernel.shape[:-1])
    if groups == 1 and patch <= NARROW_PATCH:
        if kernel.shape[-1] <= patch:
            return _patch_conv_by_row(x, kernel, strides, pads)
        return _narrow_patch_conv(x, kernel, strides, pads, 1)
    return _patch_conv(x, kernel, strides, pads, groups)


def _transposed_patch_kernel_tangent(x, dkernel, strides, pads, groups):
    """conv(x, dkernel) as the transposed patches against dkernel: its transpose in
    dkernel, the kernel gradient, is a product XLA:CPU gives its library (one group)."""
    del groups
    patches, out = _patches_by_row(x, dkernel.shape[:-2], strides, pads)
    return (patches.T @ dkernel.reshape(-1, dkernel.shape[-1])).reshape(x.shape[0], *out, dkernel.shape[-1])


# XLA:CPU runs a convolution in its library (YNNPACK, or Eigen) only in the canonical
# dimension order: input (B, *spatial, C), kernel (*k, C, K), output (B, *spatial, K).
# Reverse mode of a `lax` convolution asks for its two gradients in other orders (the
# kernel gradient contracts over the batch, the input gradient reads the kernel as
# (*k, K, C)), and XLA:CPU's pass that rewrites those into canonical convolutions and
# transposes visits only the top level of a program, not the body of a loop. So inside
# a `lax.scan` (several train steps per call) the gradients ran in XLA's own loops. On
# a 2-core CPU, interleaved, with `lax` convolutions: the 1D CNN's 250-step call trained
# 0.26× as fast as plain Flax's single step, LeNet-5's 10-step call 0.32× as fast as
# its own single step, ResNet-18's 2-step call 0.016×. The tangents below are written
# so that their transposes, the gradients, come out canonical with explicit transposes
# (the program XLA builds at the top level, wherever the convolution sits): 1.22×,
# 0.99× and 1.02× of the same references, and the single steps unchanged (ResNet-18
# 0.97×, VGG-11 1.01×, LeNet-5 1.01×; same temporary memory).

def _input_tangent(dx, kernel, strides, pads):
    """conv(dx, kernel) reading the kernel stored (*k, K, C), whose transpose in dx is canonical."""
    spatial = _spatial(dx.ndim - 2)
    return lax.conv_general_dilated(dx, jnp.swapaxes(kernel, -1, -2), strides, pads,
                                    dimension_numbers=(f"N{spatial}C", f"{spatial}OI", f"N{spatial}C"))


def _kernel_tangent(x, dkernel, strides, pads):
    """conv(x, dkernel) on x stored (C, *spatial, B) and dkernel (C, *k, K), computed
    (*spatial, B, K) per slice of the batch (`_kernel_gradient_splits`): its transpose in
    dkernel is a sum of canonical convolutions, each over its slice of the batch."""
    nd = x.ndim - 2
    spatial = _spatial(nd)
    positions = x.shape[0] * math.prod(_geometry(x.shape[1:-1], dkernel.shape[:nd], strides, pads))
    splits = _kernel_gradient_splits(positions)
    xt = jnp.transpose(x, (nd + 1, *range(1, nd + 1), 0))
    dk = jnp.moveaxis(dkernel, -2, 0)
    parts = [lax.conv_general_dilated(part, dk, strides, pads,
                                      dimension_numbers=(f"C{spatial}N", f"I{spatial}O", f"{spatial}NC"))
             for part in jnp.array_split(xt, splits, axis=-1) if part.shape[-1]]
    out = parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=nd)
    return jnp.moveaxis(out, nd, 0)


# The kernel gradient sums at least this many convolutions, each over its share of the batch.
# XLA:CPU runs independent operations side by side, and split in two, YNNPACK's
# convolution over the batch, whose output (C, *k, K) is small, ran faster on a 2-core
# CPU: in isolation (interleaved, 7 turns, batch 64 or 128) LeNet-5's second layer's
# kernel gradient 1.9× as fast, ResNet-18's 3×3 ones 1.01–1.32× (64 to 512 channels);
# four quarters gained little more. Train steps, interleaved (2026-12-06): LeNet-5
# 1.13× (11 turns), ResNet-18 1.08× (5), VGG-11 1.03× (5), the 1D CNN with
# `impl="auto"` 1.00× (11); ResNet-18's temporary memory 506 MB against 497 MB. With
# Eigen's convolutions in place of YNNPACK's (`jaxdl.compiler`), two halves alone ran
# 0.95–1.00× as fast as one convolution (LeNet-5's second layer 1.18×), and in train
# steps ResNet-18 1.06× (5 turns), VGG-11 0.97× (5), LeNet-5 0.98× (21): still two.
KERNEL_GRADIENT_SPLITS = 2

# More slices where the output map is large: doubled while each slice keeps at least
# `KERNEL_GRADIENT_ROWS` output positions (batch × map), up to `KERNEL_GRADIENT_MAX_SPLITS`.
# Eigen's convolution over the batch contracts over all of its slice's positions. Alone
# (2026-12-07, 7 turns) with the other core busy, ResNet-18's 3×3 64 → 64 on 32×32
# (65,536 positions) ran 1.29× as fast in 8 slices as in 2 (16: 0.87×) and VGG-11's
# 64 → 128 on 16×16 1.12× in 4; with the machine quiet, both 0.97–1.03×. In train steps,
# where other work runs beside them, interleaved: ResNet-18 1.033×, 1.056× and 1.071×
# (runs of 5, 5 and 9 turns, the second with the machine loaded), VGG-11 1.002× and
# 1.008× (7 each); LeNet-5's and the MNIST-1D CNN's maps keep 2.
KERNEL_GRADIENT_ROWS = 4096
KERNEL_GRADIENT_MAX_SPLITS = 8


def _kernel_gradient_splits(rows: int) -> int:
    """How many slices of the batch the kernel gradient sums over, for `rows` output positions."""
    splits = KERNEL_GRADIENT_SPLITS
    while splits < KERNEL_GRADIENT_MAX_SPLITS and rows // (2 * splits) >= KERNEL_GRADIENT_ROWS:
        splits *= 2
    return splits


def _sum_terms(out, terms):
    return sum(terms[1:], terms[0]) if terms else jnp.zeros_like(out)


def _with_tangents(forward, input_tangent, kernel_tangent):
    """A convolution `forward(x, kernel, strides, pads, groups)` whose tangent is
    `input_tangent(dx, kernel, ...) + kernel_tangent(x, dkernel, ...)`, each a linear map
    equal to the convolution's own, written so that its transpose (what reverse mode
    runs) takes the form chosen for it. A custom JVP rather than a custom VJP, so forward
    mode and higher derivatives still work."""
    @functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3, 4))
    def conv(x, kernel, strides, pads, groups):
        return forward(x, kernel, strides, pads, groups)

    @functools.partial(conv.defjvp, symbolic_zeros=True)
    def conv_jvp(strides, pads, groups, primals, tangents):
        x, kernel = primals
        dx, dkernel = tangents
        out = forward(x, kernel, strides, pads, groups)
        terms = []
        if not isinstance(dx, SymbolicZero):
            terms.append(input_tangent(dx, kernel, strides, pads, groups))
        if not isinstance(dkernel, SymbolicZero):
            terms.append(kernel_tangent(x, dkernel, strides, pads, groups))
        return out, _sum_terms(out, terms)

    return conv


def _library_kernel_tangent(x, dkernel, strides, pads, groups):
    return _lax_conv(x, dkernel, strides, pads, groups) if groups > 1 else _kernel_tangent(x, dkernel, strides, pads)


def _one_group(groups: int, name: str) -> None:
    if groups != 1:  # grouped layers take `_lax_conv` (`_auto_conv`)
        raise NotImplementedError(f"{name} takes one group, got {groups}")


def _canonical_input_tangent(dx, kernel, strides, pads, groups):
    _one_group(groups, "_canonical_conv")
    return _input_tangent(dx, kernel, strides, pads)


def _row_input_tangent(dx, kernel, strides, pads, groups):
    """conv(dx, kernel) as a convolution one kernel row high: the rows of dx seen through
    each of the kernel's k₀ row offsets, side by side along channels (k₀ · C of them),
    against the kernel laid out (1, k₁, ..., k₀ · C, K). Its transpose in dx, the input
    gradient, is one canonical convolution with k₀ · C output channels (`_input_tangent`)
    and a sum of k₀ row-shifted copies of its output, which XLA fuses into the next
    operation."""
    _one_group(groups, "_row_conv")
    nd = dx.ndim - 2
    k0, channels = kernel.shape[0], kernel.shape[-2]
    (out,) = _geometry(dx.shape[1:2], (k0,), strides[:1], pads[:1])
    rows = jnp.pad(dx, [(0, 0), pads[0]] + [(0, 0)] * nd)
    views = [lax.slice_in_dim(rows, i, i + (out - 1) * strides[0] + 1, strides[0], axis=1) for i in range(k0)]
    stacked = jnp.stack(views, axis=-2).reshape(*views[0].shape[:-1], k0 * channels)
    taps = jnp.moveaxis(kernel, 0, nd - 1).reshape(1, *kernel.shape[1:nd], k0 * channels, kernel.shape[-1])
    return _input_tangent(stacked, taps, (1, *strides[1:]), ((0, 0), *pads[1:]))


# `lax` convolution (one group) whose gradients are canonical convolutions (above).
_canonical_conv = _with_tangents(_lax_conv, _canonical_input_tangent, _library_kernel_tangent)

# The same, with its input gradient one row of the kernel high (`_row_input_tangent`).
# The input gradient is a convolution whose output channels are the layer's input
# channels, and XLA:CPU's Eigen convolution runs slowly with few of them: LeNet-5's
# second layer (6 → 16 channels, 5×5, batch 128) took 2.7–4.5 ms for it, PyTorch 0.9 ms.
# As a convolution 1 × 5 with 5 · 6 = 30 output channels and a sum of five row-shifted
# copies, it took 1.0 ms (alone, interleaved, 7 turns, 2026-12-07; 3.1× as fast), and
# LeNet-5's train step ran 1.14–1.18× faster. Other 3×3 input gradients alone, batch 64
# on 32×32 maps: from 3 channels (to 64) 2.3× as fast, 8 1.6×, 16 1.16×, 32 1.05×, 64
# (on 16×16) 1.01×, 16 with stride 2 0.73×. So layers with at most
# `ROW_INPUT_GRADIENT_CHANNELS` input channels and stride 1 take it.
_row_conv = _with_tangents(_lax_conv, _row_input_tangent, _library_kernel_tangent)
ROW_INPUT_GRADIENT_CHANNELS = 16

# `lax` convolution whose input gradient is a matrix product and a scatter-add (col2im):
# the tangent in x goes through `_matmul_conv`, whose transpose multiplies each output's
# gradient by the transposed kernel bank and adds every patch gradient back where the
# patch was cut from; the tangent in the kernel goes through `lax`, whose transpose is
# the library's kernel-gradient convolution.
_conv_matmul_input_grad = _with_tangents(_lax_conv, _matmul_conv, _library_kernel_tangent)

# A layer on a narrow patch with more kernels than patch numbers (the RGB 3×3 first layer
# of VGG-11 and ResNet-18: 27 numbers, 64 kernels) keeps its channels-last patches and
# output for the forward pass. Its kernel gradient, patchesᵀ · δ, was a product contracting
# the patches over their leading axis, which XLA:CPU runs in its generic kernel after
# moving δ's channels first: alone, at batch 64 on 32×32, 14 ms against PyTorch's 2.4 ms
# (`python -m benchmarks.layers`, 2026-12-07). `_narrow_patch_conv` takes it from the
# transposed patches against δ as it lies, a product the library takes: train steps
# 1.028× (ResNet-18, 5 turns) and 1.016× (VGG-11, 11 turns) as fast, interleaved.
_narrow_patch_conv = _with_tangents(_patch_conv, _patch_conv, _transposed_patch_kernel_tangent)


# A patch of at most this many numbers (input channels × kernel taps) makes the whole
# layer a matrix product on the CPU.
NARROW_PATCH = 32


def _cpu_plan(size, ksize, strides, pads, channels) -> tuple[str, str]:
    """How the CPU computes a convolution: ("lax" or "matmul") for the forward pass and
    ("lax", "matmul" or "rows") for the input gradient; the kernel gradient goes with
    the forward pass.

    XLA:CPU hands a convolution to its library (YNNPACK) only if, among other things,
    the unpadded input is at least as large as the kernel; otherwise it swaps the
    operands and runs a generic loop, 60× slower for a 3×3 kernel on a 2×2 map. The
    input gradient is itself a convolution, of the output gradient with the flipped
    kernel, so an output smaller than the kernel makes that one slow. Those cases
    become matrix products (`_matmul_conv`): the whole layer, or the input gradient
    alone (`_conv_matmul_input_grad`). A 1×1 kernel is a matrix product anyway, and so
    is a layer on few input channels (a patch of at most `NARROW_PATCH` numbers): XLA:CPU
    runs its kernel gradient as a convolution over the batch, which for LeNet-5's first
    layer (1 channel, 5×5, batch 128) ran at 8 GFLOP/s, 3.6 ms of a 17.6 ms step. As one
    matrix product that layer made LeNet-5's train step 1.18× faster (interleaved, 15
    turns); a 3×3 layer on RGB (ResNet-18's, VGG-11's first) changed the step by under
    2 %. Everything else stays `lax`, even where XLA:CPU falls back to its own loops
    (fewer than 32 output channels, padding of more than (k − 1)/2, strided input
    gradients): there the matrix-product forms made LeNet-5's second layer and
    ResNet-18's strided layers slower when tried. A `lax` layer of two or more spatial
    axes, stride 1 and at most `ROW_INPUT_GRADIENT_CHANNELS` input channels takes its
    input gradient one kernel row high (`_row_conv`).
    """
    out = _geometry(size, ksize, strides, pads)
    narrow = channels * math.prod(ksize) <= NARROW_PATCH
    if all(k == 1 for k in ksize) or any(n < k for n, k in zip(size, ksize)) or narrow:
        return "matmul", "matmul"
    if any(m < k for m, k in zip(out, ksize)):
        return "lax", "matmul"
    if len(ksize) > 1 and channels <= ROW_INPUT_GRADIENT_CHANNELS and all(s == 1 for s in strides):
        return "lax", "rows"
    return "lax", "lax"


# Set while a program over several replicas (seeds) is traced; see `replicas`.
_REPLICAS = contextvars.ContextVar("jaxdl_conv_replicas", default=False)


@contextlib.contextmanager
def replicas():
    """Inside, `impl="auto"` traces 1-D convolutions for a model `jax.vmap`-ed over replicas.

    Each replica (a seed of `jaxdl.train`) has its own kernels, so `jax.vmap` turns a
    `lax` convolution into a grouped one, one group per replica. On the CPU, "auto"
    takes the im2col form ("patches", batched matrix products under `jax.vmap`) for
    1-D convolutions inside this context: the MNIST-1D CNN over 5 vmapped seeds (250
    steps per call) trained at 204–214 steps/s with patches, against 126–143 with its
    one-replica plan (2026-12-07, launcher). 2-D convolutions keep their plan: with patches,
    LeNet-5 on digits over 3 seeds trained at 12.6 steps/s against 31.9. The context is
    read when a function is traced, so enter it inside the traced function
    (`jaxdl.train.over_seeds` does).
    """
    token = _REPLICAS.set(True)
    try:
        yield
    finally:
        _REPLICAS.reset(token)


def _auto_conv(x, kernel, strides, pads, groups):
    """On the CPU the formulation `_cpu_plan` picks for the shape (1-D over replicas:
    patches, see `replicas`); `lax` convolution elsewhere."""
    nd = x.ndim - 2
    replicas_1d = nd == 1 and _REPLICAS.get()
    forward, input_grad = _cpu_plan(x.shape[1:-1], kernel.shape[:nd], strides, pads, x.shape[-1])

    def cpu(x, kernel):
        if replicas_1d:
            return _patch_conv(x, kernel, strides, pads, groups)
        if forward == "matmul":
            return _matmul_conv(x, kernel, strides, pads, groups)
        if input_grad == "matmul":
            return _conv_matmul_input_grad(x, kernel, strides, pads, groups)
        if groups > 1:
            return _lax_conv(x, kernel, strides, pads, groups)
        if input_grad == "rows":
            return _row_conv(x, kernel, strides, pads, 1)
        return _canonical_conv(x, kernel, strides, pads, 1)

    return lax.platform_dependent(x, kernel, cpu=cpu,
                                  default=lambda x, k: _lax_conv(x, k, strides, pads, groups))


def _conv_nd(x: Array, kernel: Array, bias: Array | None, stride: int | Sequence[int],
             padding: str | int, nd: int, impl: str = "sum", groups: int = 1) -> Array:
    x = jnp.asarray(x)
    kernel = jnp.asarray(kernel)
    layout = "(B, W, C)" if nd == 1 else "(B, H, W, C)"
    klayout = "(k, C/G, K)" if nd == 1 else "(kh, kw, C/G, K)"
    if x.ndim != nd + 2:
        raise UserError(f"x has shape {x.shape}; conv{nd}d expects {layout}")
    if kernel.ndim != nd + 2:
        raise UserError(f"kernel has shape {kernel.shape}; conv{nd}d expects {klayout}")
    if not isinstance(groups, numbers.Integral) or groups < 1:
        raise UserError(f"groups={groups!r} must be a positive int")
    ksize, (channels, features) = kernel.shape[:nd], kernel.shape[nd:]
    if x.shape[-1] != channels * groups:
        raise UserError(f"x has {x.shape[-1]} channels but the kernel expects {channels} × {groups} "
                        f"group(s); kernel must be {klayout} with C = x.shape[-1]")
    if features % groups:
        raise UserError(f"{features} kernels cannot be split into {groups} groups; "
                        "K must be a multiple of groups")
    strides = _as_tuple(stride, nd, "stride")
    if impl not in IMPLS:
        raise unknown_name("convolution implementation", str(impl), IMPLS, "impl")
    if isinstance(padding, numbers.Integral) and not isinstance(padding, bool):
        if padding < 0:
            raise UserError(f"padding={padding} must be >= 0 (zeros on each side)")
        pads = [(int(padding), int(padding))] * nd
    elif padding not in PADDINGS:
        raise unknown_name("padding mode", str(padding), PADDINGS, "padding")
    elif padding == "valid":
        pads = [(0, 0)] * nd
    else:
        if any(k % 2 == 0 for k in ksize):
            raise UserError(f"padding={padding!r} needs an odd kernel size to keep the output "
                            f"centred, got {tuple(ksize)}; use an odd kernel or padding='valid'")
        pads = [((k - 1) // 2, (k - 1) // 2) for k in ksize]
        if padding == "replicate":
            x = jnp.pad(x, [(0, 0), *pads, (0, 0)], mode="edge")
            pads = [(0, 0)] * nd
    pads = tuple(pads)

    size = tuple(n + lo + hi for n, (lo, hi) in zip(x.shape[1:-1], pads))
    if any(k > n for k, n in zip(ksize, size)):
        raise UserError(f"kernel size {tuple(ksize)} is larger than the padded input "
                        f"{tuple(size)}; "
                        "use a smaller kernel, a larger input, or padding='zero'/'replicate'")
    conv = {"sum": _sum_conv, "patches": _patch_conv, "xla": _lax_conv, "auto": _auto_conv}[impl]
    acc = conv(x, kernel, strides, pads, groups)
    if bias is not None:
        bias = jnp.asarray(bias)
        if bias.shape != (features,):
            raise UserError(f"bias has shape {bias.shape}; expected ({features},), one per kernel")
        acc = acc + bias.reshape((1,) * (nd + 1) + (features,)).astype(acc.dtype)
    return acc


def conv1d(x: Array, kernel: Array, bias: Array | None = None, stride: int | Sequence[int] = 1,
           padding: str | int = "valid", impl: str = "sum", groups: int = 1) -> Array:
    """1D convolution s(i) = Σ_x Σ_c z(i·stride + x, c)·u(x, c, k) + b_k.

    Args:
      x: (B, W, C) input.
      kernel: (k, C/G, K) bank of K kernels, each spanning all C/G channels of its group.
      bias: optional (K,), one per kernel.
      stride: step between output positions (int or 1-tuple), ≥ 1.
      padding: "valid" (no padding: W_out = (W − k)//stride + 1), "zero" or
        "replicate" ((k − 1)/2 on each side, filled with zeros or copies of the
        edge value: W_out = ceil(W / stride); k must be odd), or an int p: p zeros
        on each side.
      impl: how the sum is computed, all equal up to float rounding: "sum" (one
        term per kernel offset, as written), "patches" (the offsets side by side,
        one matrix product), "xla" (`lax.conv_general_dilated`) or "auto" (on
        the CPU the fastest of these for the shape, with a matrix-product input
        gradient where XLA:CPU's own is slow; `lax` elsewhere).
      groups: G; channel group g of the input feeds only kernels g·K/G … (g+1)·K/G − 1
        (AlexNet's two towers are G = 2). C and K must be multiples of G.

    Returns:
      (B, W_out, K).

    Raises:
      ValueError: bad shapes, a non-positive stride, an even kernel with
        "zero"/"replicate", a kernel larger than the padded input, channels
        that do not split into the groups, or an unknown padding mode.
    """
    return _conv_nd(x, kernel, bias, stride, padding, nd=1, impl=impl, groups=groups)


def conv2d(x: Array, kernel: Array, bias: Array | None = None, stride: int | Sequence[int] = 1,
           padding: str | int = "valid", impl: str = "sum", groups: int = 1) -> Array:
    """2D (tensor) convolution s(j, i) = Σ_y Σ_x Σ_c z(j·s_h + y, i·s_w + x, c)·u(y, x, c, k) + b_k.

    Args:
      x: (B, H, W, C) input.
      kernel: (kh, kw, C/G, K) bank of K kernels.
      bias: optional (K,), one per kernel.
      stride: int or (s_h, s_w), each ≥ 1.
      padding: "valid", "zero", "replicate" or an int, as in `conv1d`, per spatial dim.
      impl: "sum", "patches", "xla" or "auto", as in `conv1d`.
      groups: G, as in `conv1d`.

    Returns:
      (B, H_out, W_out, K).

    Raises:
      ValueError: as `conv1d`.
    """
    return _conv_nd(x, kernel, bias, stride, padding, nd=2, impl=impl, groups=groups)


class Conv(nn.Module):
    """Convolution layer over `conv1d`/`conv2d`, with "replicate" padding available.

    Use `Conv1D` or `Conv2D`; both are this class with `ndim` fixed. Parameters
    are "kernel" (*kernel_size, C/G, features) and "bias" (features,), named and
    shaped as `flax.linen.Conv`'s: a layer has (Π kernel_size · C/G + 1) · features
    of them with a bias.

    Attributes:
      features: K, the number of kernels.
      kernel_size: int or one int per spatial dim.
      strides: int or one int per spatial dim.
      padding: "valid", "zero", "replicate", or an int (zeros on each side).
      impl: "auto" (the fastest formulation per backend and shape), "sum",
        "patches" or "xla" (see `conv1d`).
      groups: G, channel groups (see `conv1d`).
      use_bias: add a bias per kernel.
      dtype: computation dtype (None: that of the input and parameters); the
        parameters stay in `param_dtype`.
      kernel_init, bias_init: initialisers.
      ndim: number of spatial dims (1 or 2).
    """

    features: int
    kernel_size: int | Sequence[int]
    strides: int | Sequence[int] = 1
    padding: str | int = "valid"
    impl: str = "auto"
    groups: int = 1
    use_bias: bool = True
    dtype: Any = None
    kernel_init: Callable = nn.initializers.lecun_normal()
    bias_init: Callable = nn.initializers.zeros_init()
    param_dtype: jnp.dtype = jnp.float32
    ndim: int = 2

    @nn.compact
    def __call__(self, x: Array) -> Array:
        if self.ndim not in (1, 2):
            raise UserError(f"ndim={self.ndim}; Conv supports 1 or 2 spatial dims")
        ksize = _as_tuple(self.kernel_size, self.ndim, "kernel_size")
        if not isinstance(self.groups, numbers.Integral) or self.groups < 1 or x.shape[-1] % self.groups:
            raise UserError(f"groups={self.groups!r} must be a positive int dividing the "
                            f"{x.shape[-1]} input channels")
        kernel = self.param("kernel", self.kernel_init,
                            (*ksize, x.shape[-1] // self.groups, self.features), self.param_dtype)
        bias = (self.param("bias", self.bias_init, (self.features,), self.param_dtype)
                if self.use_bias else None)
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        return _conv_nd(x, kernel, bias, self.strides, self.padding, self.ndim, self.impl,
                        self.groups)


Conv1D = functools.partial(Conv, ndim=1)
Conv2D = functools.partial(Conv, ndim=2)
