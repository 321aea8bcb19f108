"""Orbax checkpoints in `<workdir>/checkpoints`: atomic writes, keep the newest N, resume."""
from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpoints:
    """Saves and restores one pytree (the train state) by step.

    Orbax writes each step into a temporary folder and renames it when complete, so a
    run killed mid-write leaves the previous checkpoint as the latest one.
    """

    def __init__(self, workdir: str, keep: int = 3):
        self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def path(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    def save(self, step: int, tree: Any) -> None:
        self._manager.save(step, args=ocp.args.StandardSave(tree))
        self._manager.wait_until_finished()

    def restore(self, step: int, like: Any) -> Any:
        """Restores `step` into the structure, shapes and dtypes of `like`."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        return self._manager.restore(step, args=ocp.args.StandardRestore(abstract))

    def close(self) -> None:
        self._manager.close()
