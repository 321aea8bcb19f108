"""Scaling out on JAX's own engine: a device mesh, sharded batches and state, several hosts, mixed precision.

A run on more than one device trains on a `jax.sharding.Mesh` with two axes:

- `data`: the batch is split over it; the train state is replicated along it;
- `fsdp`: the batch is split over it too, and each array of the train state is
  split along it (FSDP-style: its largest axis that the axis size divides; arrays
  with no such axis stay replicated). Size 1 (the default) replicates the state.

The batch axis is split over both (`data` × `fsdp` = every device), so the global
batch `batch_size` must be a multiple of the device count. The train step is the
single-device one, compiled with `jax.jit` and explicit in/out shardings; XLA's SPMD
partitioner inserts the collectives: gradients, batch-norm statistics and metrics are
reduced over the whole global batch exactly as on one device (to float rounding).

Config fields (all optional; a config without them trains on every device):

- `parallel.devices`: how many devices the mesh takes, the first ones (0: all).
- `parallel.fsdp`: the size of the `fsdp` axis (default 1: the state is replicated).
- `precision`: `float32` (default), `bfloat16` (bfloat16 compute, float32 parameters
  and optimiser state) or `float16` (the same with dynamic loss scaling:
  `flax.training.dynamic_scale`; a step whose gradients are not finite is skipped and
  the scale halved).

Several processes (hosts) join with `initialize` (the launcher's `--coordinator_address`,
`--num_processes`, `--process_id`, or `--distributed` for a cluster JAX detects by
itself: TPU pods, SLURM, Open MPI). The mesh then spans every process's devices; each
process reads only its share of every batch (`Layout.share`), and only process 0
writes logs, metrics files and pictures. Checkpoints are written and restored by all
processes together (Orbax).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxdl.errors import UserError, unknown_name

DATA, FSDP = "data", "fsdp"
BATCH = (DATA, FSDP)  # the batch axis is split over every device of the mesh
PRECISIONS = {"float32": None, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


# ----------------------------------------------------------------------------------
# Several processes.

def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, timeout_s: int = 300) -> None:
    """Joins this process to the others with `jax.distributed.initialize` (before any JAX computation).

    With no arguments JAX detects the cluster itself (TPU pods, SLURM, Open MPI). On
    the CPU the processes talk through gloo collectives.
    """
    given = [coordinator_address is not None, num_processes is not None, process_id is not None]
    if any(given) and not all(given):
        raise UserError("a multi-process launch needs all three of --coordinator_address, --num_processes and "
                        "--process_id (or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID), or "
                        "--distributed alone on a cluster JAX detects (TPU pod, SLURM, Open MPI)")
    if num_processes is not None and not (num_processes >= 1 and 0 <= process_id < num_processes):
        raise UserError(f"--process_id must be in [0, --num_processes), got process {process_id} of {num_processes}")
    try:
        jax.distributed.initialize(coordinator_address, num_processes, process_id,
                                   initialization_timeout=timeout_s)
    except (RuntimeError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"cannot join the other processes ({first}); check the coordinator's address and "
                        f"port, and that every process was started with the same --num_processes") from e


def is_main_process() -> bool:
    """True in the process that writes logs, metrics files and pictures (process 0)."""
    return jax.process_index() == 0


# ----------------------------------------------------------------------------------
# Mesh and shardings.

@dataclasses.dataclass(frozen=True)
class Layout:
    """The mesh of a run on several devices and the shardings of its arrays."""

    mesh: Mesh

    @property
    def num_devices(self) -> int:
        return self.mesh.devices.size

    @property
    def fsdp(self) -> int:
        return self.mesh.shape[FSDP]

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, P())

    def batch(self, axis: int = 0) -> NamedSharding:
        """Arrays whose axis `axis` is the batch: split over every device."""
        return NamedSharding(self.mesh, P(*([None] * axis), BATCH))

    def state(self, abstract: Any) -> Any:
        """The sharding of each leaf of a train state (with its leading seed axis K).

        Replicated when `fsdp` is 1; else each leaf is split over `fsdp` along its
        largest axis after the seed axis that `fsdp` divides (ties: the last such axis).
        """
        def leaf(x):
            shape = getattr(x, "shape", ())
            axes = [i for i in range(1, len(shape)) if shape[i] % self.fsdp == 0 and shape[i] >= self.fsdp]
            if self.fsdp == 1 or not axes:
                return self.replicated
            best = max(axes, key=lambda i: (shape[i], i))
            return NamedSharding(self.mesh, P(*([None] * best), FSDP))

        return jax.tree.map(leaf, abstract)

    def constrain_batch(self, tree: Any) -> Any:
        """Inside jit: the leading axis of every leaf split over the devices."""
        return jax.tree.map(lambda a: jax.lax.with_sharding_constraint(a, self.batch()), tree)

    def replicate(self, tree: Any) -> Any:
        """Host arrays (the same in every process) → global arrays held whole by every device."""
        return jax.tree.map(lambda a: jax.make_array_from_process_local_data(self.replicated, np.asarray(a)), tree)

    def share(self, size: int) -> tuple[int, int]:
        """[lo, hi): the rows of a batch of `size` that this process's devices hold (and so reads)."""
        rows = [idx[0] for idx in self.batch().addressable_devices_indices_map((size,)).values()]
        lo = min(r.start or 0 for r in rows)
        hi = max(size if r.stop is None else r.stop for r in rows)
        return lo, hi

    def put_batch(self, local: Any, axis: int, size: int) -> Any:
        """This process's rows [lo, hi) of a batch of `size` along `axis` → the global batch, split over devices."""
        sharding = self.batch(axis)

        def put(a):
            a = np.asarray(a)
            shape = (*a.shape[:axis], size, *a.shape[axis + 1:])
            return jax.make_array_from_process_local_data(sharding, a, shape)

        return jax.tree.map(put, local)


def _field(config: ml_collections.ConfigDict, name: str, default: Any) -> Any:
    section = config.get("parallel") or {}
    value = section.get(name, default)
    return default if value is None else value


def check_config(config: ml_collections.ConfigDict) -> None:
    """Raises UserError for parallel or precision fields that cannot work (no devices needed)."""
    for name, minimum in (("devices", 0), ("fsdp", 1)):
        value = _field(config, name, minimum)
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise UserError(f"parallel.{name} must be an integer >= {minimum}, got {value!r}")
    precision = config.get("precision") or "float32"
    if precision not in PRECISIONS:
        raise unknown_name("precision", str(precision), list(PRECISIONS), "precision")


def layout(config: ml_collections.ConfigDict, batch_sizes: dict[str, int] | None = None) -> Layout | None:
    """The run's mesh, or None for a run on one device (which then compiles as it always has).

    `batch_sizes`: {field: size} of the batches that must split evenly over the devices.
    """
    check_config(config)
    devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
    wanted, fsdp = _field(config, "devices", 0), _field(config, "fsdp", 1)
    n = wanted or len(devices)
    if n > len(devices):
        raise UserError(f"parallel.devices is {n}, but JAX sees {len(devices)} device(s); lower it, or 0 for all")
    if jax.process_count() > 1 and n != len(devices):
        raise UserError(f"with {jax.process_count()} processes the mesh spans all {len(devices)} devices; "
                        f"set parallel.devices=0")
    if n % fsdp:
        raise UserError(f"parallel.fsdp {fsdp} does not divide the {n} devices; choose a divisor of {n}")
    if n == 1:
        return None
    for field, size in (batch_sizes or {}).items():
        if size % n:
            raise UserError(f"{field} {size} does not split over {n} devices; use a multiple of {n} "
                            f"(or set parallel.devices)")
    return Layout(Mesh(np.asarray(devices[:n]).reshape(n // fsdp, fsdp), (DATA, FSDP)))


def describe(config: ml_collections.ConfigDict) -> str:
    """The run's devices, mesh and precision, for the first progress line."""
    lay = layout(config)
    where = "1 device" if lay is None else (
        f"{lay.num_devices} devices (mesh data={lay.mesh.shape[DATA]} × fsdp={lay.fsdp}"
        + (f", {jax.process_count()} processes" if jax.process_count() > 1 else "") + ")")
    return f"{where}, {config.get('precision') or 'float32'}"


# ----------------------------------------------------------------------------------
# Mixed precision.

def compute_dtype(config: ml_collections.ConfigDict):
    """The dtype of the forward and backward pass (None: float32, no casts)."""
    return PRECISIONS[config.get("precision") or "float32"]


def cast(tree: Any, dtype) -> Any:
    """Floating leaves of `tree` cast to `dtype` (integers, keys and None as they are)."""
    if dtype is None:
        return tree
    return jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)


def env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise UserError(f"${name} must be an integer, got {value!r}") from None


def host_array(a: Any) -> np.ndarray:
    """An array's whole value on this host. One spread over several processes is gathered:
    a collective, so every process must ask for it."""
    if isinstance(a, jax.Array) and not a.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(a, tiled=True))
    return np.asarray(jax.device_get(a))


def to_host(tree: Any) -> Any:
    """A tree of global arrays as NumPy arrays, whole in every process (`host_array` of each leaf)."""
    return jax.tree.map(lambda a: host_array(a) if isinstance(a, jax.Array) else a, tree)


def default_config() -> ml_collections.ConfigDict:
    """The `parallel` section of a config: every device, the state replicated."""
    return ml_collections.ConfigDict({"devices": 0, "fsdp": 1})
