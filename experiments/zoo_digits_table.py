"""The evolution of CNNs, measured: every architecture of `zoo_digits.py` on 32×32 digits.

  python launch.py --config=experiments/zoo_digits_table.py --workdir=runs/zoo_digits_table

Writes `W/results.md` and `W/results.json`; each row is the run of
`experiments/zoo_digits.py:<model>`. `depth` is the paper's count of weight layers
(convolutions and dense layers on the main path), `params` that of the trained
variant, counted from the shapes of `model.init`. Measured: 7.5 minutes for the
eight rows on 2 CPU cores (load average about 2); the train time is the loop's,
with the train step's compilation but not `model.init`'s:

| model | year | depth | params | seeds | test accuracy (%) | train time (s) |
|---|---|---|---|---|---|---|
| lenet5 | 1998 | 5 | 61706 | 1 | 99.2 ± 0.0 | 13.5 |
| alexnet | 2012 | 8 | 474018 | 1 | 98.9 ± 0.0 | 62.4 |
| vgg11 | 2014 | 11 | 445482 | 1 | 98.9 ± 0.0 | 43.25 |
| vgg16 | 2014 | 16 | 532018 | 1 | 99.2 ± 0.0 | 45.59 |
| googlenet | 2014 | 22 | 377478 | 1 | 98.9 ± 0.0 | 59.46 |
| resnet18 | 2015 | 18 | 701818 | 1 | 99.7 ± 0.0 | 23.76 |
| resnet34 | 2015 | 34 | 1334970 | 1 | 98.9 ± 0.0 | 31.32 |
| resnet50 | 2015 | 50 | 1484538 | 1 | 98.9 ± 0.0 | 71.05 |
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
                             "labels": ml_collections.ConfigDict(  # columns in this order
                                 {"model": arch, "year": year, "depth": depth,
                                  "params": num_params(row)}, sort_keys=False)}
    return config
