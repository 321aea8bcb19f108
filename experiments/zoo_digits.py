"""The CNN zoo on scikit-learn's digits upsampled to 32×32: one architecture per run.

  python launch.py --config=experiments/zoo_digits.py:resnet18 --workdir=runs/zoo_digits_resnet18

Argument: `lenet5`, `alexnet`, `vgg11`, `vgg16`, `googlenet`, `resnet18` (default),
`resnet34`, `resnet50`, or `all` (every one of them, as a table; below). Expected: at
least 97 % test accuracy on the 360 test digits for every architecture, each run within
5 minutes on a 2-core CPU.
Measured with the command above (wall time: start-up, compilation and training) on
2 CPU cores, one run after another, with a load average of 0.1–1.7 during the runs, by
an earlier version of jaxdl (the README has the current version's rerun from a fresh
clone on 2026-12-06: 97.5–99.7 %, 19–87 s):

| argument | model | training (steps × batch) | params | test accuracy | time |
|---|---|---|---|---|---|
| `lenet5` | LeNet-5 (tanh, average pooling) | SGD, lr 0.05, 600 × 64 | 61,706 | 99.2 % | 31 s |
| `alexnet` | AlexNet, small input, width 1/8 | SGD, lr 0.02, 500 × 64 | 474,018 | 98.9 % | 88 s |
| `vgg11` | VGG-11, width 1/8 | Adam, lr 1e-3, 600 × 64 | 445,482 | 98.9 % | 53 s |
| `vgg16` | VGG-16, width 1/8, batch norm | SGD, lr 0.05, 400 × 64 | 532,018 | 98.9 % | 73 s |
| `googlenet` | GoogLeNet, width 1/4 | Adam, lr 2e-3, 500 × 64 | 377,478 | 97.8 % | 150 s |
| `resnet18` | ResNet-18, width 1/4 | SGD, lr 0.05, 300 × 64 | 701,818 | 99.7 % | 55 s |
| `resnet34` | ResNet-34, width 1/4 | SGD, lr 0.05, 200 × 64 | 1,334,970 | 97.8 % | 63 s |
| `resnet50` | ResNet-50, width 1/4 | SGD, lr 0.02, 400 × 64 | 1,484,538 | 99.7 % | 107 s |

With other jobs on the same cores (load average 5–8) the times were 2–2.5× longer
(GoogLeNet at 600 steps: 308 s). Compilation takes a large share of each time, most
of it in `model.init`: its random initialisers compile slowly on XLA:CPU (GoogLeNet:
48 s CPU for `model.init` against 31 s for the train step, forward and backward).
SGD has momentum 0.9 and weight decay 5e-4; every run has a cosine schedule after
50 warm-up steps (ResNet-50: 100), inputs normalised by the training set's mean and
std, and random shifts of up to 2 pixels (`augment.crop_padding`; no flips: a
mirrored digit is another symbol).

Every architecture in one table, the lecture's "evolution of CNNs":

  python launch.py --config=experiments/zoo_digits.py:all --workdir=runs/zoo_digits_all

Writes `W/results.md` and `W/results.json`; each row is the run of
`experiments/zoo_digits.py:<model>`. `depth` is the paper's count of weight layers
(convolutions and dense layers on the main path), `params` that of the trained
variant, counted from the shapes of `model.init`. Measured: 10 min 52 s for the
eight rows on 2 CPU cores (load average 2–3); the train time is the loop's,
with the train step's compilation but not `model.init`'s:

| model | year | depth | params | seeds | test accuracy (%) | train time (s) |
|---|---|---|---|---|---|---|
| lenet5 | 1998 | 5 | 61706 | 1 | 99.2 ± 0.0 | 13.97 |
| alexnet | 2012 | 8 | 474018 | 1 | 98.9 ± 0.0 | 78.4 |
| vgg11 | 2014 | 11 | 445482 | 1 | 98.9 ± 0.0 | 26.78 |
| vgg16 | 2014 | 16 | 532018 | 1 | 98.9 ± 0.0 | 64.29 |
| googlenet | 2014 | 22 | 377478 | 1 | 97.8 ± 0.0 | 82.8 |
| resnet18 | 2015 | 18 | 701818 | 1 | 99.7 ± 0.0 | 27.06 |
| resnet34 | 2015 | 34 | 1334970 | 1 | 97.8 ± 0.0 | 40.04 |
| resnet50 | 2015 | 50 | 1484538 | 1 | 99.7 ± 0.0 | 97.35 |
"""
import functools

import jax
import jax.numpy as jnp
import ml_collections

from jaxdl import models, parallel

# Mean and std of the 32×32 training images (pixels in [0, 1]).
DIGITS_MEAN, DIGITS_STD = 0.305, 0.324

# Per architecture: the model fields, then the training fields that differ from the
# defaults of `get_config` (SGD with momentum, lr 0.05, cosine, batch 64). Widths are
# multipliers of the papers' channels; AlexNet and VGG keep the papers' dense width 4096 × width.
# ResNet and GoogLeNet keep their ImageNet stems (stride 4: 8×8 maps, the digits' own
# resolution); AlexNet needs its small-input stem below 67×67. The plain deep nets
# without batch norm (VGG-11, GoogLeNet) train with Adam.
ARCHS = {
    "lenet5": ({"name": "LeNet5"}, {"num_steps": 600}),
    "alexnet": ({"name": "AlexNet", "small_input": True, "width": 0.125, "hidden": 4096},
                {"num_steps": 500, "optim.lr": 0.02}),
    "vgg11": ({"name": "VGG11", "width": 0.125},
              {"num_steps": 600, "optim.name": "adam", "optim.lr": 1e-3, "optim.weight_decay": 0.0}),
    "vgg16": ({"name": "VGG16", "width": 0.125, "batch_norm": True}, {"num_steps": 400}),
    "googlenet": ({"name": "GoogLeNet", "width": 0.25},
                  {"num_steps": 500, "optim.name": "adam", "optim.lr": 2e-3, "optim.weight_decay": 0.0}),
    "resnet18": ({"name": "ResNet18", "width": 0.25}, {"num_steps": 300}),
    "resnet34": ({"name": "ResNet34", "width": 0.25}, {"num_steps": 200}),
    "resnet50": ({"name": "ResNet50", "width": 0.25},
                 {"num_steps": 400, "optim.lr": 0.02, "optim.warmup_steps": 100}),
}


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
    from jaxdl.train import make_model

    model = make_model(config.model, config.dataset.num_classes)
    x = jax.ShapeDtypeStruct((1, *config.dataset.input_shape), jnp.float32)
    init = functools.partial(model.init, train=False)
    return models.count_params(jax.eval_shape(init, jax.random.PRNGKey(0), x))


def table_config() -> ml_collections.ConfigDict:
    """Every architecture of ARCHS as a row of one table (task `table`)."""
    config = ml_collections.ConfigDict()
    config.task = "table"
    config.title = "CNNs on scikit-learn's digits (32×32), test accuracy"
    config.num_seeds = 1  # shared by every row
    config.rows = ml_collections.ConfigDict()
    for arch in ARCHS:
        row = get_config(arch)
        row.num_seeds = config.get_ref("num_seeds")
        row.eval_every = row.num_steps
        row.checkpoint_every = row.num_steps
        year, depth = PAPERS[arch]
        config.rows[arch] = {"index": len(config.rows), "config": row,
                             "labels": ml_collections.ConfigDict(  # columns in this order
                                 {"model": arch, "year": year, "depth": depth,
                                  "params": num_params(row)}, sort_keys=False)}
    return config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arch = arg or "resnet18"
    if arch == "all":
        return table_config()
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r} in experiments/zoo_digits.py:{arg}; "
                         f"valid: {', '.join(ARCHS)}, all")
    model, knobs = ARCHS[arch]
    config = ml_collections.ConfigDict()
    config.task = "classification"
    config.seed = 0
    config.num_seeds = 1
    config.batch_size = 64
    config.num_steps = 1000
    config.num_epochs = ml_collections.config_dict.placeholder(int)  # wins over num_steps when set
    config.log_every = 100
    config.eval_every = 500
    config.checkpoint_every = 500
    config.keep_checkpoints = 1
    config.steps_per_call = 1
    config.unroll = True
    config.eval_batch_size = 360

    config.dataset = ml_collections.ConfigDict()
    config.dataset.name = "digits"
    config.dataset.data_dir = ml_collections.config_dict.placeholder(str)
    config.dataset.download = False
    config.dataset.image_size = 32
    config.dataset.input_shape = (32, 32, 1)  # for --mode=summary without the data
    config.dataset.num_classes = 10
    config.dataset.mean = (DIGITS_MEAN,)
    config.dataset.std = (DIGITS_STD,)

    config.augment = ml_collections.ConfigDict()
    config.augment.crop_padding = 2  # a shift of up to 2 pixels; never a flip for digits
    config.augment.flip = False

    config.model = ml_collections.ConfigDict(model)

    # Devices and precision (jaxdl.parallel): a mesh over every device, the batch split over

    # them, the state replicated (parallel.fsdp > 1 shards it); float32, bfloat16 or float16.

    config.parallel = parallel.default_config()

    config.precision = "float32"


    config.optim = ml_collections.ConfigDict()
    config.optim.name = "sgd"
    config.optim.lr = 0.05
    config.optim.momentum = 0.9
    config.optim.weight_decay = 5e-4
    config.optim.schedule = "cosine"
    config.optim.warmup_steps = 50

    # What `W/pictures/feature_maps.png` shows (jaxdl.pictures): a layer's path as
    # --mode=summary lists it (default: the first layer with a kernel) and a test example.
    config.pictures = ml_collections.ConfigDict()
    config.pictures.layer = ml_collections.config_dict.placeholder(str)
    config.pictures.example = 0
    for key, value in knobs.items():
        node, _, field = key.rpartition(".")
        (config[node] if node else config)[field] = value
    return config
