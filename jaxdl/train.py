"""Classification training: TrainState, pure train/eval steps, and `train_and_evaluate`.

Every run carries a leading seed axis of size `num_seeds` (K): the state of K
independently initialised models, each with its own data order, is trained by one
compiled program (`jax.vmap` over the state). Seed replica k uses `seed + k`, so a
K-seed run starts from the parameters, and draws the data order and keys, of K single
runs with seeds `seed … seed+K-1`. The vmapped program rounds differently, so the runs
agree in the first steps and drift apart over thousands (the MNIST-1D CNN, seed 0:
95.2 % as one of 5 seeds, 95.3 % alone, after 6,000 steps of Adam at 1e-2).

The train set lives on the device; each step gathers its minibatch from the epoch's
permutation inside jit (`jaxdl.data.batch_indices`), so the data order is a pure
function of (seed, step) and a resumed run draws exactly the batches an uninterrupted
run would. With `dataset.stream` the same batches are read and sent by the host
instead (`jaxdl.train_stream`), for splits too big for the device.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax.training.dynamic_scale import DynamicScale

from jaxdl import compiler, loop, losses, models, parallel, progress
from jaxdl import data as data_lib
from jaxdl import optim as optim_lib
from jaxdl.data import augment as augment_lib
from jaxdl.errors import UserError, unknown_name
from jaxdl.nn import conv as conv_lib

# The key streams of `jaxdl.loop` (fold_in of the replica key).
_INIT, _DATA, _DROPOUT, _AUGMENT = loop.INIT, loop.DATA, loop.DROPOUT, loop.AUGMENT

# Re-exported: the loop's names, as users of `jaxdl.train` know them.
MetricsLog, TrainingDiverged, summarise = loop.MetricsLog, loop.TrainingDiverged, loop.summarise
num_train_steps = loop.num_train_steps


class TrainState(flax.struct.PyTreeNode):
    """Everything that changes during training; a pytree (checkpointed whole).

    Attributes:
      step: number of optimiser steps taken.
      params: model parameters.
      batch_stats: batch-norm running statistics ({} if the model has none).
      opt_state: Optax state.
      key: the replica's PRNG key; data order and dropout derive from it and `step`.
      apply_fn: the model's `apply` (static).
      tx: the Optax optimiser (static).
      loss_scale: float16 training's dynamic loss scale (`flax.training.dynamic_scale`),
        None otherwise.
      compute_dtype: the dtype of the forward and backward pass (static; None: float32).
        Parameters and optimiser state stay float32 (`jaxdl.parallel`).
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    key: jax.Array
    apply_fn: Callable = flax.struct.field(pytree_node=False)
    tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)
    loss_scale: Any = None
    compute_dtype: Any = flax.struct.field(pytree_node=False, default=None)

    def variables(self) -> dict:
        if self.batch_stats:
            return {"params": self.params, "batch_stats": self.batch_stats}
        return {"params": self.params}


def create_state(key: jax.Array, model: Any, tx: optax.GradientTransformation,
                 sample_x: jax.Array, precision: str = "float32") -> TrainState:
    """Initialises one replica from its key. `sample_x` is a (B, ...) input example.

    `precision`: `float32`, `bfloat16` or `float16` compute (`jaxdl.parallel`); the
    parameters are float32 in every case.
    """
    init_key = jax.random.fold_in(key, _INIT)
    variables = model.init({"params": init_key, "dropout": init_key}, sample_x, train=False)
    params = variables["params"]
    loss_scale = None
    if precision == "float16":
        loss_scale = DynamicScale(fin_steps=jnp.zeros((), jnp.int32), scale=jnp.asarray(2.0 ** 15, jnp.float32))
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params),
                      key=key, apply_fn=model.apply, tx=tx, loss_scale=loss_scale,
                      compute_dtype=parallel.PRECISIONS[precision])


def _logits(output):
    # Models with auxiliary heads return (logits, extras) in training.
    return output[0] if isinstance(output, tuple) else output


# Up to this many parameters the gradient norm is taken over one concatenated vector:
# one fused square-and-concatenate and one reduction, where a norm per leaf costs XLA:CPU
# two or three operations per leaf (in a small model's step these outweigh the math).
_CONCAT_NORM_MAX = 1 << 20


def grad_norm(grads: Any) -> jax.Array:
    """The global L2 norm of a gradient pytree (the divergence guard's input)."""
    leaves = jax.tree.leaves(grads)
    if not leaves:
        return jnp.zeros((), jnp.float32)
    if sum(g.size for g in leaves) > _CONCAT_NORM_MAX:
        return optax.tree.norm(grads)
    flat = jnp.concatenate([jnp.ravel(g).astype(jnp.float32) for g in leaves])
    return jnp.sqrt(jnp.sum(flat * flat))


def gradient_step(state: TrainState, x: jax.Array, loss_of_output: Callable) -> tuple[TrainState, Any]:
    """One optimiser step of any task: forward in training mode, loss, backward, update.

    The forward pass gets this step's dropout key and updates batch-norm statistics
    when the model has them. With a `compute_dtype` the parameters and the input are
    cast to it for the forward and backward pass, the model's output back to float32
    for the loss; the gradients and the update are float32. With a `loss_scale`
    (float16) the loss is scaled before the backward pass, and a step whose gradients
    are not finite changes nothing but the scale (its `grad_norm` is reported as 0).

    Args:
      state: one replica's state.
      x: the model's input batch.
      loss_of_output: `output -> (scalar loss, aux)`.

    Returns:
      The new state and `(loss, aux, grad_norm)`.
    """
    dropout_key = jax.random.fold_in(jax.random.fold_in(state.key, _DROPOUT), state.step)

    dtype = state.compute_dtype
    x = parallel.cast(x, dtype)

    def loss_fn(params):
        variables = {**state.variables(), "params": parallel.cast(params, dtype)}
        mutable = ["batch_stats"] if state.batch_stats else False
        out = state.apply_fn(variables, x, train=True, rngs={"dropout": dropout_key}, mutable=mutable)
        out, updates = out if mutable else (out, {})
        loss, aux = loss_of_output(parallel.cast(out, jnp.float32) if dtype is not None else out)
        return loss, (aux, updates)

    if state.loss_scale is None:
        (loss, (aux, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        finite = None
    else:
        loss_scale, finite, (loss, (aux, updates)), grads = state.loss_scale.value_and_grad(
            loss_fn, has_aux=True)(state.params)
    opt_updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    new_state = state.replace(
        step=state.step + 1, params=optax.apply_updates(state.params, opt_updates),
        opt_state=opt_state, batch_stats=updates.get("batch_stats", state.batch_stats))
    norm = grad_norm(grads)
    if finite is not None:  # a skipped step keeps the old parameters, optimiser state and statistics
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
        new_state = new_state.replace(params=keep(new_state.params, state.params),
                                      opt_state=keep(new_state.opt_state, state.opt_state),
                                      batch_stats=keep(new_state.batch_stats, state.batch_stats),
                                      loss_scale=loss_scale)
        norm = jnp.where(finite, norm, 0.0)
    return new_state, (loss, aux, norm)


def classification_loss(output, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mean cross-entropy of `output` (logits (B, K), or GoogLeNet's `(logits, (aux1, aux2))`).

    Auxiliary logits add their cross-entropies with the paper's weight 0.3
    (`jaxdl.models.aux_weighted_loss`). Returns the loss and the main logits.
    """
    def ce(logits):
        return losses.softmax_cross_entropy(logits, labels).mean()

    if isinstance(output, tuple):
        logits, aux = output
        return models.aux_weighted_loss(ce(logits), [ce(a) for a in aux]), logits
    return ce(output), output


def train_step(state: TrainState, batch: dict[str, jax.Array]) -> tuple[TrainState, dict[str, jax.Array]]:
    """One minibatch SGD step: forward, cross-entropy, backward, optimiser update.

    Args:
      state: one replica's state (no seed axis; vmap it for several).
      batch: {"x": (B, ...) inputs, "y": (B,) integer labels}.

    Returns:
      The new state and {loss, accuracy, grad_norm} of this minibatch.
    """
    yb = batch["y"]
    state, (loss, logits, grad_norm) = gradient_step(state, batch["x"], lambda out: classification_loss(out, yb))
    return state, {"loss": loss, "accuracy": jnp.mean(jnp.argmax(logits, -1) == yb), "grad_norm": grad_norm}


def train_steps(state: TrainState, x: jax.Array, y: jax.Array, *, batch_size: int,
                num: int, unroll: bool, crop_padding: int = 0, flip: bool = False,
                constrain: Callable | None = None) -> tuple[TrainState, dict[str, jax.Array]]:
    """`num` consecutive train steps on the device-resident train set, in one call.

    Step s trains on the batch `jaxdl.data.batch_indices(data key, s, N, B)`
    (`jaxdl.loop.scan_steps`).

    Args:
      state: one replica's state.
      x: all training inputs (N, ...).
      y: all training labels (N,).
      batch_size: B.
      num: steps in this call.
      unroll: unroll the loop over steps.
      crop_padding, flip: augmentation of image batches (`jaxdl.data.augment`).
      constrain: the batch's sharding on a device mesh (`jaxdl.parallel`).

    Returns:
      The new state and the metrics of each step, with a trailing (num,) axis.
    """
    augment_fn = None
    if crop_padding or flip:
        def augment_fn(key, batch):
            return {**batch, "x": augment_lib.augment(key, batch["x"], crop_padding, flip)}
    return loop.scan_steps(state, {"x": x, "y": y}, train_step, batch_size=batch_size, num=num,
                           unroll=unroll, augment_fn=augment_fn, constrain=constrain)


def eval_step(state: TrainState, x: jax.Array, y: jax.Array,
              mask: jax.Array) -> dict[str, jax.Array]:
    """Sums over one (padded) evaluation batch; `mask` is 1 for real rows.

    Returns sums and counts, never means, so padding and ragged batches stay exact.
    """
    logits = _logits(state.apply_fn(state.variables(), x, train=False))
    loss = losses.softmax_cross_entropy(logits, y)
    correct = (jnp.argmax(logits, -1) == y).astype(jnp.float32)
    return {"loss": jnp.sum(loss * mask), "correct": jnp.sum(correct * mask),
            "count": jnp.sum(mask)}


def evaluate(eval_fn: Callable, states: TrainState, batches: Any) -> dict[str, np.ndarray]:
    """Mean test loss and accuracy per replica (K,) over padded device batches."""
    totals = None
    for xb, yb, mb in progress.track(batches, desc="eval"):
        sums = eval_fn(states, xb, yb, mb)
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    totals = jax.device_get(totals)
    return {"test_loss": totals["loss"] / totals["count"],
            "test_accuracy": totals["correct"] / totals["count"]}


def eval_batches(ds: data_lib.ArrayDataset, batch_size: int,
                 layout: parallel.Layout | None = None) -> list[tuple[jax.Array, jax.Array, jax.Array]]:
    """The split as device arrays in fixed-size batches, the last padded and masked.

    On a device mesh the batches are split over the devices, their size rounded up to
    a multiple of the device count (the padding is masked).
    """
    n = len(ds)
    batch_size = min(batch_size, n)
    if layout is not None:
        batch_size = -(-batch_size // layout.num_devices) * layout.num_devices
    pad = (-n) % batch_size
    x = np.concatenate([ds.x, np.zeros((pad, *ds.x.shape[1:]), ds.x.dtype)])
    y = np.concatenate([ds.y, np.zeros((pad,), ds.y.dtype)])
    mask = np.concatenate([np.ones(n, np.float32), np.zeros(pad, np.float32)])
    put = jax.device_put if layout is None else lambda a: layout.put_batch(a, 0, batch_size)
    return [tuple(put(a[i:i + batch_size]) for a in (x, y, mask)) for i in range(0, n + pad, batch_size)]


# ----------------------------------------------------------------------------------
# Config → objects.

def state_shardings(config: ml_collections.ConfigDict, init: Callable[[], Any]) -> Any:
    """The shardings of `init()`'s state on the config's mesh (None on one device)."""
    lay = parallel.layout(config)
    return None if lay is None else lay.state(jax.eval_shape(init))


def over_seeds(fn: Callable, num_seeds: int, in_axes: Any = 0) -> Callable:
    """`jax.vmap(fn, in_axes)` over the seed axis of size `num_seeds`.

    With several seeds, the function is traced inside `jaxdl.nn.conv.replicas`, so that
    each replica's convolutions are matrix products rather than one grouped convolution.
    """
    vmapped = jax.vmap(fn, in_axes=in_axes)
    if num_seeds == 1:
        return vmapped

    @functools.wraps(fn)
    def traced(*args):
        with conv_lib.replicas():
            return vmapped(*args)
    return traced


def compile_steps(fn: Callable, layout: parallel.Layout | None, shardings: Any, data_shardings: Any) -> Callable:
    """`jaxdl.compiler.jit` of `fn(state, *data) -> (state, metrics)`, donating the state.

    On a mesh with explicit shardings: the state's in and out (`shardings`), the data's
    (`data_shardings`), and the metrics replicated.
    """
    if layout is None:
        return compiler.jit(fn, donate_argnums=0)
    return compiler.jit(fn, in_shardings=(shardings, *data_shardings), out_shardings=(shardings, layout.replicated),
                        donate_argnums=0)


def make_model(model_config: ml_collections.ConfigDict, num_classes: int) -> Any:
    """Builds `getattr(jaxdl.models, model.name)(num_classes=K, **other model fields)`."""
    name = model_config.name
    cls = getattr(models, name, None) if name in models.__all__ else None
    if cls is None:
        raise unknown_name("model", name, models.__all__, "model.name")
    kwargs = {k: v for k, v in model_config.to_dict().items() if k != "name"}
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
    try:
        return cls(num_classes=num_classes, **kwargs)
    except TypeError as e:
        raise UserError(f"model {name!r} does not take these model fields: {e}") from e


def make_backbone(spec: dict, field: str = "model.backbone"):
    """A zoo model used only for its named features (detection and segmentation heads).

    `spec` is `{"name": zoo model, **its fields}`. The classifier output is unused: one
    class (and, for AlexNet/VGG, dense layers of width 1) keeps its parameters
    negligible, where VGG-16's fc6 alone would hold 100M at 300×300.
    """
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in dict(spec).items()}
    name = fields.pop("name")
    if name not in models.__all__:
        raise unknown_name("backbone", name, models.__all__, f"{field}.name")
    cls = getattr(models, name)
    try:
        try:
            return cls(num_classes=1, hidden=1, **fields)
        except TypeError:
            return cls(num_classes=1, **fields)
    except TypeError as e:
        raise UserError(f"backbone {name!r} does not take these {field} fields: {e}") from e


def check_config(config: ml_collections.ConfigDict) -> None:
    """Raises UserError for any config value that cannot work, before any work is done."""
    loop.check_config(config)
    parallel.check_config(config)
    if config.model.name not in models.__all__:
        raise unknown_name("model", config.model.name, models.__all__, "model.name")
    optim_lib.check(config.optim)


def _setup(config: ml_collections.ConfigDict):
    """Data, step count, and the initialiser of K replicas' state for `config`.

    Returns (train_ds, test_ds, num_steps, init) with `init() -> TrainState` (seed axis K).
    """
    check_config(config)
    ds_cfg = config.dataset
    load = functools.partial(data_lib.load, ds_cfg.name, directory=ds_cfg.get("data_dir"),
                             download=ds_cfg.get("download", False),
                             image_size=ds_cfg.get("image_size"))
    train_ds = load(ds_cfg.get("train_split", "train"))
    test_ds = load(ds_cfg.get("test_split", "test"))
    if ds_cfg.get("mean") is not None:  # per-channel normalisation, the same for both splits
        mean = np.asarray(ds_cfg.mean, np.float32)
        std = np.asarray(ds_cfg.get("std") or 1.0, np.float32)
        train_ds, test_ds = (dataclasses.replace(d, x=(d.x - mean) / std) for d in (train_ds, test_ds))
    aug = config.get("augment") or {}
    if (aug.get("crop_padding", 0) or aug.get("flip", False)) and train_ds.x.ndim != 4:
        raise UserError(f"augment.crop_padding/flip apply to images; {ds_cfg.name!r} has inputs "
                        f"of shape {train_ds.x.shape[1:]}")
    loop.check_batch_size(config, len(train_ds))
    num_steps = loop.num_train_steps(config, len(train_ds))
    model = make_model(config.model, train_ds.num_classes)
    tx = optim_lib.make_optimizer(config.optim, num_steps)
    keys = jnp.stack([jax.random.PRNGKey(config.seed + k) for k in range(config.num_seeds)])
    sample = jnp.asarray(train_ds.x[:1])

    precision = config.get("precision") or "float32"

    def init():
        return over_seeds(lambda k: create_state(k, model, tx, sample, precision), config.num_seeds)(keys)

    try:
        jax.eval_shape(init)
    except UserError:
        raise
    except (ValueError, TypeError, ZeroDivisionError) as e:  # a model that cannot take this input says why
        raise UserError(f"model {config.model.name!r} cannot take inputs of shape "
                        f"{train_ds.x.shape[1:]} from {ds_cfg.name!r}: {str(e).strip().splitlines()[0]}") from e
    return train_ds, test_ds, num_steps, init


def _scorer(config: ml_collections.ConfigDict, test_ds: data_lib.ArrayDataset):
    """`state -> {test_loss, test_accuracy}` (summarised over replicas) on the test split."""
    eval_fn = compiler.jit(over_seeds(eval_step, config.num_seeds, in_axes=(0, None, None, None)))
    batches = eval_batches(test_ds, config.get("eval_batch_size", 1000), parallel.layout(config))

    def score(state, step=None):
        out = {}
        for name, values in evaluate(eval_fn, state, batches).items():
            out.update(loop.summarise(name, values))
        return out

    return score


def _pictures(config: ml_collections.ConfigDict, workdir: str, state: TrainState,
              test_ds: data_lib.ArrayDataset) -> list[str]:
    """The classifier's pictures of `state` in `W/pictures/` (`jaxdl.pictures`)."""
    from jaxdl import pictures as pictures_lib

    layer, example = pictures_lib.options(config)
    return pictures_lib.classifier_pictures(os.path.join(workdir, "pictures"), state, test_ds.x, test_ds.y,
                                            test_ds.num_classes, layer=layer, example=example)


def pictures(config: ml_collections.ConfigDict, workdir: str,
             print_fn: Callable[[str], None] = print) -> list[str]:
    """Draws the pictures of the latest checkpoint in `workdir` (confusion matrix, filters, feature maps, …)."""
    loop.check_resumable(config, workdir)
    _, test_ds, _, init = _setup(config)
    state = loop.restore_latest(workdir, init, state_shardings(config, init))
    return _pictures(config, os.path.abspath(workdir), state, test_ds)


def evaluate_workdir(config: ml_collections.ConfigDict, workdir: str,
                     print_fn: Callable[[str], None] = print) -> dict[str, Any]:
    """Evaluates the latest checkpoint in `workdir` on the test split; writes `eval.json`."""
    if config.dataset.get("stream", False) or jax.process_count() > 1:
        from jaxdl import train_stream
        return train_stream.evaluate_workdir(config, workdir, print_fn)
    loop.check_resumable(config, workdir)
    _, test_ds, _, init = _setup(config)
    return loop.evaluate_workdir(config, workdir, init, _scorer(config, test_ds), print_fn,
                                 shardings=state_shardings(config, init))


def summary(config: ml_collections.ConfigDict, workdir: str | None = None,
            print_fn: Callable[[str], None] = print) -> list[dict]:
    """Prints the model's layers (output shape, nodes, parameters) for the config's input.

    The input shape is `dataset.input_shape` when the config sets it (catalogue datasets
    need not be present), else that of the dataset's training split.
    """
    from jaxdl import summary as summary_lib

    del workdir
    check_config(config)
    ds_cfg = config.dataset
    shape = ds_cfg.get("input_shape")
    num_classes = ds_cfg.get("num_classes")
    if shape is None or num_classes is None:
        ds = data_lib.load(ds_cfg.name, ds_cfg.get("train_split", "train"), directory=ds_cfg.get("data_dir"),
                           download=ds_cfg.get("download", False), image_size=ds_cfg.get("image_size"))
        shape, num_classes = shape or ds.x.shape[1:], num_classes or ds.num_classes
    model = make_model(config.model, num_classes)
    try:
        return summary_lib.print_summary(model, tuple(shape), print_fn)
    except UserError:
        raise
    except (ValueError, TypeError, ZeroDivisionError) as e:
        raise UserError(f"model {config.model.name!r} cannot take inputs of shape {tuple(shape)}: {e}") from e


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       print_fn: Callable[[str], None] = print) -> dict[str, Any]:
    """Trains `num_seeds` replicas, evaluating, logging and checkpointing; resumes if it can.

    Args:
      config: experiment config (see `experiments/mnist1d.py` for the fields).
      workdir: where checkpoints, `metrics.jsonl`, `config.json` and `results.json` go.
      print_fn: where progress lines go.

    Returns:
      Final metrics: `test_accuracy`, `test_loss` (means over seeds), with `_std` and
      `_per_seed` entries when `num_seeds` > 1, plus `step` and `train_time_s`.
    """
    def build() -> loop.Run:
        train_ds, test_ds, num_steps, init = _setup(config)
        aug = config.get("augment") or {}
        lay = parallel.layout(config, {"batch_size": config.batch_size})
        shardings = state_shardings(config, init)

        def make_steps(num):
            fn = functools.partial(train_steps, batch_size=config.batch_size, num=num,
                                   unroll=config.get("unroll", True),
                                   crop_padding=aug.get("crop_padding", 0), flip=aug.get("flip", False),
                                   constrain=lay.constrain_batch if lay else None)
            return compile_steps(over_seeds(fn, config.num_seeds, in_axes=(0, None, None)), lay, shardings,
                                 (lay.replicated, lay.replicated) if lay else None)

        data = (train_ds.x, train_ds.y)
        return loop.Run(
            init=init, num_steps=num_steps, make_steps=make_steps,
            data=jax.device_put(data) if lay is None else lay.replicate(data),
            evaluate=_scorer(config, test_ds), schedule=optim_lib.make_schedule(config.optim, num_steps),
            pictures=lambda state: _pictures(config, os.path.abspath(workdir), state, test_ds),
            description=f"{config.model.name} on {config.dataset.name} ({config.num_seeds} seed(s); "
                        f"{parallel.describe(config)})",
            shardings=shardings)

    if config.dataset.get("stream", False) or jax.process_count() > 1:
        # The split stays in the data source (jaxdl.train_stream); with several processes
        # each reads only its share of every batch from it.
        from jaxdl import train_stream
        return loop.run(config, workdir, lambda: train_stream.build(config), print_fn)
    return loop.run(config, workdir, build, print_fn)
