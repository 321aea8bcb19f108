"""A deep MLP on `digits`, trained by the hand-written Algorithm 4-1 (`jaxdl.backprop`).

  python launch.py --config=experiments/dmlp_digits.py --workdir=runs/dmlp_digits

Layers 64-128-64-10 (ReLU, ReLU, softmax + cross-entropy), minibatches of t = 32 drawn
at random (line 3), ρ = 0.1, 3,000 updates. Writes `W/results.json` with
`test_accuracy`. Measured result and time: README, "Results".
"""
import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    config = ml_collections.ConfigDict()
    config.task = "dmlp"
    config.seed = 0
    config.num_seeds = 1
    config.batch_size = 32
    config.num_steps = 3000
    config.dataset = ml_collections.ConfigDict({"name": "digits", "data_dir": None, "download": False})
    config.dataset.data_dir = ml_collections.config_dict.placeholder(str)
    config.model = ml_collections.ConfigDict()
    config.model.name = "DMLP"
    config.model.hidden = (128, 64)
    config.model.activations = ("relu", "relu", "identity")
    config.model.cost = "cross_entropy"
    config.optim = ml_collections.ConfigDict({"name": "sgd", "lr": 0.1})
    return config
