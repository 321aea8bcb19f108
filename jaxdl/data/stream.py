"""Streaming input: examples read from a TFDS data source by index, preprocessed on the host, prefetched to the device.

For datasets too big for `jaxdl.data.load` (ImageNet's 1.28M training images would
take ~770 GB as float32). The host reads each minibatch's records from
`tfds.data_source` (array_record, random access), decodes and crops them in
parallel with grain (threads, or processes with `processes > 0`), batches them in
the stored dtype (uint8 for images: 4× less to transfer than float32) and puts them
on the device ahead of the step that needs them. Normalisation happens on the
device, inside the compiled step.

The data order is the device-resident path's: step s of replica k reads the rows
`jaxdl.data.batch_indices(data_key_k, s, N, B)`, the epoch's permutation computed
once per epoch on the host. Random crops and flips draw from a NumPy generator
seeded by (the replica's augmentation key, step, position in the batch), so every
batch is a pure function of (seed, step): a resumed run reads exactly what an
uninterrupted one would, whatever the number of threads or processes.

Glossary: K replicas (seeds), B batch size, N examples, H, W, C image axes.
"""
from __future__ import annotations

import dataclasses
import math
import queue
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from PIL import Image

from jaxdl.data.pipeline import epoch_permutations

CROPS = ("inception", "random", "center", "none")


# ----------------------------------------------------------------------------------
# Host preprocessing of one (H, W, C) image.

def example_rng(key_data: Sequence[int], step: int, position: int) -> np.random.Generator:
    """The generator of one example's random crop and flip: a pure function of its arguments."""
    return np.random.default_rng(np.random.SeedSequence([*map(int, key_data), int(step), int(position)]))


def resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear (antialiased when shrinking, as PIL does) resize of a uint8 (H, W, C) image."""
    if image.shape[:2] == (height, width):
        return image
    if image.shape[2] == 3:
        return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))
    # PIL has no mode for other channel counts: one greyscale plane at a time.
    return np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(image[:, :, c])).resize(
        (width, height), Image.BILINEAR)) for c in range(image.shape[2])], axis=-1)


def resize_shorter(image: np.ndarray, size: int) -> np.ndarray:
    """Resizes (H, W, C) so that its shorter side is `size`, keeping the aspect ratio."""
    h, w = image.shape[:2]
    if h <= w:
        return resize(image, size, max(size, round(w * size / h)))
    return resize(image, max(size, round(h * size / w)), size)


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """The central (size, size) window of an (H, W, C) image with H, W >= size (odd margins: one more below/right)."""
    h, w = image.shape[:2]
    if h < size or w < size:
        raise ValueError(f"a {size}×{size} crop does not fit in a {h}×{w} image")
    top, left = (h - size) // 2, (w - size) // 2
    return image[top:top + size, left:left + size]


def random_crop(rng: np.random.Generator, image: np.ndarray, size: int) -> np.ndarray:
    """A (size, size) window at a uniformly random position of an (H, W, C) image with H, W >= size."""
    h, w = image.shape[:2]
    if h < size or w < size:
        raise ValueError(f"a {size}×{size} crop does not fit in a {h}×{w} image")
    top, left = rng.integers(0, h - size + 1), rng.integers(0, w - size + 1)
    return image[top:top + size, left:left + size]


def inception_box(rng: np.random.Generator, height: int, width: int, area: tuple[float, float] = (0.08, 1.0),
                  aspect: tuple[float, float] = (3 / 4, 4 / 3), attempts: int = 10) -> tuple[int, int, int, int]:
    """The window of GoogLeNet's random-resized ("Inception") crop: (top, left, h, w).

    Up to `attempts` draws of an area fraction uniform in `area` and an aspect ratio
    w/h log-uniform in `aspect`, the first that fits at a uniform position; if none
    fits, the centred largest window whose aspect ratio is clipped to `aspect`
    (torchvision's `RandomResizedCrop`, the reference ResNet recipe).
    """
    log_lo, log_hi = math.log(aspect[0]), math.log(aspect[1])
    for _ in range(attempts):
        target = height * width * rng.uniform(area[0], area[1])
        ratio = math.exp(rng.uniform(log_lo, log_hi))
        w, h = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    ratio = width / height
    if ratio < aspect[0]:
        w, h = width, max(1, min(height, round(width / aspect[0])))
    elif ratio > aspect[1]:
        w, h = max(1, min(width, round(height * aspect[1]))), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def random_resized_crop(rng: np.random.Generator, image: np.ndarray, size: int,
                        area: tuple[float, float] = (0.08, 1.0),
                        aspect: tuple[float, float] = (3 / 4, 4 / 3)) -> np.ndarray:
    """An `inception_box` window of an (H, W, C) image, resized to (size, size)."""
    top, left, h, w = inception_box(rng, image.shape[0], image.shape[1], area, aspect)
    return resize(image[top:top + h, left:left + w], size, size)


@dataclasses.dataclass(frozen=True)
class Preprocess:
    """Host preprocessing of one example's image: a crop to (size, size), then a random flip.

    Attributes:
      crop: `inception` (random-resized crop straight from the decoded image),
        `random` (shorter side resized to a size drawn from `scale`, then a random
        window), `center` (shorter side resized to `resize`, then the central
        window: the evaluation crop) or `none` (images as stored; `size` is None).
      size: side of the square output, None for `none`.
      resize: shorter side before a `center` crop.
      scale: (lo, hi), the shorter side of a `random` crop, uniform in lo..hi.
      flip: mirror left–right with probability ½.
      area, aspect: the `inception` crop's ranges (area fraction; w/h).
    """

    crop: str = "none"
    size: int | None = None
    resize: int | None = None
    scale: tuple[int, int] | None = None
    flip: bool = False
    area: tuple[float, float] = (0.08, 1.0)
    aspect: tuple[float, float] = (3 / 4, 4 / 3)

    @property
    def random(self) -> bool:
        return self.flip or self.crop in ("inception", "random")

    def __call__(self, image: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
        if self.crop == "inception":
            image = random_resized_crop(rng, image, self.size, self.area, self.aspect)
        elif self.crop == "random":
            lo, hi = self.scale
            image = random_crop(rng, resize_shorter(image, int(rng.integers(lo, hi + 1))), self.size)
        elif self.crop == "center":
            image = center_crop(resize_shorter(image, self.resize), self.size)
        if self.flip and rng.random() < 0.5:
            image = image[:, ::-1]
        return np.ascontiguousarray(image)


# ----------------------------------------------------------------------------------
# Reading examples (runs in grain's threads or worker processes: NumPy and PIL only, no JAX).

@dataclasses.dataclass(frozen=True)
class _TrainRows:
    """Rows of one epoch's stream: row r is step r // (K·b), replica (r // b) % K, position lo + r % b,
    where [lo, hi) are the positions of each batch this process reads and b = hi - lo."""

    source: Any
    x_key: str
    y_key: str
    perms: np.ndarray  # (K, N): the epoch's order of each replica
    key_data: np.ndarray  # (K, 2): each replica's augmentation key
    batch_size: int
    first_step: int  # the global step of row 0
    first_row: int  # row 0's position in the epoch's permutation
    preprocess: Preprocess
    share: tuple[int, int]  # [lo, hi): the positions of each batch read here

    def __call__(self, rows: range) -> tuple[np.ndarray, np.ndarray]:
        b, k_num = self.batch_size, self.perms.shape[0]
        lo, hi = self.share
        xs, ys = [], []
        for r in rows:
            s, rest = divmod(r, k_num * (hi - lo))
            k, p = divmod(rest, hi - lo)
            p += lo
            record = self.source[int(self.perms[k, self.first_row + s * b + p])]
            rng = example_rng(self.key_data[k], self.first_step + s, p) if self.preprocess.random else None
            xs.append(self.preprocess(np.asarray(record[self.x_key]), rng))
            ys.append(record[self.y_key])
        return np.stack(xs), np.asarray(ys, np.int32)


@dataclasses.dataclass(frozen=True)
class _EvalRows:
    """Rows of the padded evaluation split; rows past the end repeat row 0, masked out."""

    source: Any
    x_key: str
    y_key: str
    num_examples: int
    preprocess: Preprocess

    def __call__(self, rows: range) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        records = [self.source[r if r < self.num_examples else 0] for r in rows]
        return (np.stack([self.preprocess(np.asarray(rec[self.x_key]), None) for rec in records]),
                np.asarray([rec[self.y_key] for rec in records], np.int32),
                np.asarray([r < self.num_examples for r in rows], np.float32))


@dataclasses.dataclass(frozen=True)
class _Shared:
    """This process's rows of batches of `batch` rows: positions [lo, hi) of each."""

    read: Any
    batch: int
    lo: int
    hi: int

    def __call__(self, rows: range):
        width = self.hi - self.lo
        return self.read([(r // width) * self.batch + self.lo + r % width for r in rows])


@dataclasses.dataclass(frozen=True)
class _Chunk:
    """Element e: rows of chunk e % C of batch e // C (C chunks per batch, the last one shorter)."""

    read: Any
    batch: int
    chunk: int

    def __call__(self, e: int):
        per_batch = -(-self.batch // self.chunk)
        b, c = divmod(int(e), per_batch)
        lo = b * self.batch + c * self.chunk
        return self.read(range(lo, min(lo + self.chunk, (b + 1) * self.batch)))


def _concatenate(chunks):
    return tuple(np.concatenate(parts) for parts in zip(*chunks))


# grain's cost per element (~0.1–0.5 ms here) is paid per chunk of rows, not per row,
# while the chunks of one batch still run in parallel.
CHUNK = 16


def _batches(read, num_batches: int, batch: int, threads: int, processes: int, chunk: int = CHUNK) -> Iterator:
    """`num_batches` batches of `batch` rows, `read(rows)` mapped over chunks of rows in `threads`
    threads (in each of `processes` worker processes), in order."""
    chunk = max(1, min(chunk, batch))
    per_batch = -(-batch // chunk)
    ds = grain.MapDataset.range(num_batches * per_batch).map(_Chunk(read, batch, chunk))
    buffer = 2 * per_batch  # two batches ahead
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=max(threads, 1), prefetch_buffer_size=buffer))
    if processes > 0:
        if not flags.FLAGS.is_parsed():  # grain's workers read its absl flags; the Python API parses none
            flags.FLAGS.mark_as_parsed()
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=processes, per_worker_buffer_size=buffer))
    return iter(it.batch(per_batch, batch_fn=_concatenate))


# ----------------------------------------------------------------------------------
# Training batches.

_DONE = object()


class TrainStream:
    """`(step, num) -> (x, y)`: the batches of steps `step … step+num-1`, on the device.

    Hand it to `jaxdl.loop.Run` as `data`. A background thread keeps `prefetch`
    steps ready on the device; a call for another step than the next one (a resumed
    run) restarts the stream there. Close it when done.

    Args:
      source: a random-access data source (`tfds.data_source`) of N records.
      x_key, y_key: the record's input and label.
      data_keys: (K,) PRNG keys; replica k's epoch e is
        `jaxdl.data.epoch_permutations(data_keys[k], [e], N)[0]`.
      augment_keys: (K,) PRNG keys of the replicas' crops and flips.
      batch_size: B.
      num_steps: the stream ends after this step.
      preprocess: the host preprocessing of each example.
      threads, processes: grain's parallelism (processes 0: threads of this process).
      prefetch: steps put on the device ahead of the one being trained.
      layout: a device mesh (`jaxdl.parallel.Layout`): the batches are split over its
        devices, and this process reads only the rows its devices hold.

    Returns (per call): x (K, num, B, ...) in the stored dtype, y (K, num, B) int32.
    """

    def __init__(self, source, x_key: str, y_key: str, data_keys: jax.Array, augment_keys: jax.Array,
                 batch_size: int, num_steps: int, preprocess: Preprocess, threads: int = 8,
                 processes: int = 0, prefetch: int = 2, device: jax.Device | None = None, layout: Any = None):
        self.source, self.x_key, self.y_key = source, x_key, y_key
        self.num_examples = len(source)
        self.data_keys = data_keys
        self.key_data = np.asarray(jax.random.key_data(augment_keys), np.uint32).reshape(len(augment_keys), -1)
        self.batch_size, self.num_steps = batch_size, num_steps
        self.steps_per_epoch = self.num_examples // batch_size
        self.preprocess = preprocess
        self.threads, self.processes, self.prefetch = threads, processes, max(prefetch, 1)
        self.device = device or jax.local_devices()[0]
        self.layout = layout
        self.share = layout.share(batch_size) if layout is not None else (0, batch_size)
        self._cpu = jax.local_devices(backend="cpu")[0]
        self._permute = None
        self._thread: threading.Thread | None = None
        self._queue: queue.Queue | None = None
        self._stop = threading.Event()
        self._next = None  # the step the queue's head belongs to

    # The permutation must be the device path's bit for bit; it is computed with the
    # same function, on the host's CPU so the accelerator never waits on it.
    def permutations(self, epoch: int) -> np.ndarray:
        """(K, N) int32: each replica's order of `epoch`."""
        if self._permute is None:
            n = self.num_examples
            self._permute = jax.jit(jax.vmap(lambda k, e: epoch_permutations(k, e[None], n)[0], in_axes=(0, None)))
        keys = jax.device_put(self.data_keys, self._cpu)
        return np.asarray(self._permute(keys, jax.device_put(np.int32(epoch), self._cpu)), np.int32)

    def host_batches(self, start: int, stop: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """This process's rows of the batches of steps `start`, `start+1`, … (before `stop`):
        x (K, b, ...), y (K, b), with b = B on one process."""
        stop = self.num_steps if stop is None else stop
        k_num, b = len(self.key_data), self.batch_size
        width = self.share[1] - self.share[0]
        step = start
        # One grain pipeline per epoch: the epoch's permutation travels with it into the
        # worker processes, which run no JAX (on an accelerator host JAX there would grab the device).
        while step < stop:
            epoch, first = divmod(step, self.steps_per_epoch)
            count = min(self.steps_per_epoch - first, stop - step)
            read = _TrainRows(self.source, self.x_key, self.y_key, self.permutations(epoch), self.key_data,
                              b, step, first * b, self.preprocess, self.share)
            it = _batches(read, count, k_num * width, self.threads, self.processes)
            try:
                for x, y in it:
                    yield x.reshape(k_num, width, *x.shape[1:]), y.reshape(k_num, width)
            finally:
                getattr(it, "close", lambda: None)()
            step += count

    def _produce(self, start: int, q: queue.Queue, stop: threading.Event) -> None:
        batches = self.host_batches(start)
        try:
            for x, y in batches:
                item = (x[:, None], y[:, None])  # a step axis of 1
                if self.layout is None:
                    item = jax.device_put(item, self.device)
                else:
                    item = self.layout.put_batch(item, 2, self.batch_size)
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        pass
                if stop.is_set():
                    return
        except Exception as e:  # re-raised in the training thread
            q.put(e)
        finally:
            batches.close()  # closes grain's iterator (and its worker processes)
        q.put(_DONE)

    def _restart(self, step: int) -> None:
        self.close()
        self._stop = threading.Event()
        self._queue = queue.Queue(maxsize=self.prefetch)
        self._thread = threading.Thread(target=self._produce, args=(step, self._queue, self._stop), daemon=True,
                                        name="jaxdl-stream")
        self._thread.start()
        self._next = step

    def __call__(self, step: int, num: int = 1):
        if step != self._next or self._thread is None:
            self._restart(step)
        items = []
        for _ in range(num):
            item = self._queue.get()
            if isinstance(item, Exception):
                self.close()
                raise item
            if item is _DONE:
                self.close()
                raise ValueError(f"the stream ends at step {self.num_steps}; step {self._next} was asked for")
            items.append(item)
            self._next += 1
        if num == 1:
            return items[0]
        return tuple(jnp.concatenate(parts, axis=1) for parts in zip(*items))

    def close(self) -> None:
        """Stops the background thread (and grain's workers); a later call restarts the stream."""
        if self._thread is not None:
            self._stop.set()
            while self._thread.is_alive():
                try:
                    self._queue.get(timeout=0.1)  # unblocks a producer waiting to put
                except queue.Empty:
                    pass
            self._thread = None
        self._next = None


# ----------------------------------------------------------------------------------
# Evaluation batches.

def eval_batches(source, x_key: str, y_key: str, batch_size: int, preprocess: Preprocess, threads: int = 8,
                 processes: int = 0, device: jax.Device | None = None,
                 layout: Any = None) -> Iterator[tuple[jax.Array, ...]]:
    """The split in fixed-size batches (x, y, mask) on the device, the last padded and masked.

    Read and preprocessed as they are consumed: the split never sits in memory whole.
    On a device mesh (`layout`) the batch size is rounded up to a multiple of the device
    count, each batch is split over the devices, and this process reads only its rows.
    """
    n = len(source)
    batch_size = min(batch_size, n)
    read = _EvalRows(source, x_key, y_key, n, preprocess)
    width = batch_size
    if layout is not None:
        batch_size = -(-batch_size // layout.num_devices) * layout.num_devices
        lo, hi = layout.share(batch_size)
        read, width = _Shared(read, batch_size, lo, hi), hi - lo
    padded = -(-n // batch_size) * batch_size
    it = _batches(read, padded // batch_size, width, threads, processes)
    device = device or jax.local_devices()[0]
    try:
        for batch in it:
            yield jax.device_put(batch, device) if layout is None else layout.put_batch(batch, 0, batch_size)
    finally:
        getattr(it, "close", lambda: None)()
