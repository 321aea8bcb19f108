"""Logic gates: the perceptron learns AND and OR but not XOR; a sigmoid MLP learns XOR.

  python launch.py --config=experiments/perceptron_logic.py --workdir=runs/logic

Prints and writes (`W/results.md`, `W/results.json`) the table: perceptron AND 100 %,
OR 100 %, XOR < 100 % (at most 75 %: no line separates XOR); MLP 2-4-1 (sigmoid,
MSE, Algorithm 4-1, ρ = 2, 5,000 full-batch steps) XOR 100 %. Takes seconds.
"""
import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    config = ml_collections.ConfigDict()
    config.task = "perceptron_logic"
    config.seed = 0
    config.perceptron = ml_collections.ConfigDict({"epochs": 50, "lr": 0.1})
    config.mlp = ml_collections.ConfigDict({"hidden": (4,), "lr": 2.0, "steps": 5000})
    return config
