"""Local response normalisation (Krizhevsky et al., 2012): a function and a Linen module."""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
from jax import lax


def local_response_norm(
    x: jnp.ndarray,
    k: float = 2.0,
    n: int = 5,
    alpha: float = 1e-4,
    beta: float = 0.75,
    axis: int = -1,
) -> jnp.ndarray:
    """Normalises each activity by the energy of its `n` neighbouring channels.

    b_i = a_i / (k + alpha * sum_{j=max(0, i-n//2)}^{min(N-1, i+(n-1)//2)} a_j**2) ** beta

    This is the paper's formula: `alpha` multiplies the sum itself (PyTorch's
    `LocalResponseNorm` and Caffe divide it by `n` first). For odd `n` the window
    is centred on channel i; channels outside [0, N) count as zero.

    Args:
      x: activities, e.g. (B, H, W, C) with channels on `axis`.
      k, n, alpha, beta: the paper's hyper-parameters (AlexNet: 2, 5, 1e-4, 0.75).
      axis: the channel axis.

    Returns:
      An array of the shape and dtype of `x`.
    """
    axis = axis % x.ndim
    # Squares of small activations underflow in half precision.
    xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    window = [1] * x.ndim
    window[axis] = n
    padding = [(0, 0)] * x.ndim
    padding[axis] = (n // 2, (n - 1) // 2)
    # A concrete zero lets JAX recognise a windowed sum, which it can differentiate.
    energy = lax.reduce_window(
        xf * xf, np.zeros((), xf.dtype), lax.add, window, (1,) * x.ndim, padding)
    return (xf / (k + alpha * energy) ** beta).astype(x.dtype)


class LocalResponseNorm(nn.Module):
    """Local response normalisation across channels: (B, H, W, C) → (B, H, W, C).

    Defaults are AlexNet's (k=2, n=5, alpha=1e-4, beta=0.75); see `local_response_norm`.
    """

    k: float = 2.0
    n: int = 5
    alpha: float = 1e-4
    beta: float = 0.75
    axis: int = -1
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        if self.dtype is not None:
            x = jnp.asarray(x, self.dtype)
        return local_response_norm(x, self.k, self.n, self.alpha, self.beta, self.axis)
