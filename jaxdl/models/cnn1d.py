"""The 1D convolutional network of the MNIST-1D paper (Greydanus 2020).

Three convolutions of 25 channels (kernel 5, then 3, 3; stride 2; padding 1) with
ReLU, then one linear layer on the flattened map: 40 → 19 → 10 → 5 positions.
Glossary: B batch, W length, C channels, K classes.
"""
from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp


class CNN1D(nn.Module):
    """Input (B, W) or (B, W, C); returns logits (B, K)."""

    num_classes: int
    channels: int = 25
    kernel_sizes: Sequence[int] = (5, 3, 3)
    stride: int = 2
    padding: int = 1

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        del train
        if x.ndim == 2:
            x = x[..., None]
        for i, k in enumerate(self.kernel_sizes):
            x = nn.Conv(self.channels, (k,), strides=(self.stride,),
                        padding=[(self.padding, self.padding)], name=f"conv{i + 1}")(x)
            x = nn.relu(x)
        return nn.Dense(self.num_classes, name="out")(x.reshape(x.shape[0], -1))
