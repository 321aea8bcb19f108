"""The evolution of CNNs, measured: every architecture of `zoo_digits.py` on 32×32 digits.

  python launch.py --config=experiments/zoo_digits_table.py --workdir=runs/zoo_digits_table

Writes `W/results.md` and `W/results.json` (rows: model, year, depth, params,
seeds, test accuracy, train time); each row is the run of
`experiments/zoo_digits.py:<model>` (see its docstring for the accuracy and time of
each). `depth` is the papers' count of weight layers (convolutions and dense layers
on the main path); `params` that of the trained variant, counted from the shapes of
`model.init`.
"""
import functools

import jax
import jax.numpy as jnp
import ml_collections

from experiments import zoo_digits
from jaxdl import models
from jaxdl.train import make_model

# (year, weight layers) of each paper's network. LeNet-5: C1, C3, C5, F6 and the output.
PAPERS = {
    "lenet5": (1998, 5),
    "alexnet": (2012, 8),
    "vgg11": (2014, 11),
    "vgg16": (2014, 16),
    "googlenet": (2014, 22),
    "resnet18": (2015, 18),
    "resnet34": (2015, 34),
    "resnet50": (2015, 50),
}


def num_params(config: ml_collections.ConfigDict) -> int:
    """Parameters of the config's model, from shapes only (nothing is allocated)."""
    model = make_model(config.model, config.dataset.num_classes)
    x = jax.ShapeDtypeStruct((1, *config.dataset.input_shape), jnp.float32)
    init = functools.partial(model.init, train=False)
    return models.count_params(jax.eval_shape(init, jax.random.PRNGKey(0), x))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    config = ml_collections.ConfigDict()
    config.task = "table"
    config.title = "CNNs on scikit-learn's digits (32×32), test accuracy"
    config.num_seeds = 1  # shared by every row
    config.rows = ml_collections.ConfigDict()
    for arch in zoo_digits.ARCHS:
        row = zoo_digits.get_config(arch)
        row.num_seeds = config.get_ref("num_seeds")
        row.eval_every = row.num_steps
        row.checkpoint_every = row.num_steps
        year, depth = PAPERS[arch]
        config.rows[arch] = {"index": len(config.rows), "config": row,
                             "labels": {"model": arch, "year": year, "depth": depth,
                                        "params": num_params(row)}}
    return config
