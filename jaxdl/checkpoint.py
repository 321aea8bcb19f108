"""Orbax checkpoints in `<workdir>/checkpoints`: atomic writes, keep the newest N, verified restores.

Each step's folder holds two Orbax items: `state` (the train state, tensorstore
arrays) and `manifest` (JSON: the step and a SHA-256 digest of the state's arrays).
Orbax writes both into `<step>.orbax-checkpoint-tmp` and renames it when complete, so
a run killed mid-write leaves the previous checkpoint as the latest one. Orbax and
tensorstore notice a truncated file but not every flipped bit; the digest does, so a
restore either returns the saved state exactly or raises `CheckpointError` naming the
damaged checkpoint and the way back to the previous one.

Nothing here unpickles: the state is tensorstore arrays plus JSON metadata, the
manifest is JSON.

Test hook: with `JAXDL_TEST_PAUSE_IN_CHECKPOINT=<step>` in the environment, the write
of that step's checkpoint pauses (up to 10 minutes) after its temporary folder is
created and before it is renamed, so a test can kill the process inside the write.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import hashlib
import logging
import os
import re
import shutil
import sys
import tempfile
import time
import traceback
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxdl import parallel
from jaxdl.errors import UserError

STATE, MANIFEST = "state", "manifest"
TMP_SUFFIX = ".orbax-checkpoint-tmp"
PAUSE_ENV = "JAXDL_TEST_PAUSE_IN_CHECKPOINT"
_FORMAT = 1


class CheckpointError(UserError):
    """A checkpoint that cannot be written or read back as it was saved."""


class StateMismatch(UserError):
    """A checkpoint whose state has other arrays or shapes than the one the config builds."""

    def __init__(self, message: str, detail: str):
        super().__init__(message)
        self.detail = detail


def digest(tree: Any) -> str:
    """SHA-256 over the dtype, shape and bytes of every array leaf, in tree order.

    Arrays spread over several processes are gathered, so every process digests the same tree.
    """
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(tree):
        if hasattr(leaf, "dtype") and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        a = np.ascontiguousarray(parallel.host_array(leaf))
        h.update(f"{a.dtype.str}{a.shape};".encode())
        h.update(a.tobytes())
    return h.hexdigest()


class _ManifestHandler(ocp.JsonCheckpointHandler):
    """Orbax's JSON handler, plus the test hook that pauses inside the write."""

    async def _save_fn(self, x, directory):
        await super()._save_fn(x, directory)
        if os.environ.get(PAUSE_ENV) == str(x.get("step")):
            await asyncio.sleep(600)


@ocp.args.register_with_handler(_ManifestHandler, for_save=True)
@dataclasses.dataclass
class _ManifestSave(ocp.args.CheckpointArgs):
    item: dict


@ocp.args.register_with_handler(_ManifestHandler, for_restore=True)
@dataclasses.dataclass
class _ManifestRestore(ocp.args.CheckpointArgs):
    item: dict | None = None


def _write_failure(e: BaseException) -> str | None:
    """The operating system's reason for a failed write, or None if `e` is not one.

    Orbax's own writes raise OSError; tensorstore's raise ValueError carrying the errno
    as `[os_error_code='28']`.
    """
    if isinstance(e, OSError):
        return e.strerror or _reason(e)
    code = re.search(r"os_error_code='(\d+)'", str(e))
    return os.strerror(int(code.group(1))) if code else None


class _DropOrbaxErrors(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno >= logging.ERROR and f"{os.sep}orbax{os.sep}" in record.pathname)


@contextlib.contextmanager
def _quiet_orbax():
    """Orbax logs each failed write with a traceback from the thread that hit it; the
    failure reaches the caller as CheckpointError, so the logs would only repeat it."""
    logger, f = logging.getLogger("absl"), _DropOrbaxErrors()
    logger.addFilter(f)
    try:
        yield
    finally:
        logger.removeFilter(f)


class _HeldStderr:
    """File descriptor 2 redirected into a temporary file, replayed on exit unless discarded.

    When a write fails, tensorstore's threads still finish the write's other chunks and
    resolve their asyncio futures on Orbax's event loop, which Orbax has closed by then;
    tensorstore prints each resulting "Event loop is closed" traceback straight to file
    descriptor 2, before and after the failure reaches Python. They say nothing the
    CheckpointError does not, so a failed save discards what its threads printed; a
    successful one replays it, so nothing else is ever lost.
    """

    def __enter__(self):
        sys.stderr.flush()
        self._saved = os.dup(2)
        self._file = tempfile.TemporaryFile()
        os.dup2(self._file.fileno(), 2)
        self.discard = False
        return self

    def __exit__(self, *exc):
        sys.stderr.flush()
        os.dup2(self._saved, 2)
        os.close(self._saved)
        if not self.discard:
            self._file.seek(0)
            held = self._file.read()
            if held:
                os.write(2, held)
        self._file.close()
        return False


def _is_late_tensorstore_callback(u: Any) -> bool:
    """True for the one unraisable exception a failed tensorstore operation leaves behind.

    When a read or write fails, Orbax's event loop closes while tensorstore's threads
    are still finishing the operation's other chunks; each then calls
    `loop.call_soon_threadsafe` to resolve its future, which raises "Event loop is
    closed" on a thread that has no caller to raise into, so Python reports it as
    unraisable (object None), at any later moment. The failure itself reaches the caller
    as CheckpointError.
    """
    if u.object is not None or not isinstance(u.exc_value, RuntimeError) or str(u.exc_value) != "Event loop is closed":
        return False
    frames = [f.f_code.co_name for f, _ in traceback.walk_tb(u.exc_traceback)]
    return frames[-2:] == ["call_soon_threadsafe", "_check_closed"]


def _is_abandoned_orbax_read(u: Any) -> bool:
    """True for an Orbax read of one array that was closed, unfinished, after another read failed.

    When one array of a damaged checkpoint cannot be read, the restore fails and the reads
    of the other arrays still pending are closed; Orbax turns the GeneratorExit into an
    Exception inside the coroutine, which Python reports as unraisable when the coroutine
    is collected. The failure itself reaches the caller as CheckpointError.
    """
    code = getattr(u.object, "cr_code", None)
    return (code is not None and code.co_name == "_read_array_index_and_device_put"
            and isinstance(getattr(u.exc_value, "__cause__", None), GeneratorExit))


def _drop_late_tensorstore_callbacks() -> None:
    """Installs (once per process) an unraisable-exception hook in front of the current
    one that drops exactly the reports of `_is_late_tensorstore_callback` and
    `_is_abandoned_orbax_read` and passes on every other report unchanged."""
    previous = sys.unraisablehook
    if getattr(previous, "_jaxdl_filter", False):
        return

    def hook(u):
        if not (_is_late_tensorstore_callback(u) or _is_abandoned_orbax_read(u)):
            previous(u)

    hook._jaxdl_filter = True
    sys.unraisablehook = hook


def _reason(e: BaseException) -> str:
    """An exception as a short single line (tensorstore's messages run to kilobytes)."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def _paths(tree: Any) -> dict[str, tuple]:
    """Leaf path (names joined by '.') → (shape, dtype) for a state or Orbax's metadata of one."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        names = [str(getattr(k, "name", getattr(k, "key", getattr(k, "idx", k)))) for k in path]
        out[".".join(names)] = (tuple(leaf.shape), np.dtype(leaf.dtype).name)
    return out


class Checkpoints:
    """Saves and restores one pytree (the train state) by step."""

    def __init__(self, workdir: str, keep: int = 3):
        _drop_late_tensorstore_callbacks()
        self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
        self._manager = ocp.CheckpointManager(
            self.directory, item_names=(STATE, MANIFEST),
            item_handlers={STATE: ocp.StandardCheckpointHandler(), MANIFEST: _ManifestHandler()},
            # Synchronous: the loop waits for each save anyway, and a failed write then has no
            # other writes still running that could recreate the folder it leaves behind.
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=False))
        self._cleaned = False

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def path(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    def _complete_steps(self) -> list[int]:
        """Steps with a finished (renamed) folder, read from the disk rather than Orbax's cache."""
        if not os.path.isdir(self.directory):
            return []
        return sorted(int(d) for d in os.listdir(self.directory) if d.isdigit())

    def save(self, step: int, tree: Any) -> None:
        """Writes `tree` as checkpoint `step`; raises CheckpointError (leaving no partial folder) on failure."""
        if not self._cleaned and jax.process_index() == 0:
            # Left by a run killed mid-write. Only a training process saves, so no write
            # of another process (an evaluation of this workdir) is in flight here.
            for name in os.listdir(self.directory):
                if TMP_SUFFIX in name:
                    shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
            self._cleaned = True
        manifest = {"format": _FORMAT, "step": int(step), "sha256": digest(tree)}
        with _HeldStderr() as held:
            try:
                with _quiet_orbax():
                    self._manager.save(step, args=ocp.args.Composite(
                        **{STATE: ocp.args.StandardSave(tree), MANIFEST: _ManifestSave(manifest)}))
                    self._manager.wait_until_finished()
                return
            except (OSError, ValueError) as e:
                reason = _write_failure(e)
                if reason is None:
                    raise
                error = e
                held.discard = True
                try:
                    self._manager.close()
                except Exception:  # it re-raises the failed write; what matters is that nothing still runs
                    pass
                time.sleep(1.0)  # the failed write's other chunks finish, printing into the held file
                gc.collect()  # asyncio reports its unretrieved futures when they are collected
        shutil.rmtree(self.path(step) + TMP_SUFFIX, ignore_errors=True)
        earlier = [s for s in self._complete_steps() if s < step]
        kept = (f"the last complete checkpoint is {self.path(earlier[-1])}, and rerunning the same "
                f"command resumes from it" if earlier else "no earlier checkpoint exists")
        raise CheckpointError(f"cannot write checkpoint {self.path(step)}: {reason}; "
                              f"{kept} (free space or pass another --workdir)") from error

    def damaged(self, step: int, reason: str) -> CheckpointError:
        """The error for an unusable checkpoint `step`, with the way back to the previous one."""
        path = self.path(step)
        earlier = [s for s in self._complete_steps() if s < step]
        if earlier:
            fix = f"delete it to resume from the previous checkpoint (step {earlier[-1]}): rm -r {path}"
        else:
            fix = f"no earlier checkpoint is kept; delete {self.directory} to train from the start"
        return CheckpointError(f"checkpoint {path} is damaged ({reason}); {fix}")

    def restore(self, step: int, like: Any) -> Any:
        """Restores `step` into the structure, shapes and dtypes of `like`, verified against its digest.

        Raises:
          StateMismatch: the checkpoint holds other arrays or shapes than `like`.
          CheckpointError: the checkpoint is damaged (unreadable, or its arrays differ from
            what was saved).
        """
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        path = self.path(step)
        if not os.path.isdir(os.path.join(path, STATE)) and os.path.isdir(os.path.join(path, "default")):
            return self._restore_unverified(step, abstract)
        try:
            saved = _paths(self._manager.item_metadata(step)[STATE])
        except Exception as e:  # Orbax raises ValueError, OSError, JSONDecodeError, KeyError…
            raise self.damaged(step, _reason(e)) from e
        wanted = _paths(abstract)
        if saved != wanted:
            key = sorted(set(saved) ^ set(wanted)) or sorted(k for k in wanted if saved[k] != wanted[k])
            detail = f"{key[0]}: checkpoint {saved.get(key[0], 'absent')}, config {wanted.get(key[0], 'absent')}"
            raise StateMismatch(f"checkpoint {path} holds a state of another shape than this config builds "
                                f"(e.g. {detail})", detail)
        try:
            out = self._manager.restore(step, args=ocp.args.Composite(
                **{STATE: ocp.args.StandardRestore(abstract), MANIFEST: _ManifestRestore()}))
        except Exception as e:
            raise self.damaged(step, _reason(e)) from e
        if digest(out[STATE]) != out[MANIFEST].get("sha256"):
            raise self.damaged(step, "its arrays differ from the digest written with them")
        return out[STATE]

    def _restore_unverified(self, step: int, abstract: Any) -> Any:
        """A checkpoint written before manifests existed: one unnamed item, no digest."""
        manager = ocp.CheckpointManager(self.directory)
        try:
            return manager.restore(step, args=ocp.args.StandardRestore(abstract))
        except Exception as e:
            raise self.damaged(step, _reason(e)) from e
        finally:
            manager.close()

    def read(self, step: int) -> dict:
        """The saved state as plain nested dicts of arrays (no structure to restore into), on this
        process's first device, whatever devices wrote it."""
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        like = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                            self._manager.item_metadata(step)[STATE])
        return self._manager.restore(step, args=ocp.args.Composite(**{STATE: ocp.args.StandardRestore(like)}))[STATE]

    def close(self) -> None:
        self._manager.close()
