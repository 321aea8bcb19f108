"""Deep MLP trained by the hand-written Algorithm 4-1 (`jaxdl.backprop`), K seeds as one vmap.

Config: `dataset.name`, `model.hidden` (n_1 … n_{L-1}), `model.activations` (τ_1 … τ_L),
`model.cost` ("mse" or "cross_entropy"), `optim.lr` (ρ), `batch_size` (t), `num_steps`,
`seed`, `num_seeds`. Writes `W/results.json` with `test_accuracy` (mean over seeds,
plus `_std` and `_per_seed` when there are several).
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxdl import backprop
from jaxdl import data as data_lib
from jaxdl.errors import UserError
from jaxdl.loop import write_atomic
from jaxdl.train import summarise


def load_flat(config: ml_collections.ConfigDict) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """Train and test splits as (N, d) float inputs and integer labels."""
    ds = config.dataset
    splits = [data_lib.load(ds.name, split, directory=ds.get("data_dir"),
                            download=ds.get("download", False))
              for split in ("train", "test")]
    return [(s.x.reshape(len(s), -1), s.y, s.num_classes) for s in splits]


def fit_dmlp(config: ml_collections.ConfigDict, x: np.ndarray, y: np.ndarray,
             num_classes: int) -> tuple[list[jax.Array], jax.Array]:
    """Trains `num_seeds` DMLPs with Algorithm 4-1; returns stacked [U^l] (K, ...) and losses."""
    m = config.model
    sizes = (x.shape[1], *m.hidden, num_classes)
    activations = tuple(m.activations)
    if len(activations) != len(sizes) - 1:
        raise UserError(f"model.activations has {len(activations)} entries; the net has "
                        f"{len(sizes) - 1} layers (model.hidden + output)")
    if not 1 <= config.batch_size <= len(x):
        raise UserError(f"batch_size {config.batch_size} must lie in [1, {len(x)}]")
    targets = jax.nn.one_hot(y, num_classes)
    keys = jnp.stack([jax.random.PRNGKey(config.seed + k) for k in range(config.num_seeds)])

    def one(key):
        us = backprop.init(jax.random.fold_in(key, 0), sizes)
        return backprop.train(jax.random.fold_in(key, 1), us, x, targets, rho=config.optim.lr,
                              batch_size=config.batch_size, steps=config.num_steps,
                              activations=activations, cost=m.cost)

    return jax.vmap(one)(keys)


def accuracy(us: list[jax.Array], x: np.ndarray, y: np.ndarray, activations: Sequence[str],
             cost: str) -> np.ndarray:
    """Test accuracy of each of the K stacked nets, (K,)."""
    out = jax.vmap(lambda u: backprop.apply(u, x, activations, cost))(us)
    return np.asarray(jnp.mean(jnp.argmax(out, -1) == y[None], axis=-1))


def write_results(workdir: str, result: dict) -> None:
    os.makedirs(workdir, exist_ok=True)
    write_atomic(os.path.join(workdir, "results.json"), json.dumps(result, indent=2))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       print_fn: Callable[[str], None] = print) -> dict[str, Any]:
    """Trains the configured DMLP by Algorithm 4-1 and writes `W/results.json`."""
    (x, y, k), (x_test, y_test, _) = load_flat(config)
    t0 = time.time()
    print_fn(f"Algorithm 4-1 on {config.dataset.name}: layers {(x.shape[1], *config.model.hidden, k)}, "
             f"{config.num_steps} steps of t={config.batch_size}, ρ={config.optim.lr}, "
             f"{config.num_seeds} seed(s)")
    us, losses = fit_dmlp(config, x, y, k)
    acc = accuracy(us, x_test, y_test, tuple(config.model.activations), config.model.cost)
    result = {"step": config.num_steps, **summarise("test_accuracy", acc),
              "final_train_cost": float(np.mean(np.asarray(losses)[:, -100:])),
              "train_time_s": round(time.time() - t0, 2)}
    write_results(workdir, result)
    print_fn(f"done: test accuracy {result['test_accuracy']:.4f}; results in {workdir}/results.json")
    return result
