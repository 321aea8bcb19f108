"""Classification on the streaming input path (`config.dataset.stream = True`).

The train and test splits stay in the TFDS data source; `jaxdl.data.stream` reads,
crops and batches them on the host and hands each compiled call its own batches
(`jaxdl.loop.Run.data` as a callable). Everything else is `jaxdl.train`'s: the
model, the optimiser, `train_step`, `eval_step`, the K-seed vmap and the loop.

Batches travel in the stored dtype (uint8 pixels) and are scaled and normalised
on the device, inside the compiled step, exactly as the in-memory path scales them
on load: `(x / pixel_max - mean) / std`. Replica k reads the batches the in-memory
path would give it (same permutations, same key streams), so on a dataset small
enough for both (no resize, no crop) the two paths train the same model: bit for bit
where the scaling is exact (`digits`' x / 16, float signals), to float32 rounding
otherwise (XLA divides by multiplying with the reciprocal). With K > 1 seeds each
replica reads and preprocesses its own batches: K times the host work.

The config fields it reads besides `jaxdl.train`'s (all optional but the first):

- `dataset.stream`: True reads batches from the data source on the host instead of
  holding the split on the device.
- `dataset.image_size`: side S of the square crops the model sees (None: images as
  stored, which must then all have one shape).
- `dataset.resize`: the shorter side before the central S×S crop of evaluation (and
  of `augment.crop='center'`); default S.
- `dataset.host_threads`, `dataset.host_processes`: grain's threads (in each
  process) and worker processes (0: threads of the training process only).
- `dataset.prefetch`: steps kept ready on the device.
- `augment.crop`: `inception` (random-resized crop), `random` (shorter side drawn
  from `augment.crop_scale`, then a random S×S window), `center` or `none`.
- `augment.crop_area`, `augment.crop_aspect`: the `inception` crop's ranges of area
  fraction and of w/h (default 0.08–1 and 3/4–4/3).
- `augment.crop_scale`: (lo, hi), the shorter side of a `random` crop (default
  (resize, resize)).
- `augment.flip`: a random horizontal flip, on the host.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxdl import compiler, loop, parallel, train
from jaxdl import data as data_lib
from jaxdl import optim as optim_lib
from jaxdl.data import pipeline
from jaxdl.data import stream as stream_lib
from jaxdl.errors import UserError, unknown_name

# ----------------------------------------------------------------------------------
# Config → preprocessing.

def _int_field(value, field: str, minimum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise UserError(f"{field} must be an integer >= {minimum}, got {value!r}")
    return value


def _range_field(value, field: str, lo_min: float, hi_max: float | None = None) -> tuple:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise UserError(f"{field} must be a pair (lo, hi), got {value!r}") from None
    if not (lo_min < lo <= hi and (hi_max is None or hi <= hi_max)):
        bound = f" <= {hi_max}" if hi_max is not None else ""
        raise UserError(f"{field} must satisfy {lo_min} < lo <= hi{bound}, got {tuple(value)!r}")
    return lo, hi


def preprocessors(config: ml_collections.ConfigDict) -> tuple[stream_lib.Preprocess, stream_lib.Preprocess]:
    """The host preprocessing of training and of evaluation examples for `config` (UserError if it cannot work)."""
    ds_cfg, aug = config.dataset, config.get("augment") or {}
    size = ds_cfg.get("image_size")
    crop = aug.get("crop") or ("center" if size else "none")
    if crop not in stream_lib.CROPS:
        raise unknown_name("crop", crop, stream_lib.CROPS, "augment.crop")
    if aug.get("crop_padding", 0):
        raise UserError("augment.crop_padding is the in-memory path's augmentation; with dataset.stream=True "
                        "set it to 0 and choose augment.crop (inception, random, center)")
    if size is None:
        if crop != "none":
            raise UserError(f"augment.crop={crop!r} needs dataset.image_size, the side of the crop")
        return (stream_lib.Preprocess(flip=bool(aug.get("flip", False))), stream_lib.Preprocess())
    size = _int_field(size, "dataset.image_size", 1)
    if crop == "none":
        raise UserError("augment.crop='none' keeps images as stored; unset dataset.image_size or choose "
                        "augment.crop (inception, random, center)")
    resize = _int_field(ds_cfg.get("resize") or size, "dataset.resize", size)
    scale = aug.get("crop_scale") or (resize, resize)
    lo, hi = _range_field(scale, "augment.crop_scale", 0)
    if lo < size or lo != int(lo) or hi != int(hi):
        raise UserError(f"augment.crop_scale must be integers >= dataset.image_size {size}, got {tuple(scale)!r}")
    area = _range_field(aug.get("crop_area") or (0.08, 1.0), "augment.crop_area", 0, 1)
    aspect = _range_field(aug.get("crop_aspect") or (3 / 4, 4 / 3), "augment.crop_aspect", 0)
    train_pre = stream_lib.Preprocess(crop=crop, size=size, resize=resize, scale=(int(lo), int(hi)),
                                      flip=bool(aug.get("flip", False)), area=area, aspect=aspect)
    return train_pre, stream_lib.Preprocess(crop="center", size=size, resize=resize)


def check_config(config: ml_collections.ConfigDict) -> None:
    """`jaxdl.train.check_config` plus the streaming fields."""
    train.check_config(config)
    preprocessors(config)
    for field, minimum in (("host_threads", 1), ("host_processes", 0), ("prefetch", 1)):
        if config.dataset.get(field) is not None:
            _int_field(config.dataset.get(field), f"dataset.{field}", minimum)


def _host(config: ml_collections.ConfigDict) -> dict:
    ds_cfg = config.dataset
    return {"threads": ds_cfg.get("host_threads") or 8, "processes": ds_cfg.get("host_processes") or 0}


# ----------------------------------------------------------------------------------
# Data sources and normalisation.

def _sources(config: ml_collections.ConfigDict):
    """(train source, test source, x key, y key, number of classes, stored input feature)."""
    ds_cfg = config.dataset
    kwargs = {"directory": ds_cfg.get("data_dir"), "download": ds_cfg.get("download", False)}
    train_src, info = data_lib.data_source(ds_cfg.name, ds_cfg.get("train_split", "train"), **kwargs)
    test_src, _ = data_lib.data_source(ds_cfg.name, ds_cfg.get("test_split", "test"), **kwargs)
    if info.supervised_keys is None:
        raise UserError(f"dataset {ds_cfg.name!r} has no (input, label) pair; it cannot be used for classification")
    x_key, y_key = info.supervised_keys
    for split, src in (("train_split", train_src), ("test_split", test_src)):
        if len(src) == 0:
            raise UserError(f"dataset.{split} of {ds_cfg.name!r} is empty")
    return train_src, test_src, x_key, y_key, info.features[y_key].num_classes, info.features[x_key]


def input_shape(config: ml_collections.ConfigDict, feature) -> tuple[int, ...]:
    """The shape of one model input: (S, S, C) after a crop, else the stored shape (signals get a C of 1)."""
    shape = tuple(feature.shape)
    name = config.dataset.name
    if config.dataset.get("image_size"):
        if len(shape) != 3 or shape[-1] is None:
            raise UserError(f"augment.crop and dataset.image_size apply to images (H, W, C); {name!r} has "
                            f"inputs of shape {shape}")
        return (config.dataset.image_size, config.dataset.image_size, shape[-1])
    if any(d is None for d in shape):
        raise UserError(f"the inputs of {name!r} have varied sizes {shape}; set dataset.image_size "
                        f"(and augment.crop) to crop them to one size")
    return shape + (1,) if len(shape) == 1 else shape


def normaliser(config: ml_collections.ConfigDict, dtype, signal: bool) -> Callable[[jax.Array], jax.Array]:
    """`x -> float32 model input` on the device: the in-memory path's scaling, in the same order.

    `signal`: the stored inputs are 1-D (W,) and the model takes (W, 1).
    """
    name = config.dataset.name
    scale = pipeline._PIXEL_MAX.get(name.partition("/")[0], 255.0) if np.dtype(dtype) == np.uint8 else None
    mean = std = None
    if config.dataset.get("mean") is not None:
        mean = np.asarray(config.dataset.mean, np.float32)
        std = np.asarray(config.dataset.get("std") or 1.0, np.float32)

    def normalise(x):
        x = x.astype(jnp.float32)
        if scale is not None:
            x = x / scale
        if mean is not None:  # per channel: the last axis
            per_channel = (1,) * (x.ndim - 1) + (-1,)
            x = (x - mean.reshape(per_channel)) / std.reshape(per_channel)
        return x[..., None] if signal else x

    return normalise


# ----------------------------------------------------------------------------------
# Steps on host-fed batches.

def host_steps(state: train.TrainState, x: jax.Array, y: jax.Array, *, unroll: bool,
               normalise: Callable, constrain: Callable | None = None) -> tuple[train.TrainState, dict[str, jax.Array]]:
    """One train step per leading row of the host-fed batches, in one call.

    Args:
      state: one replica's state.
      x: (num, B, ...) stored inputs; `normalise` turns each row into the model's input.
      y: (num, B) labels.
      unroll: unroll the loop over steps (`jaxdl.loop.scan_steps` says when that matters).
      constrain: the batch's sharding on a device mesh (`jaxdl.parallel`).

    Returns:
      The new state and the metrics of each step, with a trailing (num,) axis.
    """
    def body(s, batch):
        batch = {"x": normalise(batch[0]), "y": batch[1]}
        return train.train_step(s, constrain(batch) if constrain is not None else batch)

    state, metrics = jax.lax.scan(body, state, (x, y), unroll=0 if unroll else 1)
    return state, jax.tree.map(lambda m: jnp.moveaxis(m, 0, -1), metrics)


# ----------------------------------------------------------------------------------
# Set-up, scoring, the Run.

def _setup(config: ml_collections.ConfigDict):
    """Sources, preprocessing, normalisation, step count and the K replicas' initialiser."""
    check_config(config)
    train_src, test_src, x_key, y_key, num_classes, feature = _sources(config)
    shape = input_shape(config, feature)
    if preprocessors(config)[0].flip and len(feature.shape) != 3:
        raise UserError(f"augment.flip applies to images; {config.dataset.name!r} has inputs of shape "
                        f"{tuple(feature.shape)}")
    loop.check_batch_size(config, len(train_src))
    num_steps = loop.num_train_steps(config, len(train_src))
    model = train.make_model(config.model, num_classes)
    tx = optim_lib.make_optimizer(config.optim, num_steps)
    keys = jnp.stack([jax.random.PRNGKey(config.seed + k) for k in range(config.num_seeds)])
    sample = jnp.zeros((1, *shape), jnp.float32)
    precision = config.get("precision") or "float32"

    def init():
        return train.over_seeds(lambda k: train.create_state(k, model, tx, sample, precision),
                                config.num_seeds)(keys)

    try:
        jax.eval_shape(init)
    except ValueError as e:  # a model that cannot take this input says why
        raise UserError(f"model {config.model.name!r} cannot take inputs of shape {shape} "
                        f"from {config.dataset.name!r}: {e}") from e
    normalise = normaliser(config, feature.np_dtype, signal=len(feature.shape) == 1)
    return {"train": train_src, "test": test_src, "x_key": x_key, "y_key": y_key, "keys": keys,
            "num_steps": num_steps, "init": init, "normalise": normalise}


def _scorer(config: ml_collections.ConfigDict, s: dict):
    """`state -> {test_loss, test_accuracy}` (summarised over replicas), the test split streamed."""
    normalise = s["normalise"]
    eval_fn = compiler.jit(train.over_seeds(lambda st, x, y, m: train.eval_step(st, normalise(x), y, m),
                                            config.num_seeds, in_axes=(0, None, None, None)))
    _, eval_pre = preprocessors(config)

    lay = parallel.layout(config)

    def score(state, step=None):
        batches = stream_lib.eval_batches(s["test"], s["x_key"], s["y_key"], config.get("eval_batch_size", 1000),
                                          eval_pre, layout=lay, **_host(config))
        out = {}
        for name, values in train.evaluate(eval_fn, state, batches).items():
            out.update(loop.summarise(name, values))
        return out

    return score


def build(config: ml_collections.ConfigDict) -> loop.Run:
    """The `jaxdl.loop.Run` of `config` on the streaming path."""
    s = _setup(config)
    train_pre, _ = preprocessors(config)
    keys = s["keys"]
    lay = parallel.layout(config, {"batch_size": config.batch_size})
    shardings = train.state_shardings(config, s["init"])
    data = stream_lib.TrainStream(
        s["train"], s["x_key"], s["y_key"], jax.vmap(lambda k: jax.random.fold_in(k, loop.DATA))(keys),
        jax.vmap(lambda k: jax.random.fold_in(k, loop.AUGMENT))(keys), config.batch_size, s["num_steps"],
        train_pre, prefetch=config.dataset.get("prefetch") or 2, layout=lay, **_host(config))

    def make_steps(num):
        del num  # the batches' step axis says how many
        fn = lambda state, x, y: host_steps(state, x, y, unroll=config.get("unroll", True),
                                            normalise=s["normalise"], constrain=lay.constrain_batch if lay else None)
        return train.compile_steps(train.over_seeds(fn, config.num_seeds), lay, shardings,
                                   (lay.batch(2), lay.batch(2)) if lay else None)

    return loop.Run(
        init=s["init"], num_steps=s["num_steps"], make_steps=make_steps, data=data,
        evaluate=_scorer(config, s), schedule=optim_lib.make_schedule(config.optim, s["num_steps"]),
        description=f"{config.model.name} on {config.dataset.name} ({config.num_seeds} seed(s), streamed; "
                    f"{parallel.describe(config)})",
        shardings=shardings)


def evaluate_workdir(config: ml_collections.ConfigDict, workdir: str,
                     print_fn: Callable[[str], None] = print) -> dict[str, Any]:
    """Evaluates the latest checkpoint in `workdir` on the streamed test split; writes `eval.json`."""
    loop.check_resumable(config, workdir)
    s = _setup(config)
    return loop.evaluate_workdir(config, workdir, s["init"], _scorer(config, s), print_fn,
                                 shardings=train.state_shardings(config, s["init"]))
