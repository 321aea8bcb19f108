"""The perceptron and the MLP on logic gates: AND and OR are learnt, XOR needs a hidden layer.

Rosenblatt's perceptron (`jaxdl.models.perceptron`, step activation, the perceptron
rule) learns AND and OR to 100 % and cannot learn XOR, which is not linearly
separable; an MLP with sigmoid units trained on the MSE cost by Algorithm 4-1
(`jaxdl.backprop`) learns XOR. Writes `W/results.md` and `W/results.json`.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np

from jaxdl import backprop
from jaxdl.loop import write_atomic
from jaxdl.models import perceptron

INPUTS = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], np.float32)
GATES = {"AND": np.array([0, 0, 0, 1]), "OR": np.array([0, 1, 1, 1]), "XOR": np.array([0, 1, 1, 0])}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       print_fn: Callable[[str], None] = print) -> dict[str, Any]:
    key = jax.random.PRNGKey(config.seed)
    rows = []
    for gate, y in GATES.items():
        w = perceptron.fit(INPUTS, y, epochs=config.perceptron.epochs, lr=config.perceptron.lr,
                           key=jax.random.fold_in(key, len(rows)))
        acc = float(np.mean(np.asarray(perceptron.predict(w, INPUTS)) == y))
        rows.append({"model": "perceptron (step, Rosenblatt rule)", "gate": gate, "accuracy": acc})
    m = config.mlp
    sizes = (2, *m.hidden, 1)
    activations = ("sigmoid",) * (len(sizes) - 1)
    for gate in ("XOR",):
        y = GATES[gate].astype(np.float32)[:, None]
        us = backprop.init(jax.random.fold_in(key, 100), sizes)
        us, _ = backprop.train(jax.random.fold_in(key, 101), us, INPUTS, y, rho=m.lr, batch_size=4,
                               steps=m.steps, activations=activations, cost="mse")
        out = backprop.apply(us, INPUTS, activations, "mse")[:, 0]
        acc = float(np.mean(np.asarray(out > 0.5) == GATES[gate]))
        rows.append({"model": f"MLP {sizes} (sigmoid, MSE, Algorithm 4-1)", "gate": gate,
                     "accuracy": acc, "outputs": [round(float(o), 4) for o in out]})
    os.makedirs(workdir, exist_ok=True)
    write_atomic(os.path.join(workdir, "results.json"), json.dumps({"rows": rows}, indent=2))
    lines = ["| model | gate | accuracy (%) |", "|---|---|---|"]
    lines += [f"| {r['model']} | {r['gate']} | {100 * r['accuracy']:.0f} |" for r in rows]
    table = "\n".join(lines) + "\n"
    write_atomic(os.path.join(workdir, "results.md"), table)
    print_fn(table)
    return {"rows": rows}
