"""Classification training: TrainState, pure train/eval steps, and `train_and_evaluate`.

Every run carries a leading seed axis of size `num_seeds` (K): the state of K
independently initialised models, each with its own data order, is trained by one
compiled program (`jax.vmap` over the state). Seed replica k uses `seed + k`, so a
K-seed run equals K single runs with seeds `seed … seed+K-1`.

The train set lives on the device; each step gathers its minibatch from the epoch's
permutation inside jit (`jaxdl.data.batch_indices`), so the data order is a pure
function of (seed, step) and a resumed run draws exactly the batches an uninterrupted
run would.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxdl import data as data_lib
from jaxdl import losses, models
from jaxdl import optim as optim_lib
from jaxdl.checkpoint import Checkpoints
from jaxdl.data import augment as augment_lib
from jaxdl.errors import UserError, unknown_name

# Streams derived from a replica's key with fold_in: never reuse one for two purposes.
_INIT, _DATA, _DROPOUT, _AUGMENT = 0, 1, 2, 3


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
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    key: jax.Array
    apply_fn: Callable = flax.struct.field(pytree_node=False)
    tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)

    def variables(self) -> dict:
        if self.batch_stats:
            return {"params": self.params, "batch_stats": self.batch_stats}
        return {"params": self.params}


def create_state(key: jax.Array, model, tx: optax.GradientTransformation,
                 sample_x: jax.Array) -> TrainState:
    """Initialises one replica from its key. `sample_x` is a (B, ...) input example."""
    init_key = jax.random.fold_in(key, _INIT)
    variables = model.init({"params": init_key, "dropout": init_key}, sample_x, train=False)
    params = variables["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params),
                      key=key, apply_fn=model.apply, tx=tx)


def _logits(output):
    # Models with auxiliary heads return (logits, extras) in training.
    return output[0] if isinstance(output, tuple) else output


def train_step(state: TrainState, batch: dict[str, jax.Array]) -> tuple[TrainState, dict[str, jax.Array]]:
    """One minibatch SGD step: forward, cross-entropy, backward, optimiser update.

    Args:
      state: one replica's state (no seed axis; vmap it for several).
      batch: {"x": (B, ...) inputs, "y": (B,) integer labels}.

    Returns:
      The new state and {loss, accuracy, grad_norm} of this minibatch.
    """
    xb, yb = batch["x"], batch["y"]
    dropout_key = jax.random.fold_in(jax.random.fold_in(state.key, _DROPOUT), state.step)

    def loss_fn(params):
        variables = {**state.variables(), "params": params}
        mutable = ["batch_stats"] if state.batch_stats else False
        out = state.apply_fn(variables, xb, train=True, rngs={"dropout": dropout_key},
                             mutable=mutable)
        out, updates = out if mutable else (out, {})
        logits = _logits(out)
        loss = losses.softmax_cross_entropy(logits, yb).mean()
        return loss, (logits, updates)

    (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    opt_updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    new_state = state.replace(
        step=state.step + 1, params=optax.apply_updates(state.params, opt_updates),
        opt_state=opt_state, batch_stats=updates.get("batch_stats", state.batch_stats))
    metrics = {"loss": loss, "accuracy": jnp.mean(jnp.argmax(logits, -1) == yb),
               "grad_norm": optax.tree.norm(grads)}
    return new_state, metrics


def train_steps(state: TrainState, x: jax.Array, y: jax.Array, *, batch_size: int,
                num: int, unroll: bool, crop_padding: int = 0,
                flip: bool = False) -> tuple[TrainState, dict[str, jax.Array]]:
    """`num` consecutive train steps on the device-resident train set, in one call.

    Step s trains on the batch `jaxdl.data.batch_indices(data key, s, N, B)`. The epoch
    permutations the call needs are drawn once per call, not once per step: on the CPU
    a permutation of a few thousand indices costs more than a whole MLP step.
    A rolled `lax.scan` helps dispatch-bound MLPs but runs convolutions inside the loop
    body several times slower on XLA:CPU; `unroll=True` avoids that.

    Args:
      state: one replica's state.
      x: all training inputs (N, ...).
      y: all training labels (N,).
      batch_size: B.
      num: steps in this call.
      unroll: unroll the loop over steps.
      crop_padding, flip: augmentation of image batches (`jaxdl.data.augment`).

    Returns:
      The new state and the metrics of each step, with a leading (num,) axis.
    """
    n = x.shape[0]
    steps_per_epoch = n // batch_size
    span = (steps_per_epoch + num - 2) // steps_per_epoch + 1  # epochs one call can touch
    first_epoch = state.step // steps_per_epoch
    perms = data_lib.epoch_permutations(jax.random.fold_in(state.key, _DATA),
                                        first_epoch + jnp.arange(span), n)

    def body(s, _):
        epoch, i = jnp.divmod(s.step, steps_per_epoch)
        idx = jax.lax.dynamic_slice_in_dim(perms[epoch - first_epoch], i * batch_size, batch_size)
        xb = x[idx]
        if crop_padding or flip:
            key = jax.random.fold_in(jax.random.fold_in(s.key, _AUGMENT), s.step)
            xb = augment_lib.augment(key, xb, crop_padding, flip)
        return train_step(s, {"x": xb, "y": y[idx]})

    # unroll=0 unrolls fully; unroll=num would leave a one-trip while loop when num == 1.
    return jax.lax.scan(body, state, None, length=num, unroll=0 if unroll else 1)


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


def evaluate(eval_fn, states: TrainState, batches) -> dict[str, np.ndarray]:
    """Mean test loss and accuracy per replica (K,) over padded device batches."""
    totals = None
    for xb, yb, mb in batches:
        sums = eval_fn(states, xb, yb, mb)
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    totals = jax.device_get(totals)
    return {"test_loss": totals["loss"] / totals["count"],
            "test_accuracy": totals["correct"] / totals["count"]}


def eval_batches(ds: data_lib.ArrayDataset, batch_size: int):
    """The split as device arrays in fixed-size batches, the last padded and masked."""
    n = len(ds)
    batch_size = min(batch_size, n)
    pad = (-n) % batch_size
    x = np.concatenate([ds.x, np.zeros((pad, *ds.x.shape[1:]), ds.x.dtype)])
    y = np.concatenate([ds.y, np.zeros((pad,), ds.y.dtype)])
    mask = np.concatenate([np.ones(n, np.float32), np.zeros(pad, np.float32)])
    return [tuple(jax.device_put(a[i:i + batch_size]) for a in (x, y, mask))
            for i in range(0, n + pad, batch_size)]


# ----------------------------------------------------------------------------------
# Config → objects.

def make_model(model_config: ml_collections.ConfigDict, num_classes: int):
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


def num_train_steps(config: ml_collections.ConfigDict, num_examples: int) -> int:
    """`num_epochs`, when set, wins over `num_steps`: epochs × (N // batch_size)."""
    if config.get("num_epochs"):
        return int(config.num_epochs) * (num_examples // config.batch_size)
    return int(config.num_steps)


def check_config(config: ml_collections.ConfigDict) -> None:
    """Raises UserError for any config value that cannot work, before any work is done."""
    for field in ("num_seeds", "batch_size", "log_every", "eval_every", "checkpoint_every"):
        value = config.get(field)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise UserError(f"{field} must be an integer >= 1, got {value!r}")
    if not config.get("num_epochs") and (not isinstance(config.get("num_steps"), int)
                                         or config.num_steps < 1):
        raise UserError(f"num_steps must be an integer >= 1 (or set num_epochs), got {config.get('num_steps')!r}")
    if config.get("steps_per_call", 1) < 1:
        raise UserError(f"steps_per_call must be >= 1, got {config.steps_per_call}")
    if config.model.name not in models.__all__:
        raise unknown_name("model", config.model.name, models.__all__, "model.name")
    optim_lib.check(config.optim)


# ----------------------------------------------------------------------------------
# Logs.

class MetricsLog:
    """`<workdir>/metrics.jsonl`: one JSON object per log event, keyed by `step`."""

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, "metrics.jsonl")

    def append(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def read(self) -> list[dict]:
        if not os.path.exists(self.path):
            return []
        with open(self.path) as f:
            return [json.loads(line) for line in f if line.strip()]

    def truncate_after(self, step: int) -> None:
        """Drops records after `step`: a resumed run writes them again."""
        records = [r for r in self.read() if r["step"] <= step]
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
        os.replace(tmp, self.path)


def summarise(name: str, values) -> dict[str, Any]:
    """Mean over replicas, plus std and per-replica values when there are several."""
    values = np.asarray(values, np.float64).reshape(-1)
    out = {name: float(values.mean())}
    if values.size > 1:
        out[f"{name}_std"] = float(values.std())
        out[f"{name}_per_seed"] = [float(v) for v in values]
    return out


def _fmt_duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class TrainingDiverged(RuntimeError):
    """The loss or gradient became non-finite."""


# Config fields whose change makes a checkpoint unusable: resuming with them changed
# would silently train a different experiment.
_RESUME_KEYS = ("model", "dataset.name", "dataset.image_size", "num_seeds", "seed",
                "batch_size")


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _check_resumable(saved: dict, config: ml_collections.ConfigDict, workdir: str) -> None:
    new = _flatten(json.loads(config.to_json()))
    old = _flatten(saved)
    differ = sorted(k for k in set(new) | set(old)
                    if any(k == r or k.startswith(r + ".") for r in _RESUME_KEYS)
                    and new.get(k) != old.get(k))
    if differ:
        raise UserError(
            f"workdir {workdir} holds a run with a different config ({', '.join(differ)}); "
            f"use another --workdir or restore the old values")


# ----------------------------------------------------------------------------------

def _setup(config: ml_collections.ConfigDict):
    """Data, model, optimiser and freshly initialised state (K replicas) for `config`."""
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
    if config.batch_size > len(train_ds):
        raise UserError(f"batch_size {config.batch_size} is larger than the {len(train_ds)} "
                        f"training examples of {ds_cfg.name!r}; lower --config.batch_size")
    num_steps = num_train_steps(config, len(train_ds))
    model = make_model(config.model, train_ds.num_classes)
    tx = optim_lib.make_optimizer(config.optim, num_steps)
    keys = jnp.stack([jax.random.PRNGKey(config.seed + k) for k in range(config.num_seeds)])
    sample = jnp.asarray(train_ds.x[:1])
    try:
        state = jax.jit(jax.vmap(lambda k: create_state(k, model, tx, sample)))(keys)
    except ValueError as e:  # a model that cannot take this input says why
        raise UserError(f"model {config.model.name!r} cannot take inputs of shape "
                        f"{train_ds.x.shape[1:]} from {ds_cfg.name!r}: {e}") from e
    return train_ds, test_ds, num_steps, state


def evaluate_workdir(config: ml_collections.ConfigDict, workdir: str,
                     print_fn: Callable[[str], None] = print) -> dict[str, Any]:
    """Evaluates the latest checkpoint in `workdir` on the test split; writes `eval.json`."""
    workdir = os.path.abspath(workdir)
    ckpts = Checkpoints(workdir) if os.path.isdir(os.path.join(workdir, "checkpoints")) else None
    step = ckpts.latest_step() if ckpts else None
    if step is None:
        raise UserError(f"no checkpoint in {workdir}; train first (--mode=train) "
                        f"or pass the run's --workdir")
    config_path = os.path.join(workdir, "config.json")
    if os.path.exists(config_path):
        with open(config_path) as f:
            _check_resumable(json.load(f), config, workdir)
    _, test_ds, _, state = _setup(config)
    state = ckpts.restore(step, state)
    ckpts.close()
    eval_fn = jax.jit(jax.vmap(eval_step, in_axes=(0, None, None, None)))
    result = {"step": step}
    batches = eval_batches(test_ds, config.get("eval_batch_size", 1000))
    for name, values in evaluate(eval_fn, state, batches).items():
        result.update(summarise(name, values))
    with open(os.path.join(workdir, "eval.json"), "w") as f:
        json.dump(result, f, indent=2)
    print_fn(f"step {step}: test loss {result['test_loss']:.4f}  test accuracy {result['test_accuracy']:.4f}")
    return result


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
    except ValueError as e:
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
    # ---------------------------------------------------------------- data, model and optimiser
    train_ds, test_ds, num_steps, state = _setup(config)
    ds_cfg = config.dataset
    schedule = optim_lib.make_schedule(config.optim, num_steps)
    workdir = os.path.abspath(workdir)

    # ---------------------------------------------------------------- workdir and restore
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create workdir {workdir}: {e.strerror}") from e
    if not os.access(workdir, os.W_OK):
        raise UserError(f"workdir {workdir} is not writable; pass another --workdir")
    config_path = os.path.join(workdir, "config.json")
    ckpts = Checkpoints(workdir, keep=config.get("keep_checkpoints", 3))
    log = MetricsLog(workdir)
    start = ckpts.latest_step()
    if start is not None:
        if os.path.exists(config_path):
            with open(config_path) as f:
                _check_resumable(json.load(f), config, workdir)
        state = ckpts.restore(start, state)
        log.truncate_after(start)
        print_fn(f"resumed from {ckpts.path(start)} at step {start}")
    else:
        start = 0
        if os.path.exists(log.path):
            os.remove(log.path)  # a log without a checkpoint belongs to no run we can continue
    with open(config_path, "w") as f:
        f.write(config.to_json(indent=2))

    # ---------------------------------------------------------------- compiled steps
    x_train, y_train = jax.device_put(train_ds.x), jax.device_put(train_ds.y)
    chunk = max(1, min(config.get("steps_per_call", 1), num_steps))
    unroll = config.get("unroll", True)

    def compiled(num):
        aug = config.get("augment") or {}
        fn = functools.partial(train_steps, batch_size=config.batch_size, num=num, unroll=unroll,
                               crop_padding=aug.get("crop_padding", 0), flip=aug.get("flip", False))
        return jax.jit(jax.vmap(fn, in_axes=(0, None, None)), donate_argnums=0)

    step_chunk, step_one = compiled(chunk), compiled(1)
    eval_fn = jax.jit(jax.vmap(eval_step, in_axes=(0, None, None, None)))
    test_batches = eval_batches(test_ds, config.get("eval_batch_size", 1000))

    # ---------------------------------------------------------------- loop
    print_fn(f"training {config.model.name} on {ds_cfg.name}: {num_steps} steps, "
             f"batch {config.batch_size}, {config.num_seeds} seed(s), workdir {workdir}")
    pending: list[dict] = []  # per-call metrics still on the device
    fetched: list[dict] = []  # on the host, not yet logged
    step = int(start)
    last_saved = start if start else None
    last_eval = None
    t_log, s_log, t0 = time.time(), step, time.time()

    def crossed(prev, now, every):
        return now // every > prev // every

    def fetch() -> None:
        """Brings the pending metrics to the host; stops on a non-finite loss or gradient."""
        if not pending:
            return
        # Each entry is (K, steps); concatenate along steps.
        metrics = jax.device_get(jax.tree.map(lambda *a: jnp.concatenate(a, axis=1), *pending))
        pending.clear()
        if not (np.all(np.isfinite(metrics["loss"])) and np.all(np.isfinite(metrics["grad_norm"]))):
            kept = (f"the last good checkpoint is {ckpts.path(last_saved)}" if last_saved
                    else "no checkpoint was written")
            raise TrainingDiverged(f"non-finite loss or gradient at or before step {step}; {kept}")
        fetched.append(metrics)

    while step < num_steps:
        num = chunk if num_steps - step >= chunk else 1
        state, metrics = (step_chunk if num == chunk else step_one)(state, x_train, y_train)
        pending.append(metrics)
        prev, step = step, step + num
        done = step >= num_steps
        record = {}
        if crossed(prev, step, config.log_every) or done:
            fetch()
            window = {k: np.concatenate([m[k] for m in fetched], axis=1) for k in ("loss", "accuracy")}
            fetched.clear()
            record.update(summarise("train_loss", window["loss"].mean(1)))
            record.update(summarise("train_accuracy", window["accuracy"].mean(1)))
            record["lr"] = float(schedule(step - 1))
            now = time.time()
            rate = (step - s_log) / max(now - t_log, 1e-9)
            t_log, s_log = now, step
            eta = _fmt_duration((num_steps - step) / max(rate, 1e-9))
            print_fn(f"step {step}/{num_steps}  loss {record['train_loss']:.4f}  "
                     f"accuracy {record['train_accuracy']:.4f}  {rate:.1f} steps/s  ETA {eta}")
        if crossed(prev, step, config.eval_every) or done:
            last_eval = evaluate(eval_fn, state, test_batches)
            for name, values in last_eval.items():
                record.update(summarise(name, values))
            print_fn(f"step {step}/{num_steps}  test loss {record['test_loss']:.4f}  "
                     f"test accuracy {record['test_accuracy']:.4f}")
        # The log line goes first: a run killed before its checkpoint completes resumes
        # from the previous checkpoint and drops the lines after it, so none is lost.
        if record:
            log.append({"step": step, **record})
        if crossed(prev, step, config.checkpoint_every) or done:
            fetch()  # never checkpoint a diverged state
            ckpts.save(step, state)
            last_saved = step
    ckpts.close()

    # ---------------------------------------------------------------- results
    final = {"step": step}
    if last_eval is None:  # resumed a finished run
        last_eval = evaluate(eval_fn, state, test_batches)
    for name, values in last_eval.items():
        final.update(summarise(name, values))
    final["train_time_s"] = round(time.time() - t0, 2)
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump(final, f, indent=2)
    acc = f"test accuracy {final['test_accuracy']:.4f}"
    if config.num_seeds > 1:
        acc += f" ± {final['test_accuracy_std']:.4f} over {config.num_seeds} seeds"
    print_fn(f"done: {acc}; results in {os.path.join(workdir, 'results.json')}")
    return final
