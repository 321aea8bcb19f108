"""Logistic regression and the multilayer perceptron, as Flax Linen modules.

Glossary: B batch, K classes. Inputs of any shape are flattened to (B, D).
"""
from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxdl.nn.activations import get_activation
from jaxdl.nn.dense import Dense


class LogReg(nn.Module):
    """Multinomial logistic regression: one affine map to K logits."""

    num_classes: int

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        del train
        return Dense(self.num_classes, name="out")(x.reshape(x.shape[0], -1))


class MLP(nn.Module):
    """Fully connected network: Dense → τ for each hidden width, then a linear output.

    Attributes:
      num_classes: K, the output width.
      features: hidden widths n_1 … n_{L-1}.
      activation: name of τ for the hidden layers (see `jaxdl.nn.get_activation`).
    """

    num_classes: int
    features: Sequence[int] = (100, 100)
    activation: str = "relu"

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        del train
        tau, _ = get_activation(self.activation)
        x = x.reshape(x.shape[0], -1)
        for i, width in enumerate(self.features):
            x = tau(Dense(width, name=f"hidden{i + 1}")(x))
        return Dense(self.num_classes, name="out")(x)
