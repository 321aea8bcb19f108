"""The benchmark's floor: the same models in plain Flax Linen, with a hand-written Optax step.

Only `flax.linen` layers (`nn.Conv`, `nn.max_pool`, `nn.avg_pool`, `nn.BatchNorm`,
`nn.Dense`, `nn.Dropout`) and `optax`; nothing of jaxdl. Each model mirrors the
jaxdl model of the same name layer for layer, with the same parameter tree sizes
(checked by the benchmark before it times anything).
"""
from __future__ import annotations

from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(100)(x))
        x = nn.relu(nn.Dense(100)(x))
        return nn.Dense(10)(x)


class CNN1D(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        x = x[..., None]
        for k in (5, 3, 3):
            x = nn.relu(nn.Conv(25, (k,), (2,), padding=((1, 1),))(x))
        return nn.Dense(10)(x.reshape(x.shape[0], -1))


class LeNet5(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        x = jnp.tanh(nn.Conv(6, (5, 5), padding="VALID")(x))
        x = nn.avg_pool(x, (2, 2), (2, 2))
        x = jnp.tanh(nn.Conv(16, (5, 5), padding="VALID")(x))
        x = nn.avg_pool(x, (2, 2), (2, 2))
        x = jnp.tanh(nn.Conv(120, (5, 5), padding="VALID")(x))
        x = jnp.tanh(nn.Dense(84)(x.reshape(x.shape[0], -1)))
        return nn.Dense(10)(x)


def _bn(train):
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)


class Block(nn.Module):
    filters: int
    strides: int

    @nn.compact
    def __call__(self, x, train):
        y = nn.Conv(self.filters, (3, 3), self.strides, padding=1, use_bias=False)(x)
        y = nn.relu(_bn(train)(y))
        y = _bn(train)(nn.Conv(self.filters, (3, 3), padding=1, use_bias=False)(y))
        if x.shape[-1] != self.filters or self.strides != 1:
            x = _bn(train)(nn.Conv(self.filters, (1, 1), self.strides, use_bias=False)(x))
        return nn.relu(y + x)


class ResNet18(nn.Module):
    """The CIFAR-style ResNet-18: 3×3 stem, no max pooling, four stages of two blocks."""

    @nn.compact
    def __call__(self, x, train=False):
        x = nn.relu(_bn(train)(nn.Conv(64, (3, 3), padding=1, use_bias=False)(x)))
        for i, filters in enumerate((64, 128, 256, 512)):
            for j in range(2):
                x = Block(filters, 2 if i > 0 and j == 0 else 1)(x, train)
        return nn.Dense(10)(jnp.mean(x, axis=(1, 2)))


class VGG11(nn.Module):
    """VGG-11 for 32×32 inputs: configuration A, then 512-512-10 with dropout."""

    @nn.compact
    def __call__(self, x, train=False):
        for stage in ((64,), (128,), (256, 256), (512, 512), (512, 512)):
            for c in stage:
                x = nn.relu(nn.Conv(c, (3, 3), padding=1)(x))
            x = nn.max_pool(x, (2, 2), (2, 2))
        x = x.reshape(x.shape[0], -1)
        for _ in range(2):
            x = nn.Dropout(0.5, deterministic=not train)(nn.relu(nn.Dense(512)(x)))
        return nn.Dense(10)(x)


MODELS = {"mlp": MLP, "cnn1d": CNN1D, "lenet5": LeNet5, "resnet18": ResNet18, "vgg11": VGG11}


def init(model: nn.Module, tx: optax.GradientTransformation, x: jax.Array, key: jax.Array):
    """(params, batch_stats, opt_state) for a (B, ...) input example."""
    variables = model.init({"params": key, "dropout": key}, x, train=False)
    return variables["params"], variables.get("batch_stats", {}), tx.init(variables["params"])


def train_step(params, batch_stats, opt_state, step, x, y, key, *, model, tx):
    """Forward, cross-entropy, backward, optimiser update; nothing else.

    Returns the new (params, batch_stats, opt_state, step) and the loss. Dropout
    draws from `fold_in(key, step)`, inside the compiled step like jaxdl's.
    """
    key = jax.random.fold_in(key, step)

    def loss_fn(params):
        variables = {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}
        out = model.apply(variables, x, train=True, rngs={"dropout": key},
                          mutable=["batch_stats"] if batch_stats else False)
        logits, updates = out if batch_stats else (out, {})
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return loss, updates

    (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    deltas, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, deltas), updates.get("batch_stats", batch_stats),
            opt_state, step + 1, loss)


def make_step(model: nn.Module, tx: optax.GradientTransformation):
    return jax.jit(partial(train_step, model=model, tx=tx), donate_argnums=(0, 1, 2, 3))
