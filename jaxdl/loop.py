"""The training loop every task shares: workdir → restore → compiled steps → logs → eval → checkpoint.

A task (classification in `jaxdl.train`, detection, segmentation) builds its data,
model and step functions and hands them to `run` as a `Run`; the loop owns what
every task must do the same way: one `metrics.jsonl` record per logged step,
evaluation every `eval_every` steps and at the end, checkpoints every
`checkpoint_every` steps and at the end, the divergence guard, and exact resume
(the data order and every random key are functions of (seed, step), so a rerun of
the same command continues where the last checkpoint left off).

Train metrics come from the compiled steps with the step axis last: (steps,) for one
replica, (K, steps) for K vmapped seeds; each logged value is the mean over the
window's steps, then summarised over replicas (mean, and std and per-seed values when
K > 1).
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxdl import data as data_lib
from jaxdl import parallel, progress, validate
from jaxdl import pictures as pictures_lib
from jaxdl.checkpoint import Checkpoints, StateMismatch
from jaxdl.errors import UserError
from jaxdl.tensorboard import EventLog

# Streams derived from a replica's key with fold_in: never reuse one for two purposes.
INIT, DATA, DROPOUT, AUGMENT = 0, 1, 2, 3
# Up to this size a call's batches are gathered before its loop (`scan_steps`).
PREFETCH_BYTES = 64 << 20


class TrainingDiverged(RuntimeError):
    """The loss or gradient became non-finite."""


# ----------------------------------------------------------------------------------
# Steps on a device-resident train set.

def scan_steps(state: Any, data: dict[str, jax.Array], step_fn: Callable, *, batch_size: int, num: int,
               unroll: bool, augment_fn: Callable | None = None,
               constrain: Callable | None = None) -> tuple[Any, dict[str, jax.Array]]:
    """`num` consecutive calls of `step_fn(state, batch)` on minibatches gathered inside jit.

    Step s trains on the rows `jaxdl.data.batch_indices(fold_in(key, DATA), s, N, B)` of
    every array in `data`. The epoch permutations the call needs are drawn once per
    call, not once per step: on the CPU a permutation of a few thousand indices costs
    more than a whole MLP step. So are the call's batches, in one gather before the
    loop, when they fit in `PREFETCH_BYTES` (a gather per step made the MNIST-1D MLP's
    step 1.1× slower). A rolled `lax.scan` helps dispatch-bound small models. On
    XLA:CPU the gradients of plain `lax` convolutions (`flax.linen.Conv`,
    `jaxdl.nn.Conv` with `impl="xla"`) run several times slower inside a loop body than
    at a program's top level; `jaxdl.nn.Conv`'s default `impl="auto"` does not (see
    `jaxdl.nn.conv`), and `unroll=True` avoids it for the others.

    Args:
      state: one replica's state (with `step` and `key`).
      data: the train set, arrays with a leading (N,) axis.
      step_fn: `(state, batch) -> (state, metrics)`.
      batch_size: B.
      num: steps in this call.
      unroll: unroll the loop over steps.
      augment_fn: `(key, batch) -> batch`, with the step's own augmentation key.
      constrain: `batch -> batch`, the sharding of the gathered batch on a device mesh
        (`jaxdl.parallel.Layout.constrain_batch`).

    Returns:
      The new state and the metrics of each step, with a trailing (num,) axis.
    """
    n = jax.tree.leaves(data)[0].shape[0]
    steps_per_epoch = n // batch_size
    span = (steps_per_epoch + num - 2) // steps_per_epoch + 1  # epochs one call can touch
    first_epoch = state.step // steps_per_epoch
    perms = data_lib.epoch_permutations(jax.random.fold_in(state.key, DATA),
                                        first_epoch + jnp.arange(span), n)

    row_bytes = sum(v.dtype.itemsize * v.size // n for v in data.values())  # the arrays gathered below
    if num * batch_size * row_bytes <= PREFETCH_BYTES:
        order = perms[:, :steps_per_epoch * batch_size].reshape(span * steps_per_epoch, batch_size)
        order = jax.lax.dynamic_slice_in_dim(order, state.step - first_epoch * steps_per_epoch, num)
        batches = {k: v[order] for k, v in data.items()}
    else:
        batches = None

    def body(s, batch):
        if batch is None:
            epoch, i = jnp.divmod(s.step, steps_per_epoch)
            idx = jax.lax.dynamic_slice_in_dim(perms[epoch - first_epoch], i * batch_size, batch_size)
            batch = {k: v[idx] for k, v in data.items()}
        if constrain is not None:
            batch = constrain(batch)
        if augment_fn is not None:
            batch = augment_fn(jax.random.fold_in(jax.random.fold_in(s.key, AUGMENT), s.step), batch)
        return step_fn(s, batch)

    # unroll=0 unrolls fully; unroll=num would leave a one-trip while loop when num == 1.
    state, metrics = jax.lax.scan(body, state, batches, length=num, unroll=0 if unroll else 1)
    return state, jax.tree.map(lambda m: jnp.moveaxis(m, 0, -1), metrics)


# ----------------------------------------------------------------------------------
# Config checks and logs.

def check_config(config: ml_collections.ConfigDict, seeds: bool = True) -> None:
    """Raises UserError for the loop's config fields that cannot work (before any work)."""
    validate.check_config(config)
    for field in ("batch_size", "log_every", "eval_every", "checkpoint_every") + (("num_seeds",) if seeds else ()):
        value = config.get(field)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise UserError(f"{field} must be an integer >= 1, got {value!r}")
    if not seeds and config.get("num_seeds", 1) != 1:
        raise UserError(f"the {config.get('task')} task trains one seed; set num_seeds=1 and vary seed instead")
    if not config.get("num_epochs") and (not isinstance(config.get("num_steps"), int) or config.num_steps < 1):
        raise UserError(f"num_steps must be an integer >= 1 (or set num_epochs), got {config.get('num_steps')!r}")
    if config.get("steps_per_call", 1) < 1:
        raise UserError(f"steps_per_call must be >= 1, got {config.steps_per_call}")


def num_train_steps(config: ml_collections.ConfigDict, num_examples: int) -> int:
    """`num_epochs`, when set, wins over `num_steps`: epochs × (N // batch_size)."""
    if config.get("num_epochs"):
        return int(config.num_epochs) * (num_examples // config.batch_size)
    return int(config.num_steps)


def check_batch_size(config: ml_collections.ConfigDict, num_examples: int, what: str = "training examples") -> None:
    if config.batch_size > num_examples:
        raise UserError(f"batch_size {config.batch_size} is larger than the {num_examples} {what} of "
                        f"{config.dataset.name!r}; lower --config.batch_size")


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
            lines = f.read().split("\n")
        records = []
        for i, line in enumerate(lines):
            try:
                if line.strip():
                    records.append(json.loads(line))
            except json.JSONDecodeError as e:
                if i == len(lines) - 1:  # a write cut short by a kill: the rerun writes it again
                    break
                raise UserError(f"{self.path} line {i + 1} is damaged; delete the line (or the file) "
                                f"and rerun") from e
        return records

    def truncate_after(self, step: int) -> None:
        """Drops records after `step`: a resumed run writes them again."""
        records = [r for r in self.read() if r["step"] <= step]
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
        os.replace(tmp, self.path)


def summarise(name: str, values: Any) -> dict[str, Any]:
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


def _fmt_metrics(record: dict) -> str:
    """The record's scalar means as `name value` pairs (no std or per-seed entries)."""
    return "  ".join(f"{k.removeprefix('train_')} {v:.4f}" for k, v in record.items()
                     if isinstance(v, float) and not k.endswith("_std") and k not in ("lr", "step"))


# ----------------------------------------------------------------------------------
# Workdirs.

# Config fields whose change makes a checkpoint unusable: resuming with them changed
# would silently train a different experiment.
_RESUME_KEYS = ("task", "model", "dataset.name", "dataset.image_size", "num_seeds", "seed", "batch_size")


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def changed_fields(config: ml_collections.ConfigDict, workdir: str) -> list[str]:
    """The config fields whose values differ from the workdir's `config.json` (none if it has none)."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        return []
    try:
        with open(path) as f:
            old = _flatten(json.load(f))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is damaged; delete it to resume with this config as it is") from e
    new = _flatten(json.loads(config.to_json()))
    return sorted(k for k in set(new) | set(old) if new.get(k) != old.get(k))


def check_resumable(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Refuses a workdir whose `config.json` differs from `config` in what shapes the run."""
    differ = [k for k in changed_fields(config, workdir)
              if any(k == r or k.startswith(r + ".") for r in _RESUME_KEYS)]
    if differ:
        raise UserError(
            f"workdir {workdir} holds a run with a different config ({', '.join(differ)}); "
            f"use another --workdir or restore the old values")


def latest_step(workdir: str) -> int | None:
    """The newest checkpoint's step in `workdir`, None if there is none (creating nothing)."""
    if not os.path.isdir(os.path.join(workdir, "checkpoints")):
        return None
    ckpts = Checkpoints(workdir)
    step = ckpts.latest_step()
    ckpts.close()
    return step


def restore(ckpts: Checkpoints, step: int, like: Any, config: ml_collections.ConfigDict, workdir: str) -> Any:
    """`ckpts.restore`, naming the config fields behind a state the checkpoint does not hold."""
    try:
        return ckpts.restore(step, like)
    except StateMismatch as e:
        differ = changed_fields(config, workdir)
        if not differ:  # the same config built this state once: the checkpoint changed since
            raise ckpts.damaged(step, e.detail) from e
        raise UserError(f"{e}; the config differs from the run's in {', '.join(differ)}: use another "
                        f"--workdir or restore the old values") from e


def abstract_state(init: Callable[[], Any], shardings: Any = None) -> Any:
    """The shapes and dtypes of `init()`'s state, placed as `shardings` says (default: on the
    first device), without computing it.

    Enough to restore a checkpoint into: compiling a big model's initialisers is among
    the slowest things XLA:CPU does.
    """
    shapes = jax.eval_shape(init)
    if shardings is None:
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        shardings = jax.tree.map(lambda _: device, shapes)
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)


# ----------------------------------------------------------------------------------
# The loop.

@dataclasses.dataclass
class Run:
    """What a task hands the loop.

    Attributes:
      init: `() -> state`, the freshly initialised train state (traced; jit-able).
      num_steps: length of the run.
      make_steps: `num -> f(state, *data) -> (state, metrics)`, `num` steps in one
        compiled call; metrics carry a trailing (num,) axis, including `loss` and
        `grad_norm` (the divergence guard's inputs).
      data: the arguments after `state` of the compiled steps (device arrays), or a
        callable `(step, num) -> arguments` that feeds each call the batches of steps
        `step … step+num-1` (the streaming input path, `jaxdl.data.stream`); its
        `close()`, if it has one, is called when training ends.
      evaluate: `state -> record`, JSON-ready test metrics for `metrics.jsonl`.
      finish: `(state, step) -> results`, the final results (and pictures); by
        default `evaluate`.
      schedule: the learning-rate schedule (logged as `lr`).
      description: what is trained on what, for the first progress line.
      pictures: `state -> paths`, draws the final state's pictures into `W/pictures/`
        (the loop adds the learning curves and sends every picture to TensorBoard).
      shardings: the state's shardings on a device mesh (`jaxdl.parallel`); None on one
        device. The state is initialised and restored straight into them.
    """

    init: Callable[[], Any]
    num_steps: int
    make_steps: Callable[[int], Callable]
    data: Sequence[Any] | Callable[[int, int], Sequence[Any]]
    evaluate: Callable[[Any], dict[str, Any]]
    schedule: Callable[[int], Any]
    description: str
    finish: Callable[[Any, int], dict[str, Any]] | None = None
    pictures: Callable[[Any], Any] | None = None
    shardings: Any = None


def write_atomic(path: str, text: str) -> None:
    """Writes through a temporary file and a rename: a kill leaves the old file or the new one."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _loggable(results: dict) -> dict:
    """The entries of a results dict that go into `metrics.jsonl` (numbers and per-seed lists)."""
    return {k: v for k, v in results.items()
            if k not in ("step", "train_time_s") and isinstance(v, (int, float, list))}


def run(config: ml_collections.ConfigDict, workdir: str, build: Callable[[], Run],
        print_fn: Callable[[str], None] = print) -> dict[str, Any]:
    """Trains what `build()` describes, evaluating, logging and checkpointing; resumes if it can.

    Args:
      config: the experiment config (`batch_size`, `log_every`, `eval_every`,
        `checkpoint_every`, `keep_checkpoints`, `steps_per_call` are the loop's).
      workdir: where `checkpoints/`, `metrics.jsonl`, `config.json` and `results.json` go.
      build: `() -> Run`, called after the workdir is known to be resumable.
      print_fn: where progress lines go.

    Returns:
      The final results (`finish`'s, else `evaluate`'s), with `step` and `train_time_s`;
      also written to `W/results.json`.

    With several processes (`jaxdl.parallel`) every process runs the loop (the steps,
    evaluations and checkpoints are collective); only process 0 prints and writes
    `metrics.jsonl`, TensorBoard events, `config.json`, `results.json` and pictures.
    """
    main = parallel.is_main_process()
    if not main:
        print_fn = lambda *a, **k: None
    # ---------------------------------------------------------------- resumable? (before any work)
    workdir = os.path.abspath(workdir)
    validate.check_workdir(workdir)
    start = latest_step(workdir)
    if start is not None:
        check_resumable(config, workdir)

    # ---------------------------------------------------------------- data, model and optimiser
    r = build()
    finish = r.finish or (lambda state, step: r.evaluate(state))
    if jax.process_count() > 1 and r.shardings is None:
        raise UserError(f"the {config.get('task', 'classification')} task trains in one process; start it without "
                        f"--coordinator_address/--num_processes/--distributed (it uses one device)")

    # ---------------------------------------------------------------- workdir and restore
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create workdir {workdir}: {e.strerror}") from e
    if not os.access(workdir, os.W_OK):
        raise UserError(f"workdir {workdir} is not writable; pass another --workdir")
    ckpts = Checkpoints(workdir, keep=config.get("keep_checkpoints", 3))
    log = MetricsLog(workdir)
    if start is not None:
        state = restore(ckpts, start, abstract_state(r.init, r.shardings), config, workdir)
        if main:
            log.truncate_after(start)
        print_fn(f"resumed from {ckpts.path(start)} at step {start}")
    else:
        state = jax.jit(r.init, out_shardings=r.shardings)()
        start = 0
        if main and os.path.exists(log.path):
            os.remove(log.path)  # a log without a checkpoint belongs to no run we can continue
    if main:
        write_atomic(os.path.join(workdir, "config.json"), config.to_json(indent=2))
        events = EventLog(workdir, log.read())  # TensorBoard's copy of metrics.jsonl, cut back with it

    # ---------------------------------------------------------------- compiled steps
    num_steps = r.num_steps
    # A call never spans more steps than the most frequent log, evaluation or checkpoint,
    # so those come on time whatever `steps_per_call` is.
    every = [config.get(k) for k in ("log_every", "eval_every", "checkpoint_every")]
    chunk = max(1, min(config.get("steps_per_call", 1), num_steps, *(e for e in every if e)))
    step_chunk = r.make_steps(chunk)
    step_one = r.make_steps(1) if chunk > 1 else step_chunk

    # ---------------------------------------------------------------- loop
    print_fn(f"training {r.description}: {num_steps} steps, batch {config.batch_size}, workdir {workdir}")
    bar = progress.Bar(num_steps, initial=int(start), print_fn=print_fn)
    print_fn = bar.print
    pending: list[dict] = []  # per-call metrics still on the device
    fetched: list[dict] = []  # on the host, not yet logged
    step = int(start)
    last_saved = start if start else None
    t_log, s_log, t0 = time.time(), step, time.time()

    def crossed(prev, now, every):
        return now // every > prev // every

    def fetch() -> None:
        """Brings the pending metrics to the host; stops on a non-finite loss or gradient."""
        if not pending:
            return
        metrics = jax.device_get(jax.tree.map(lambda *a: jnp.concatenate(a, axis=-1), *pending))
        pending.clear()
        finite = np.isfinite(metrics["loss"]) & np.isfinite(metrics["grad_norm"])
        if not np.all(finite):
            steps_ok = finite.reshape(-1, finite.shape[-1]).all(0)  # over replicas
            bad = step - len(steps_ok) + 1 + int(np.argmin(steps_ok))
            kept = (f"the last good checkpoint is {ckpts.path(last_saved)} (step {last_saved}), kept; rerun "
                    f"with a lower --config.optim.lr to resume from it" if last_saved
                    else "no checkpoint was written; lower --config.optim.lr")
            raise TrainingDiverged(f"non-finite loss or gradient at step {bad}; {kept}")
        fetched.append(metrics)

    final = None
    while step < num_steps:
        num = chunk if num_steps - step >= chunk else 1
        args = r.data(step, num) if callable(r.data) else r.data
        state, metrics = (step_chunk if num == chunk else step_one)(state, *args)
        pending.append(metrics)
        prev, step = step, step + num
        bar.update(num)
        done = step >= num_steps
        record = {}
        if crossed(prev, step, config.log_every) or done:
            fetch()
            keys = sorted((k for k in fetched[0] if k != "grad_norm"), key=lambda k: k != "loss")
            for k in keys:  # mean over the window's steps, per replica
                record.update(summarise(f"train_{k}", np.concatenate([m[k] for m in fetched], -1).mean(-1)))
            fetched.clear()
            record["lr"] = float(r.schedule(step - 1))
            now = time.time()
            rate = (step - s_log) / max(now - t_log, 1e-9)
            t_log, s_log = now, step
            eta = _fmt_duration((num_steps - step) / max(rate, 1e-9))
            bar.postfix({"loss": record["train_loss"]})
            print_fn(f"step {step}/{num_steps}  {_fmt_metrics(record)}  {rate:.2f} steps/s  ETA {eta}")
        if done:
            final = finish(state, step)
            record.update(_loggable(final))
            print_fn(f"step {step}/{num_steps}  {_fmt_metrics(_loggable(final))}")
        elif crossed(prev, step, config.eval_every):
            evaluated = r.evaluate(state)
            record.update(evaluated)
            print_fn(f"step {step}/{num_steps}  {_fmt_metrics(evaluated)}")
        # The log line goes first: a run killed before its checkpoint completes resumes
        # from the previous checkpoint and drops the lines after it, so none is lost.
        if record and main:
            log.append({"step": step, **record})
            events.write({"step": step, **record})
        if crossed(prev, step, config.checkpoint_every) or done:
            fetch()  # never checkpoint a diverged state
            ckpts.save(step, state)
            last_saved = step
    ckpts.close()
    bar.close()
    getattr(r.data, "close", lambda: None)()

    # ---------------------------------------------------------------- results
    if final is None:  # resumed a finished run: its records are logged already
        final = finish(state, step)
    final = {"step": step, **final, "train_time_s": round(time.time() - t0, 2)}

    # ---------------------------------------------------------------- pictures (after the clock stops)
    if jax.process_count() > 1:  # every process takes part; process 0 then draws from host arrays
        state = parallel.to_host(state)
    path = os.path.join(workdir, "results.json")
    if main:
        pictures = os.path.join(workdir, "pictures")
        if r.pictures is not None:
            r.pictures(state)
        pictures_lib.learning_curves(log.read(), os.path.join(pictures, "learning_curves.png"))
        events.pictures(step, pictures)
        write_atomic(path, json.dumps(final, indent=2))
    print_fn(f"done: {_fmt_metrics(_loggable(final))}; results in {path}")
    return final


def restore_latest(workdir: str, init: Callable[[], Any], shardings: Any = None) -> Any:
    """The latest checkpoint in `workdir`, restored into `init`'s structure.

    Raises:
      UserError: `workdir` holds no checkpoint.
    """
    step = latest_step(workdir)
    if step is None:
        raise UserError(f"no checkpoint in {workdir}; train first (--mode=train) or pass the run's --workdir")
    ckpts = Checkpoints(workdir)
    state = ckpts.restore(step, abstract_state(init, shardings))
    ckpts.close()
    return state


def evaluate_workdir(config: ml_collections.ConfigDict, workdir: str, init: Callable[[], Any],
                     finish: Callable[[Any, int], dict[str, Any]],
                     print_fn: Callable[[str], None] = print, shardings: Any = None) -> dict[str, Any]:
    """Restores the latest checkpoint in `workdir` into `init`'s structure (and `shardings`) and scores it.

    Writes `W/eval.json` with `finish(state, step)` and the step (process 0).
    """
    workdir = os.path.abspath(workdir)
    step = latest_step(workdir)
    if step is None:
        raise UserError(f"no checkpoint in {workdir}; train first (--mode=train) or pass the run's --workdir")
    check_resumable(config, workdir)
    ckpts = Checkpoints(workdir)
    state = restore(ckpts, step, abstract_state(init, shardings), config, workdir)
    ckpts.close()
    result = {"step": step, **finish(state, step)}
    if parallel.is_main_process():
        write_atomic(os.path.join(workdir, "eval.json"), json.dumps(result, indent=2))
        print_fn(f"step {step}: {_fmt_metrics(_loggable(result))}")
    return result
