"""The lecture's three generations — perceptron, MLP, deep MLP — on `digits`, 5 seeds each.

  python launch.py --config=experiments/generations.py --workdir=runs/generations

perceptron: step activation, MSE, Rosenblatt's rule (one-vs-rest); MLP: sigmoid,
MSE, Algorithm 4-1; deep MLP: ReLU, cross-entropy, Algorithm 4-1. The seeds of each
generation train as one vmapped program. Writes `W/results.md` and
`W/results.json`. Measured result and time: README, "Results".
"""
import ml_collections

from experiments import dmlp_digits


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    config = dmlp_digits.get_config()
    config.task = "generations"
    config.num_seeds = 5
    config.perceptron = ml_collections.ConfigDict({"epochs": 50, "lr": 1.0})
    config.mlp = ml_collections.ConfigDict({"lr": 2.0, "steps": 3000})
    config.mlp.model = ml_collections.ConfigDict(
        {"name": "DMLP", "hidden": (64,), "activations": ("sigmoid", "sigmoid"), "cost": "mse"})
    config.dmlp = ml_collections.ConfigDict({"lr": 0.1, "steps": 3000})
    config.dmlp.model = config.model
    return config
