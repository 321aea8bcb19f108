"""How jaxdl compiles its steps: `jax.jit` with jaxdl's XLA options for the backend.

On the CPU, XLA hands each convolution in canonical form (the form `jaxdl.nn.Conv`
writes its gradients in) to a library: YNNPACK by default in recent jaxlib releases,
otherwise its Eigen convolution. Eigen's was the faster of the two on the 2-core CPU
jaxdl is benchmarked on (interleaved, 2026-12-06): alone, at batch 64, a 3×3
convolution 64 → 64 on a 32×32 map took 29 ms forward against 50 ms in YNNPACK and
66 ms for its two gradients against 107 ms; 128 to 512 channels 1.02–1.10× as fast
forward and 1.11–1.19× for the gradients; LeNet-5's second layer 1.11× and 1.65×.
Whole train steps: ResNet-18 1.14× faster, VGG-11 1.10×, LeNet-5 1.07× (5 to 9
turns); the MLP's and the 1D CNN's programs are the same either way. So on the CPU
jaxdl's compiled steps keep YNNPACK for matrix products and reductions only
(`CPU_OPTIONS`). A jaxlib without those options compiles with its defaults.
"""
from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

CPU_OPTIONS = {
    "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE",
}


@functools.cache
def options() -> dict[str, Any]:
    """The compiler options jaxdl compiles with on JAX's default backend.

    Empty off the CPU, and where this jaxlib does not know `CPU_OPTIONS` (checked once,
    by compiling a one-operation function with them).
    """
    if jax.default_backend() != "cpu" or "compiler_options" not in inspect.signature(jax.jit).parameters:
        return {}
    try:
        jax.jit(lambda x: x + 1).lower(jnp.zeros(())).compile(compiler_options=CPU_OPTIONS)
    except Exception:  # noqa: BLE001 - an older or newer jaxlib: its defaults, unchanged
        return {}
    return dict(CPU_OPTIONS)


def jit(fn: Callable, **kwargs: Any) -> Callable:
    """`jax.jit(fn, **kwargs)` with `options()` added to its compiler options."""
    extra = options()
    if extra:
        kwargs["compiler_options"] = {**extra, **(kwargs.get("compiler_options") or {})}
    return jax.jit(fn, **kwargs)
