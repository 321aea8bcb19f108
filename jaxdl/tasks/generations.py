"""The lecture's three generations of neural networks, measured on the same data.

| generation | activation | cost | training |
|---|---|---|---|
| perceptron | step | MSE | Rosenblatt's rule (one perceptron per class, one-vs-rest) |
| MLP | sigmoid | MSE | Algorithm 4-1 |
| deep MLP | ReLU | cross-entropy | Algorithm 4-1 |

Each generation trains `num_seeds` replicas as one vmapped program; `W/results.md` and
`W/results.json` give test accuracy mean ± std.
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxdl.loop import write_atomic
from jaxdl.models import perceptron
from jaxdl.tasks import dmlp
from jaxdl.train import summarise


def _perceptron_accuracy(config, x, y, x_test, y_test, num_classes) -> np.ndarray:
    """One-vs-rest Rosenblatt perceptrons; the class is the one with the largest w·(1, x)."""
    keys = jnp.stack([jax.random.PRNGKey(config.seed + k) for k in range(config.num_seeds)])
    p = config.perceptron

    def one_seed(key):
        fit = lambda c: perceptron.fit(x, (y == c).astype(np.float32), epochs=p.epochs,  # noqa: E731
                                       lr=p.lr, key=jax.random.fold_in(key, c))
        w = jax.vmap(fit)(jnp.arange(num_classes))  # (K, d + 1)
        scores = x_test @ w[:, 1:].T + w[None, :, 0]
        return jnp.mean(jnp.argmax(scores, -1) == y_test)

    return np.asarray(jax.vmap(one_seed)(keys))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       print_fn: Callable[[str], None] = print) -> dict[str, Any]:
    (x, y, k), (x_test, y_test, _) = dmlp.load_flat(config)
    rows = []
    t0 = time.time()
    acc = _perceptron_accuracy(config, x, y, x_test, y_test, k)
    rows.append({"generation": "perceptron", "activation": "step", "cost": "MSE",
                 "training": "Rosenblatt rule", **summarise("test_accuracy", acc),
                 "train_time_s": round(time.time() - t0, 2)})
    for name, sub in (("MLP", config.mlp), ("deep MLP", config.dmlp)):
        t0 = time.time()
        run = config.copy_and_resolve_references()
        with run.unlocked():
            run.model = sub.model
            run.optim.lr = sub.lr
            run.num_steps = sub.steps
        us, _ = dmlp.fit_dmlp(run, x, y, k)
        acc = dmlp.accuracy(us, x_test, y_test, tuple(sub.model.activations), sub.model.cost)
        rows.append({"generation": name, "activation": sub.model.activations[0],
                     "cost": "MSE" if sub.model.cost == "mse" else "cross-entropy",
                     "training": "Algorithm 4-1", **summarise("test_accuracy", acc),
                     "train_time_s": round(time.time() - t0, 2)})
    os.makedirs(workdir, exist_ok=True)
    result = {"dataset": config.dataset.name, "seeds": config.num_seeds, "rows": rows}
    write_atomic(os.path.join(workdir, "results.json"), json.dumps(result, indent=2))
    lines = [f"# The three generations on {config.dataset.name}, {config.num_seeds} seeds", "",
             "| generation | activation | cost | training | test accuracy (%) |", "|---|---|---|---|---|"]
    for r in rows:
        std = r.get("test_accuracy_std", 0.0)
        lines.append(f"| {r['generation']} | {r['activation']} | {r['cost']} | {r['training']} | "
                     f"{100 * r['test_accuracy']:.1f} ± {100 * std:.1f} |")
    table = "\n".join(lines) + "\n"
    write_atomic(os.path.join(workdir, "results.md"), table)
    print_fn(table)
    return result
