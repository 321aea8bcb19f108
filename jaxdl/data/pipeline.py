"""Input pipeline: TFDS data source → arrays in memory → minibatches drawn inside jit.

Offline datasets (`digits`, `mnist1d`, `mnist1d/shuffled`) are prepared from installed
packages on first use; catalogue datasets (mnist, cifar10, …) are read through
`tfds.data_source` and downloaded only when `dataset.download` is true.

The order of the data is a pure function of (data key, step): the epoch's permutation
is `permutation(fold_in(key, epoch))`, so a resumed run draws exactly the batches an
uninterrupted run would.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow_datasets as tfds

from jaxdl import progress
from jaxdl.data.builders import OFFLINE_BUILDERS
from jaxdl.errors import UserError, unknown_name

# Scale of uint8 pixels per dataset: digits count 0–16 set pixels, images count 0–255.
_PIXEL_MAX = {"digits": 16.0}


@dataclasses.dataclass(frozen=True)
class ArrayDataset:
    """One split held in memory.

    Attributes:
      x: inputs, float32 (N, ...): images (N, H, W, C) in [0, 1], signals (N, W, 1).
      y: integer labels (N,).
      num_classes: K.
      name: dataset name as configured.
    """

    x: np.ndarray
    y: np.ndarray
    num_classes: int
    name: str

    def __len__(self) -> int:
        return len(self.y)


def data_dir(config_dir: str | None = None) -> str:
    """The TFDS data dir: the config's, else `$TFDS_DATA_DIR`, else TFDS's default."""
    if config_dir:
        return os.path.expanduser(config_dir)
    return os.environ.get("TFDS_DATA_DIR", os.path.expanduser("~/tensorflow_datasets"))


def _offline_builder(name: str, directory: str) -> tfds.core.DatasetBuilder:
    base, _, variant = name.partition("/")
    cls = OFFLINE_BUILDERS[base]
    kwargs = {"data_dir": directory, "file_format": "array_record"}
    if variant:
        names = [c.name for c in cls.BUILDER_CONFIGS]
        if variant not in names:
            raise unknown_name("dataset", name, offline_names(), "dataset.name")
        kwargs["config"] = variant
    try:
        os.makedirs(directory, exist_ok=True)  # fails before TFDS logs about the folder it cannot make
        builder = cls(**kwargs)
        if not builder.is_prepared():
            # TFDS writes into an `incomplete.*` folder and renames it when done, so an
            # interrupted preparation leaves nothing that a rerun would mistake for data.
            with progress.tfds_bars():
                builder.download_and_prepare(file_format="array_record")
    except OSError as e:
        raise UserError(f"cannot prepare dataset {name!r} in {directory}: {e.strerror or e}; set "
                        f"--config.dataset.data_dir (or $TFDS_DATA_DIR) to a writable folder") from e
    return builder


def offline_names() -> list[str]:
    """Every offline dataset name, variants included (e.g. `mnist1d/shuffled`)."""
    names = []
    for base, cls in sorted(OFFLINE_BUILDERS.items()):
        configs = [c.name for c in cls.BUILDER_CONFIGS or []]
        names += [base] + [f"{base}/{c}" for c in configs if c != "default"]
    return names


def is_offline(name: str) -> bool:
    return name.partition("/")[0] in OFFLINE_BUILDERS


def data_source(name: str, split: str, directory: str | None = None,
                download: bool = False) -> tuple[Any, tfds.core.DatasetInfo]:
    """A random-access TFDS data source for `name`/`split`, plus the dataset's info."""
    directory = data_dir(directory)
    if is_offline(name):
        builder = _offline_builder(name, directory)
        return builder.as_data_source(split=split), builder.info
    try:
        builder = tfds.builder(name, data_dir=directory, file_format="array_record")
    except tfds.core.registered.DatasetNotFoundError as e:
        raise UserError(f"unknown dataset {name!r} (dataset.name); offline datasets: "
                        f"{', '.join(offline_names())}, or a TFDS catalogue name") from e
    if download and not builder.is_prepared():
        with progress.tfds_bars():
            builder.download_and_prepare(file_format="array_record")
    try:
        # Fails at once when nothing is prepared; TFDS's own download path would retry
        # for minutes on a machine without internet.
        source = builder.as_data_source(split=split)
    except KeyError as e:
        if builder.info.splits:
            raise UserError(f"dataset {name!r} has no split {split!r}; splits: "
                            f"{', '.join(builder.info.splits)}") from e
        raise UserError(
            f"dataset {name!r} is not prepared in {directory} and downloading is off; "
            f"run once with --config.dataset.download=True on a machine with internet, "
            f"or use an offline dataset ({', '.join(offline_names())})") from e
    info = builder.info
    return source, info


def load(name: str, split: str, directory: str | None = None, download: bool = False,
         image_size: int | None = None) -> ArrayDataset:
    """Reads a whole split into memory as float32 inputs and integer labels.

    Args:
      name: dataset name, e.g. `digits`, `mnist1d/shuffled`, `mnist`.
      split: TFDS split, e.g. `train`, `test`, `train[:10%]`.
      directory: TFDS data dir (see `data_dir`).
      download: allow TFDS to download a catalogue dataset.
      image_size: if set, images are resized (bilinear) to this square size.
    """
    source, info = data_source(name, split, directory, download)
    if info.supervised_keys is None:
        raise UserError(f"dataset {name!r} has no (input, label) pair; it cannot be used for classification")
    x_key, y_key = info.supervised_keys
    n = len(source)
    if n == 0:
        raise UserError(f"split {split!r} of dataset {name!r} is empty")
    try:
        examples = source.__getitems__(list(range(n)))
    except TypeError:  # tfds.testing.mock_data's sources read one record at a time
        examples = [source[i] for i in range(n)]
    x = np.stack([np.asarray(e[x_key]) for e in examples])
    y = np.asarray([e[y_key] for e in examples], dtype=np.int32)
    if x.dtype == np.uint8:
        x = x.astype(np.float32) / _PIXEL_MAX.get(name.partition("/")[0], 255.0)
    x = x.astype(np.float32)
    if x.ndim == 2:  # signals (N, W) → (N, W, 1), channels last like images
        x = x[:, :, None]
    if image_size is not None:
        if x.ndim != 4:
            raise UserError(f"dataset.image_size applies to images; {name!r} has inputs of shape {x.shape[1:]}")
        x = np.asarray(jax.image.resize(x, (n, image_size, image_size, x.shape[-1]), "bilinear"))
    num_classes = info.features[y_key].num_classes
    return ArrayDataset(x=x, y=y, num_classes=num_classes, name=name)


def _sort_rounds(num_examples: int) -> int:
    """How many sorts `jax.random.permutation` makes for N elements (its heuristic)."""
    return int(np.ceil(3 * np.log(max(1, num_examples)) / np.log(np.iinfo(np.uint32).max)))


def _round_bits(key: jax.Array, num_examples: int) -> jax.Array:
    """The (R, N) random sort keys `jax.random.permutation(key, N)` draws, one row per sort."""
    rows = []
    for _ in range(_sort_rounds(num_examples)):
        key, subkey = jax.random.split(key)
        rows.append(jax.random.bits(subkey, (num_examples,), jnp.uint32))
    return jnp.stack(rows) if rows else jnp.zeros((0, num_examples), jnp.uint32)


def _host_sorts(bits: np.ndarray, dtype: Any) -> np.ndarray:
    """(..., R, N) sort keys -> (..., N) indices: R stable sorts of arange(N), on the host."""
    bits = np.asarray(bits)
    idx = np.broadcast_to(np.arange(bits.shape[-1], dtype=dtype), bits.shape[:-2] + bits.shape[-1:])
    for r in range(bits.shape[-2]):
        # sort_key_val(keys, idx) on a stable sort moves idx[j] to the rank of keys[j].
        idx = np.take_along_axis(idx, np.argsort(bits[..., r, :], axis=-1, kind="stable"), -1)
    return idx


def epoch_permutations(key: jax.Array, epochs: jax.Array, num_examples: int) -> jax.Array:
    """The shuffled order of each epoch in `epochs` (E,): (E, N) indices.

    Row e is `jax.random.permutation(fold_in(key, e), N)`, element for element. On the
    CPU the sorts behind it run in NumPy instead: XLA:CPU's sort was about 20 % of the
    MNIST-1D MLP's train step (each call of 250 steps draws 8 permutations of 4,000,
    each two sorts), NumPy's about a quarter of that. Elsewhere the sorts stay on the
    device.
    """
    keys = jax.vmap(lambda e: jax.random.fold_in(key, e))(jnp.asarray(epochs))

    def device(keys):
        return jax.vmap(lambda k: jax.random.permutation(k, num_examples))(keys)

    def cpu(keys):
        bits = jax.vmap(lambda k: _round_bits(k, num_examples))(keys)
        dtype = jnp.arange(0).dtype  # permutation's: int64 with jax_enable_x64
        out = jax.ShapeDtypeStruct(bits.shape[:-2] + (num_examples,), dtype)
        return jax.pure_callback(functools.partial(_host_sorts, dtype=dtype), out, bits,
                                 vmap_method="broadcast_all")

    return jax.lax.platform_dependent(keys, cpu=cpu, default=device)


def batch_indices(key: jax.Array, step: jax.Array, num_examples: int, batch_size: int) -> jax.Array:
    """Indices (B,) of the minibatch at `step`: epoch-wise shuffling without replacement.

    The definition of the data order; the train loop computes the same indices with
    the permutations of several steps drawn at once. The last partial batch of each
    epoch is dropped, so every batch has `batch_size` rows and the step compiles once.
    """
    steps_per_epoch = num_examples // batch_size
    epoch, i = jnp.divmod(step, steps_per_epoch)
    perm = epoch_permutations(key, epoch[None], num_examples)[0]
    return jax.lax.dynamic_slice_in_dim(perm, i * batch_size, batch_size)
